"""A real stack for integration tests: Redis, a Celery worker process and the
gateway behind uvicorn, reached over HTTP on loopback.

With TUMORTRACK_TEST_REDIS_URL set (CI points it at the machine's Redis), the
tests use that server under a key prefix and queue of their own and never
flush it. Without it they start a private redis-server.
"""

from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest

from ops.stack import REPO_ROOT, Stack, start_stack

# Log files written after this moment belong to this test session.
SESSION_STARTED = time.time() - 1


def start_test_stack(tmp_path_factory, name: str = "stack", extra_env: dict | None = None) -> Stack:
    """Start a stack under a key prefix and queue of its own, logging to var/test-logs."""
    run_id = uuid.uuid4().hex[:8]
    env = {"TUMORTRACK_KEY_PREFIX": f"tumortrack-test-{run_id}", "TUMORTRACK_QUEUE": f"tumortrack-test-{run_id}", "TUMORTRACK_WORKER_HEARTBEAT_S": "1", **(extra_env or {})}
    root = tmp_path_factory.mktemp(name)
    return start_stack(
        store_dir=root / "store",
        log_dir=REPO_ROOT / "var" / "test-logs" / (run_id if name == "stack" else f"{name}-{run_id}"),
        redis_url=os.environ.get("TUMORTRACK_TEST_REDIS_URL"),
        extra_env=env,
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    started = start_test_stack(tmp_path_factory)
    yield started
    started.stop()


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack.base_url, timeout=60) as http:
        yield http


def wait_for_job(client: httpx.Client, job_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")
