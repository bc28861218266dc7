"""Tracking with the LesionLocatorTrack model through the whole stack.

A worker gets the fixtures' tiny checkpoint with the tracking model
decompressed (tests/parity/reference_data.py). A tracking job with
engine=lesionlocator segments the baseline boxes with the segmentation model
and carries the lesions into the follow-up with the tracking model. The
network has random weights, so the masks are blobs: the test checks ids,
statuses, geometry and that the model, not the classical tracker, ran.
"""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from ops.stack import free_port
from tests.conftest import require_shared
from tests.integration.conftest import wait_for_job
from tests.parity.reference_data import track_checkpoint_dir

pytestmark = pytest.mark.integration

WORKER_NAME = "worker-track-model"


@pytest.fixture(scope="module")
def track_gateway(stack):
    fixtures = require_shared("fixtures", "lesionlocator-reference")
    env = {
        "TUMORTRACK_CHECKPOINT_DIR": str(track_checkpoint_dir(fixtures)),
        "TUMORTRACK_QUEUE": stack.extra_env["TUMORTRACK_QUEUE"] + "-track-model",
        "TUMORTRACK_KEY_PREFIX": stack.extra_env["TUMORTRACK_KEY_PREFIX"] + "-track-model",
    }
    port = free_port()
    stack.start_worker(WORKER_NAME, extra_env=env)
    stack.start_gateway(port, extra_env=env, name="gateway-track-model")
    base_url = f"http://127.0.0.1:{port}"
    stack.wait_http(base_url)
    yield base_url, fixtures, stack
    stack.stop_process("gateway-track-model")
    stack.stop_process(WORKER_NAME)


def wait_for_model_tracking(client: httpx.Client, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    engine = {}
    while time.monotonic() < deadline:
        engine = {e["name"]: e for e in client.get("/v1/engines").json()["engines"]}["lesionlocator"]
        if engine["ready"]:
            return engine
        time.sleep(0.5)
    raise TimeoutError(f"the lesionlocator engine never became ready: {engine}")


def test_tracking_job_uses_model(track_gateway, tmp_path):
    base_url, fixtures, stack = track_gateway
    inputs = fixtures / "inputs"
    followup_path = inputs / "images" / "example_ct_fu.nii.gz"
    files = [
        ("baseline", ("bl.nii.gz", (inputs / "images" / "example_ct.nii.gz").read_bytes())),
        ("followups", ("fu.nii.gz", followup_path.read_bytes())),
    ]
    prompts = (inputs / "prompts" / "boxes_2lesions" / "example_ct.json").read_text()

    with httpx.Client(base_url=base_url, timeout=60) as client:
        engine = wait_for_model_tracking(client)
        assert engine["model_tracking"] is True
        assert engine["workers"][0]["tracking"] == "model"

        response = client.post("/v1/trackings", files=files, data={"prompts": prompts, "engine": "lesionlocator"})
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"], timeout_s=600)
        assert job["state"] == "succeeded", job["error"]
        assert job["engine"] == "lesionlocator"

        baseline_path = tmp_path / "mask_t0.nii.gz"
        baseline_path.write_bytes(client.get(f"/v1/jobs/{job['id']}/artifacts/mask_t0.nii.gz").content)
        tracked_path = tmp_path / "mask_t1.nii.gz"
        tracked_path.write_bytes(client.get(f"/v1/jobs/{job['id']}/artifacts/mask_t1.nii.gz").content)
        document = client.get(f"/v1/jobs/{job['id']}/artifacts/correspondence.json").json()

    baseline_ids = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(baseline_path))))) - {0}
    tracked = sitk.ReadImage(str(tracked_path))
    followup = sitk.ReadImage(str(followup_path))
    assert baseline_ids == {1, 2}
    assert set(np.unique(sitk.GetArrayFromImage(tracked))) - {0} == baseline_ids
    assert tracked.GetSize() == followup.GetSize()
    assert tracked.GetOrigin() == followup.GetOrigin()

    rows = document["followups"][0]["lesions"]
    assert [row["lesion_id"] for row in rows] == [1, 2]
    assert [row["status"] for row in rows] == ["tracked", "tracked"]
    assert all(row["carried_volume_ml"] > 0 for row in rows)

    worker_log = (stack.log_dir / f"{WORKER_NAME}.log").read_text()
    assert f"job {job['id']}: tracking with the engine's tracking model" in worker_log
