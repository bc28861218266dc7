"""Every kind of bad input gets a 4xx naming the field, over real HTTP, never a 500."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import write_image

pytestmark = pytest.mark.integration

POINT = {"frame": "voxel", "lesions": [{"id": 1, "point": {"x": 20, "y": 15, "z": 10}}]}


def post(client, image_path, prompts=POINT, filename=None, **fields):
    files = {"image": (filename or image_path.name, image_path.read_bytes())}
    data = {"prompts": prompts if isinstance(prompts, str) else json.dumps(prompts), **fields}
    return client.post("/v1/segmentations", files=files, data=data)


def assert_error(response, status, field, code=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert error["message"]
    if code:
        assert error["code"] == code


def test_not_an_image(client, tmp_path):
    path = tmp_path / "report.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 20))

    response = post(client, path)

    assert_error(response, 422, "image", "unreadable_image")
    assert "'report.nii.gz'" in response.json()["error"]["message"]


def test_unsupported_suffix(client, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG....")
    assert_error(post(client, path), 422, "image", "unsupported_format")


def test_truncated_nifti(client, small_ct, tmp_path):
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(small_ct.read_bytes()[:-200])
    assert_error(post(client, path), 422, "image", "unreadable_image")


def test_2d_image(client, tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 40), np.float32)), str(path))
    assert_error(post(client, path), 422, "image")


def test_4d_image_with_several_volumes(client, tmp_path):
    path = write_image(tmp_path / "dynamic.nii.gz", np.zeros((2, 20, 30, 40), np.float32), spacing=(1, 1, 1, 1), origin=(0, 0, 0, 0))
    assert_error(post(client, path), 422, "image")


def test_4d_image_with_one_volume_is_accepted(client, tmp_path):
    path = write_image(tmp_path / "single.nii.gz", np.zeros((1, 20, 30, 40), np.float32), spacing=(1, 1, 1, 1), origin=(0, 0, 0, 0))
    assert post(client, path).status_code == 202


def test_missing_image(client):
    response = client.post("/v1/segmentations", files={"prompts": ("p.json", json.dumps(POINT).encode())})
    assert_error(response, 422, "image", "missing_field")


def test_misspelled_field(client, small_ct):
    files = {"imgae": (small_ct.name, small_ct.read_bytes())}

    response = client.post("/v1/segmentations", files=files, data={"prompts": json.dumps(POINT)})

    assert_error(response, 422, "imgae", "unknown_field")
    assert "Did you mean 'image'?" in response.json()["error"]["message"]


def test_missing_prompts(client, small_ct):
    response = client.post("/v1/segmentations", files={"image": (small_ct.name, small_ct.read_bytes())})
    assert_error(response, 422, "prompts", "missing_field")


def test_empty_prompt_list(client, small_ct):
    assert_error(post(client, small_ct, {"frame": "voxel", "lesions": []}), 422, "prompts.lesions")


def test_malformed_json(client, small_ct):
    assert_error(post(client, small_ct, '{"lesions": [ {"id": 1,'), 422, "prompts", "invalid_json")


def test_prompt_outside_image(client, small_ct):
    prompts = {"frame": "voxel", "lesions": [{"id": 1, "point": {"x": 20, "y": 15, "z": 25}}]}
    assert_error(post(client, small_ct, prompts), 422, "prompts.lesions[0].point", "prompt_outside_image")


def test_box_min_above_max(client, small_ct):
    prompts = {"frame": "voxel", "lesions": [{"id": 1, "box": {"min": {"x": 30, "y": 2, "z": 2}, "max": {"x": 10, "y": 9, "z": 9}}}]}
    assert_error(post(client, small_ct, prompts), 422, "prompts.lesions[0].box", "invalid_box")


def test_unknown_engine(client, small_ct):
    assert_error(post(client, small_ct, engine="magic"), 422, "engine", "unknown_engine")


def test_engine_without_checkpoint(client, small_ct):
    assert_error(post(client, small_ct, engine="lesionlocator"), 422, "engine", "engine_unavailable")


def test_invalid_boolean_option(client, small_ct):
    assert_error(post(client, small_ct, test_time_augmentation="maybe"), 422, "test_time_augmentation")


def test_not_multipart(client):
    response = client.post("/v1/segmentations", json=POINT)
    assert_error(response, 415, "body", "unsupported_media_type")


def test_unknown_job_id(client):
    assert_error(client.get("/v1/jobs/does-not-exist"), 404, "job_id", "job_not_found")
    assert_error(client.delete("/v1/jobs/does-not-exist"), 404, "job_id", "job_not_found")


def test_unknown_artifact(client, small_ct):
    job_id = post(client, small_ct).json()["id"]
    assert_error(client.get(f"/v1/jobs/{job_id}/artifacts/nothing.txt"), 404, "name", "artifact_not_found")
    assert client.get(f"/v1/jobs/{job_id}/artifacts/..%2Finputs%2Fprompts.json").status_code == 404
