"""The walking skeleton over real HTTP, real Redis and a real Celery worker."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from ops.cases import box_prompts_from_mask
from tests.conftest import require_shared, write_image
from tests.integration.conftest import wait_for_job

pytestmark = pytest.mark.integration

# The engine's accuracy is scored in tests/quality; here a wrong geometry or label would drop Dice near 0.
MIN_REAL_CT_DICE = 0.65


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def submit(client, image_path, prompts, **fields):
    with open(image_path, "rb") as handle:
        return client.post("/v1/segmentations", files={"image": (image_path.name, handle)}, data={"prompts": json.dumps(prompts) if not isinstance(prompts, str) else prompts, **fields})


def test_readyz_and_engines(client):
    ready = client.get("/readyz")
    engines = {engine["name"]: engine for engine in client.get("/v1/engines").json()["engines"]}

    assert ready.status_code == 200
    assert ready.json()["workers"] >= 1
    assert engines["classical"]["ready"] is True
    assert engines["classical"]["default"] is True
    assert engines["lesionlocator"]["ready"] is False


def test_real_ct_box_segmentation_end_to_end(client, tmp_path):
    case = require_shared("data", "ibsi_sts_019")
    image_path = case / "ct_image.nii.gz"
    truth_image = sitk.ReadImage(str(case / "ct_mask.nii.gz"))
    truth = sitk.GetArrayFromImage(truth_image) > 0

    response = submit(client, image_path, box_prompts_from_mask(truth))
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
    job = wait_for_job(client, response.json()["id"])

    assert job["state"] == "succeeded", job["error"]
    assert job["progress"] == 1.0
    assert {a["name"] for a in job["artifacts"]} >= {"mask.nii.gz", "lesions.json", "lesions.csv", "preview.png"}

    mask_path = tmp_path / "mask.nii.gz"
    mask_path.write_bytes(client.get(f"/v1/jobs/{job['id']}/artifacts/mask.nii.gz").content)
    mask = sitk.ReadImage(str(mask_path))
    source = sitk.ReadImage(str(image_path))
    assert mask.GetSize() == source.GetSize()
    assert mask.GetSpacing() == source.GetSpacing()
    assert mask.GetOrigin() == source.GetOrigin()
    assert mask.GetDirection() == source.GetDirection()
    labels = sitk.GetArrayFromImage(mask)
    assert set(np.unique(labels)) == {0, 1}
    assert dice(labels == 1, truth) >= MIN_REAL_CT_DICE

    table = client.get(f"/v1/jobs/{job['id']}/artifacts/lesions.json").json()
    lesion = table["lesions"][0]
    voxel_ml = np.prod(source.GetSpacing()) / 1000
    assert lesion["id"] == 1
    assert lesion["voxel_count"] == int((labels == 1).sum())
    assert lesion["volume_ml"] == pytest.approx(lesion["voxel_count"] * voxel_ml, rel=1e-6)
    assert lesion["long_axis_mm"] >= lesion["short_axis_mm"] > 0
    assert lesion["max_diameter_3d_mm"] >= lesion["long_axis_mm"]

    rows = list(csv.DictReader(io.StringIO(client.get(f"/v1/jobs/{job['id']}/artifacts/lesions.csv").text)))
    assert len(rows) == 1
    assert float(rows[0]["volume_ml"]) == pytest.approx(lesion["volume_ml"], rel=1e-3)

    preview = Image.open(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/artifacts/preview.png").content))
    assert preview.format == "PNG"
    assert preview.width >= 128


def test_point_and_world_prompts_on_synthetic_ct(client, tmp_path):
    z, y, x = np.indices((24, 48, 64))
    spacing = (0.75, 0.75, 2.0)
    spheres = [(20, 20, 12, 7.0), (45, 30, 10, 6.0)]
    array = np.full((24, 48, 64), 30.0, np.float32)
    truth = np.zeros(array.shape, np.uint8)
    for label, (cx, cy, cz, radius_mm) in enumerate(spheres, start=1):
        inside = ((x - cx) * spacing[0]) ** 2 + ((y - cy) * spacing[1]) ** 2 + ((z - cz) * spacing[2]) ** 2 <= radius_mm**2
        array[inside] = 150.0
        truth[inside] = label
    array += np.random.default_rng(0).normal(0, 8, array.shape).astype(np.float32)
    image_path = write_image(tmp_path / "spheres.nrrd", array, spacing=spacing, origin=(10.0, -20.0, 55.0))
    image = sitk.ReadImage(str(image_path))
    world = image.TransformIndexToPhysicalPoint((45, 30, 10))
    prompts = {"lesions": [{"id": 7, "frame": "voxel", "point": {"x": 20, "y": 20, "z": 12}}, {"id": 9, "frame": "world", "point": dict(zip("xyz", world))}]}

    job = wait_for_job(client, submit(client, image_path, prompts).json()["id"])
    assert job["state"] == "succeeded", job["error"]
    mask_path = tmp_path / "mask.nrrd.nii.gz"
    mask_path.write_bytes(client.get(f"/v1/jobs/{job['id']}/artifacts/mask.nii.gz").content)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path)))

    assert dice(labels == 7, truth == 1) >= 0.8
    assert dice(labels == 9, truth == 2) >= 0.8


def test_delete_removes_job_and_files(client, small_ct):
    job = wait_for_job(client, submit(client, small_ct, {"frame": "voxel", "lesions": [{"id": 1, "point": {"x": 20, "y": 15, "z": 10}}]}).json()["id"])

    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/artifacts/mask.nii.gz").status_code == 404


def test_swagger_ui_served_without_cdn(client):
    page = client.get("/docs").text
    scripts = re.findall(r'src="([^"]+)"', page)

    assert "swagger-ui" in page
    assert "cdn." not in page
    assert scripts
    for script in scripts:
        assert client.get(script).status_code == 200
    assert "/v1/segmentations" in client.get("/openapi.json").json()["paths"]
