"""The lesionlocator engine through the whole stack, on the fixtures' tiny
random-weight checkpoint: a worker loads it, /v1/engines reports it, and a job
that requests it returns the engine's masks."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from ops.stack import free_port
from tests.conftest import require_shared
from tests.integration.conftest import wait_for_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_gateway(stack):
    fixtures = require_shared("fixtures", "lesionlocator-reference")
    env = {
        "TUMORTRACK_CHECKPOINT_DIR": str(fixtures / "checkpoints" / "tiny" / "LesionLocatorCheckpoint"),
        "TUMORTRACK_QUEUE": "with-model",
        "TUMORTRACK_KEY_PREFIX": stack.extra_env["TUMORTRACK_KEY_PREFIX"] + "-model",
    }
    port = free_port()
    stack.start_worker("worker-model", extra_env=env)
    stack.start_gateway(port, extra_env=env, name="gateway-model")
    base_url = f"http://127.0.0.1:{port}"
    stack.wait_http(base_url)
    yield base_url, fixtures
    stack.stop_process("gateway-model")
    stack.stop_process("worker-model")


def wait_for_engine(client, name, timeout_s=120):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        engines = {engine["name"]: engine for engine in client.get("/v1/engines").json()["engines"]}
        if engines[name]["ready"]:
            return engines
        time.sleep(0.5)
    raise TimeoutError(f"engine {name} never became ready: {engines}")


def test_engine_reported_and_used(model_gateway, tmp_path):
    base_url, fixtures = model_gateway
    image = fixtures / "inputs" / "images" / "example_ct.nii.gz"
    prompts = json.loads((fixtures / "inputs" / "prompts" / "boxes" / "example_ct.json").read_text())
    gallbladder = {"2": prompts["2"]}
    official = sitk.GetArrayFromImage(sitk.ReadImage(str(fixtures / "outputs" / "seg_box_json_notta" / "example_ct_lesion_2.nii.gz"))) > 0

    with httpx.Client(base_url=base_url, timeout=60) as client:
        engines = wait_for_engine(client, "lesionlocator")
        worker = engines["lesionlocator"]["workers"][0]
        assert engines["lesionlocator"]["default"] is True
        assert worker["device"] == "cpu"
        assert worker["folds"] == [0]

        response = client.post("/v1/segmentations", files={"image": (image.name, image.read_bytes())}, data={"prompts": json.dumps(gallbladder), "engine": "lesionlocator"})
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"], timeout_s=300)
        assert job["state"] == "succeeded", job["error"]
        assert job["engine"] == "lesionlocator"
        path = tmp_path / "mask.nii.gz"
        path.write_bytes(client.get(f"/v1/jobs/{job['id']}/artifacts/mask.nii.gz").content)

    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == 2
    dice = 2 * np.logical_and(mask, official).sum() / (mask.sum() + official.sum())
    assert dice >= 0.98
