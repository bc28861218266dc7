"""Worker heartbeats in Redis: who is alive and which engines each one has ready.

Each worker process group writes ``<prefix>:worker:<hostname>`` with a short
expiry and refreshes it; a worker that dies simply disappears when the key
expires. The gateway reads these keys for ``/readyz`` and ``/v1/engines``,
so it never has to import engine code to know what can run.
"""

from __future__ import annotations

import json
import time

import redis


def publish_heartbeat(client: redis.Redis, prefix: str, hostname: str, engines: list[dict], ttl_s: float) -> None:
    document = {"hostname": hostname, "engines": engines, "seen_at": time.time()}
    client.set(f"{prefix}:worker:{hostname}", json.dumps(document), px=int(ttl_s * 1000))


def remove_heartbeat(client: redis.Redis, prefix: str, hostname: str) -> None:
    client.delete(f"{prefix}:worker:{hostname}")


def live_workers(client: redis.Redis, prefix: str) -> list[dict]:
    """Return the heartbeat documents of every worker whose key has not expired."""
    keys = sorted(client.scan_iter(match=f"{prefix}:worker:*", count=100))
    if not keys:
        return []
    documents = client.mget(keys)
    return [json.loads(raw) for raw in documents if raw is not None]


def ready_engines(workers: list[dict]) -> dict[str, list[dict]]:
    """Group the engine reports of live workers by engine name."""
    engines: dict[str, list[dict]] = {}
    for worker in workers:
        for engine in worker.get("engines", []):
            engines.setdefault(engine["name"], []).append({**engine, "worker": worker["hostname"]})
    return engines
