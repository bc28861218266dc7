"""Prompts of a job by reference: checked without the image at the gateway, resolved by the worker."""

from __future__ import annotations

import json

import pytest

from lesions.deferred_prompts import request_path, resolve_stored_prompts, store_unresolved_prompts
from lesions.errors import InputError
from lesions.geometry import ImageGeometry

GEOMETRY = ImageGeometry(size=(40, 30, 20), spacing=(0.8, 0.8, 2.0), origin=(-10.0, 5.0, 30.0), direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def box(low, high, frame="voxel"):
    return json.dumps({"frame": frame, "lesions": [{"id": 3, "box": {"min": dict(zip("xyz", low)), "max": dict(zip("xyz", high))}}]}).encode()


@pytest.mark.parametrize(
    ("raw", "field", "code"),
    [
        (b"{", "prompts", "invalid_json"),
        (box((5, 5, 5), (4, 9, 9)), "prompts.lesions[0].box", "invalid_box"),
        (box((5.5, 5, 5), (9, 9, 9)), "prompts.lesions[0].box", "invalid_input"),
        (box((-1, 5, 5), (9, 9, 9)), "prompts.lesions[0].box", "prompt_outside_image"),
        (json.dumps({"lesions": []}).encode(), "prompts.lesions", "invalid_input"),
        (json.dumps({"1": {"box": [0, 5, 0, 5]}}).encode(), "prompts.1.box", "invalid_input"),
    ],
)
def test_rejected_without_image(tmp_path, raw, field, code):
    with pytest.raises(InputError) as caught:
        store_unresolved_prompts(raw, tmp_path / "prompts.json")

    assert caught.value.field == field
    assert caught.value.code == code
    assert not (tmp_path / "prompts_request.json").exists()


def test_world_box_narrower_than_a_millimetre(tmp_path):
    assert store_unresolved_prompts(box((0.2, 10.2, 40.2), (0.6, 10.6, 40.6), frame="world"), tmp_path / "prompts.json") == 1


def test_resolved_against_image(tmp_path):
    store_unresolved_prompts(box((-10.0, 5.0, 30.0), (-2.0, 13.0, 40.0), frame="world"), tmp_path / "prompts.json")

    resolve_stored_prompts(tmp_path / "prompts.json", GEOMETRY)

    [lesion] = json.loads((tmp_path / "prompts.json").read_text())["lesions"]
    assert lesion["id"] == 3
    assert lesion["box_min"] == [0, 0, 0]
    assert lesion["box_max"] == [11, 11, 6]


def test_outside_image_fails_on_resolution(tmp_path):
    assert store_unresolved_prompts(box((10, 10, 15), (20, 20, 25)), tmp_path / "prompts.json") == 1

    with pytest.raises(InputError) as caught:
        resolve_stored_prompts(tmp_path / "prompts.json", GEOMETRY)

    assert caught.value.code == "prompt_outside_image"
    assert caught.value.field == "prompts.lesions[0].box"
    assert not (tmp_path / "prompts.json").exists()


def test_request_path_beside_resolved(tmp_path):
    assert request_path(tmp_path / "followup_2_prompts.json") == tmp_path / "followup_2_prompts_request.json"


def test_resolved_file_kept(tmp_path):
    (tmp_path / "prompts.json").write_text('{"lesions": []}')

    resolve_stored_prompts(tmp_path / "prompts.json", GEOMETRY)

    assert (tmp_path / "prompts.json").read_text() == '{"lesions": []}'
