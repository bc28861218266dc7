"""No lost jobs: a worker killed mid-job and a Redis restart, on a stack of
their own with a private, persistent Redis that these tests may stop."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import numpy as np
import psutil
import pytest
import redis
import SimpleITK as sitk

from ops.stack import REPO_ROOT, Stack, free_port, start_redis
from tests.conftest import write_image
from tests.integration.conftest import wait_for_job

pytestmark = pytest.mark.integration

# Short limits so a message whose worker died is redelivered within seconds:
# the visibility timeout is 1.1 times the job time limit.
JOB_TIME_LIMIT_S = 12


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    log_dir = REPO_ROOT / "var" / "test-logs" / f"reliability-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    redis_url, redis_process = start_redis(log_dir, port=port, data_dir=root / "redis", persistent=True)

    stack = Stack(
        base_url=f"http://127.0.0.1:{free_port()}",
        redis_url=redis_url,
        store_dir=root / "store",
        log_dir=log_dir,
        extra_env={"TUMORTRACK_JOB_TIME_LIMIT_S": str(JOB_TIME_LIMIT_S), "TUMORTRACK_WORKER_HEARTBEAT_S": "1"},
    )
    stack.processes["redis"] = redis_process
    stack.redis_port = port
    stack.redis_dir = root / "redis"
    stack.start_worker("worker-a")
    stack.start_worker("worker-b")
    stack.start_gateway(int(stack.base_url.rsplit(":", 1)[1]))
    stack.wait_ready()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def many_lesion_case(tmp_path_factory):
    """A CT with 64 spherical lesions, slow enough on the classical engine to be interrupted."""
    folder = tmp_path_factory.mktemp("many")
    shape = (60, 160, 160)
    z, y, x = np.indices(shape)
    array = np.full(shape, 40.0, np.float32) + np.random.default_rng(3).normal(0, 10, shape).astype(np.float32)
    lesions = []
    for number, (cz, cy, cx) in enumerate([(cz, cy, cx) for cz in (15, 45) for cy in (20, 60, 100, 140) for cx in (20, 60, 100, 140)], start=1):
        array[(x - cx) ** 2 + (y - cy) ** 2 + ((z - cz) * 2.5) ** 2 <= 64] += 90
        lesions.append({"id": number, "point": {"x": cx, "y": cy, "z": cz}})
    image = write_image(folder / "many.nii.gz", array, spacing=(1.0, 1.0, 2.5))
    return image, json.dumps({"frame": "voxel", "lesions": lesions})


def submit(client, case):
    image, prompts = case
    response = client.post("/v1/segmentations", files={"image": (image.name, image.read_bytes())}, data={"prompts": prompts})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def artifacts_of(client, job) -> dict:
    mask_bytes = client.get(f"/v1/jobs/{job['id']}/artifacts/mask.nii.gz").content
    path = REPO_ROOT / "var" / f"mask-{job['id']}.nii.gz"
    path.write_bytes(mask_bytes)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    path.unlink()
    table = client.get(f"/v1/jobs/{job['id']}/artifacts/lesions.json").json()
    return {"mask": mask, "lesions": table["lesions"], "names": sorted(a["name"] for a in job["artifacts"])}


def job_record(stack, job_id) -> dict:
    client = redis.Redis.from_url(stack.redis_url)
    return json.loads(client.get(f"tumortrack:job:{job_id}"))


def test_killed_worker_job_finishes_elsewhere(private_stack, many_lesion_case):
    with httpx.Client(base_url=private_stack.base_url, timeout=60) as client:
        reference = wait_for_job(client, submit(client, many_lesion_case), timeout_s=120)
        assert reference["state"] == "succeeded"

        job_id = submit(client, many_lesion_case)
        deadline = time.monotonic() + 60
        while (record := job_record(private_stack, job_id))["stage"] != "segmenting":
            assert time.monotonic() < deadline, f"job never reached segmenting: {record}"
            time.sleep(0.05)
        victim = next(name for name, process in private_stack.processes.items() if name.startswith("worker") and _owns(process, record["worker"]))
        os.killpg(private_stack.processes[victim].pid, signal.SIGKILL)
        private_stack.processes.pop(victim).wait()

        job = wait_for_job(client, job_id, timeout_s=120)
        record = job_record(private_stack, job_id)

        assert job["state"] == "succeeded", job["error"]
        assert record["attempts"] == 2
        survivor = next(process for name, process in private_stack.processes.items() if name.startswith("worker"))
        assert _owns(survivor, record["worker"])
        first, second = artifacts_of(client, reference), artifacts_of(client, job)
        assert second["names"] == first["names"]
        assert np.array_equal(second["mask"], first["mask"])
        assert second["lesions"] == first["lesions"]


def test_redis_restart_loses_nothing(private_stack, many_lesion_case, small_ct):
    with httpx.Client(base_url=private_stack.base_url, timeout=60) as client:
        before = wait_for_job(client, submit(client, (small_ct, json.dumps({"frame": "voxel", "lesions": [{"id": 1, "point": {"x": 20, "y": 15, "z": 10}}]}))))
        assert before["state"] == "succeeded"

        private_stack.stop_process("redis")
        down = client.get("/readyz")
        refused = client.post("/v1/segmentations", files={"image": (small_ct.name, small_ct.read_bytes())}, data={"prompts": "{}"})

        assert down.status_code == 503
        assert down.json()["redis"] == "unreachable"
        assert client.get("/healthz").status_code == 200
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "service_unavailable"

        _, process = start_redis(private_stack.log_dir, port=private_stack.redis_port, data_dir=private_stack.redis_dir, persistent=True)
        private_stack.processes["redis"] = process
        private_stack.wait_ready(timeout_s=60)

        assert client.get(f"/v1/jobs/{before['id']}").json()["state"] == "succeeded"
        after = wait_for_job(client, submit(client, (small_ct, json.dumps({"frame": "voxel", "lesions": [{"id": 1, "point": {"x": 20, "y": 15, "z": 10}}]}))), timeout_s=120)
        assert after["state"] == "succeeded"


def _owns(process, worker: str) -> bool:
    """Return whether ``worker`` (host:pid of a pool process) is a child of ``process``."""
    child_pid = int(worker.rsplit(":", 1)[1])
    return child_pid in {child.pid for child in psutil.Process(process.pid).children(recursive=True)}



def test_time_limit_fails_job_and_worker_survives(private_stack, many_lesion_case, small_ct):
    """A gateway and worker with a 2 s job limit on a queue of their own."""
    env = {"TUMORTRACK_JOB_TIME_LIMIT_S": "2", "TUMORTRACK_QUEUE": "time-limited", "TUMORTRACK_KEY_PREFIX": "time-limited"}
    port = free_port()
    private_stack.start_worker("worker-limited", extra_env=env)
    private_stack.start_gateway(port, extra_env=env, name="gateway-limited")
    base_url = f"http://127.0.0.1:{port}"
    private_stack.wait_http(base_url)
    try:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            slow = wait_for_job(client, submit(client, many_lesion_case), timeout_s=60)
            quick = wait_for_job(client, submit(client, (small_ct, json.dumps({"frame": "voxel", "lesions": [{"id": 1, "point": {"x": 20, "y": 15, "z": 10}}]}))), timeout_s=60)

        assert slow["state"] == "failed"
        assert slow["error"]["code"] == "time_limit"
        assert quick["state"] == "succeeded"
        assert private_stack.processes["worker-limited"].poll() is None
    finally:
        private_stack.stop_process("gateway-limited")
        private_stack.stop_process("worker-limited")
