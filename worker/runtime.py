"""Per-process state of a worker: Redis client, job repository, store, engines
and the heartbeat thread that reports to the gateway that this process is alive.

It is built lazily in each pool process (never in the parent before the fork),
because CUDA cannot be used across a fork and each process must own its
weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time

import redis

from lesions.jobs import JobRepository
from lesions.retention import purge_expired
from lesions.settings import get_settings
from lesions.store import JobStore
from lesions.worker_registry import publish_heartbeat, remove_heartbeat
from worker.engines.registry import EngineRegistry, build_engines

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class WorkerRuntime:
    redis: redis.Redis
    jobs: JobRepository
    store: JobStore
    engines: EngineRegistry
    hostname: str
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def heartbeat_once(self) -> None:
        settings = get_settings()
        engines = [dataclasses.asdict(status) for status in self.engines.statuses()]
        publish_heartbeat(self.redis, settings.key_prefix, self.hostname, engines, ttl_s=settings.worker_heartbeat_s * 3)

    def start_heartbeat(self) -> None:
        thread = threading.Thread(target=self._heartbeat_loop, name="tumortrack-heartbeat", daemon=True)
        thread.start()

    def shutdown(self) -> None:
        self.stop.set()
        try:
            remove_heartbeat(self.redis, get_settings().key_prefix, self.hostname)
        except redis.RedisError:
            pass

    def _heartbeat_loop(self) -> None:
        settings = get_settings()
        interval = settings.worker_heartbeat_s
        next_purge = time.monotonic()
        failures = 0
        while not self.stop.is_set():
            try:
                self.heartbeat_once()
                if time.monotonic() >= next_purge:
                    purge_expired(self.store, self.jobs, settings.artifact_retention_s)
                    next_purge = time.monotonic() + settings.purge_interval_s
                failures = 0
            except redis.RedisError as error:
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    logger.warning("heartbeat failed %d time(s): %s", failures, error)
            self.stop.wait(interval)


_runtime: WorkerRuntime | None = None
_lock = threading.Lock()


def get_runtime() -> WorkerRuntime:
    global _runtime
    with _lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = _build_runtime()
        return _runtime


_runtime_pid = -1


def _build_runtime() -> WorkerRuntime:
    global _runtime_pid
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
    runtime = WorkerRuntime(
        redis=client,
        jobs=JobRepository(client, settings.key_prefix, settings.job_retention_s),
        store=JobStore(settings.store_dir),
        engines=build_engines(settings),
        hostname=f"{socket.gethostname()}:{os.getpid()}",
    )
    runtime.start_heartbeat()
    _runtime_pid = os.getpid()
    return runtime
