import json

import numpy as np
import pytest
import SimpleITK as sitk

from lesions.errors import InputError
from lesions.geometry import ImageGeometry
from lesions.prompts import parse_prompts

GEOMETRY = ImageGeometry(size=(40, 30, 20), spacing=(0.8, 0.8, 2.0), origin=(-10.0, 5.0, 30.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
OBLIQUE = ImageGeometry(
    size=(50, 40, 30),
    spacing=(0.7, 0.9, 2.5),
    origin=(12.0, -40.0, 100.0),
    direction=tuple(float(v) for v in np.array([[0.0, -1.0, 0.0], [0.8, 0.0, 0.6], [-0.6, 0.0, 0.8]]).ravel()),
)


def native(*lesions, frame="voxel"):
    return json.dumps({"frame": frame, "lesions": list(lesions)})


def test_native_voxel_box_and_point():
    prompts = parse_prompts(native({"id": 3, "box": {"min": {"x": 1, "y": 2, "z": 3}, "max": {"x": 10, "y": 12, "z": 8}}}, {"id": 5, "point": {"x": 4.5, "y": 6, "z": 7}}), GEOMETRY)

    assert prompts[0].lesion_id == 3
    assert prompts[0].box_min == (1, 2, 3)
    assert prompts[0].box_max == (10, 12, 8)
    assert prompts[0].zyx_slices() == (slice(3, 8), slice(2, 12), slice(1, 10))
    assert prompts[1].point == (4.5, 6.0, 7.0)


def test_world_point_matches_itk_on_oblique_image():
    image = sitk.Image(list(OBLIQUE.size), sitk.sitkUInt8)
    image.SetSpacing(OBLIQUE.spacing)
    image.SetOrigin(OBLIQUE.origin)
    image.SetDirection(OBLIQUE.direction)
    world = image.TransformContinuousIndexToPhysicalPoint((12.0, 20.0, 9.0))

    prompt = parse_prompts(native({"id": 1, "point": dict(zip("xyz", world))}, frame="world"), OBLIQUE)[0]

    assert np.allclose(prompt.point, (12.0, 20.0, 9.0), atol=1e-6)
    assert image.TransformPhysicalPointToIndex(world) == (12, 20, 9)


def test_world_box_covers_voxel_centres_inside():
    low = GEOMETRY.to_physical((2, 3, 4))
    high = GEOMETRY.to_physical((9, 10, 11))

    prompt = parse_prompts(native({"id": 1, "box": {"min": dict(zip("xyz", low)), "max": dict(zip("xyz", high))}}, frame="world"), GEOMETRY)[0]

    assert prompt.box_min == (2, 3, 4)
    assert prompt.box_max == (10, 11, 12)


def test_lesion_frame_overrides_default():
    world = GEOMETRY.to_physical((5, 6, 7))
    prompt = parse_prompts(json.dumps({"frame": "voxel", "lesions": [{"id": 1, "frame": "world", "point": dict(zip("xyz", world))}]}), GEOMETRY)[0]
    assert np.allclose(prompt.point, (5, 6, 7))


def test_lesionlocator_format_is_zyx():
    document = {"2": {"box": ["3", "8", "2", "12", "1", "10"]}, "1": {"point": [7, 6, 4.5]}}

    prompts = parse_prompts(json.dumps(document), GEOMETRY)

    assert [p.lesion_id for p in prompts] == [1, 2]
    assert prompts[0].point == (4.5, 6.0, 7.0)
    assert prompts[1].box_min == (1, 2, 3)
    assert prompts[1].box_max == (10, 12, 8)


def test_grand_challenge_points_world_and_voxel():
    world = GEOMETRY.to_physical((5, 6, 7))
    world_doc = {"type": "Multiple points", "points": [{"name": "4", "point": list(world)}]}
    voxel_doc = {"type": "Multiple points", "frame": "voxel", "points": [{"name": "tumor", "point": [5, 6, 7]}]}

    world_prompt = parse_prompts(json.dumps(world_doc), GEOMETRY)[0]
    voxel_prompt = parse_prompts(json.dumps(voxel_doc), GEOMETRY)[0]

    assert world_prompt.lesion_id == 4
    assert np.allclose(world_prompt.point, (5, 6, 7))
    assert voxel_prompt.lesion_id == 1
    assert voxel_prompt.point == (5.0, 6.0, 7.0)


BAD_DOCUMENTS = [
    ("not json", "{lesions: ", "prompts", "invalid_json"),
    ("empty list", native(), "prompts.lesions", "invalid_input"),
    ("box outside", native({"id": 1, "box": {"min": {"x": 0, "y": 0, "z": 0}, "max": {"x": 41, "y": 5, "z": 5}}}), "prompts.lesions[0].box", "prompt_outside_image"),
    ("negative box", native({"id": 1, "box": {"min": {"x": -1, "y": 0, "z": 0}, "max": {"x": 4, "y": 5, "z": 5}}}), "prompts.lesions[0].box", "prompt_outside_image"),
    ("point outside", native({"id": 1, "point": {"x": 5, "y": 30, "z": 5}}), "prompts.lesions[0].point", "prompt_outside_image"),
    ("min above max", native({"id": 1, "box": {"min": {"x": 9, "y": 0, "z": 0}, "max": {"x": 4, "y": 5, "z": 5}}}), "prompts.lesions[0].box", "invalid_box"),
    ("fractional voxel box", native({"id": 1, "box": {"min": {"x": 0.5, "y": 0, "z": 0}, "max": {"x": 4, "y": 5, "z": 5}}}), "prompts.lesions[0].box", "invalid_input"),
    ("point and box", native({"id": 1, "point": {"x": 1, "y": 1, "z": 1}, "box": {"min": {"x": 0, "y": 0, "z": 0}, "max": {"x": 4, "y": 5, "z": 5}}}), "prompts.lesions[0]", "invalid_input"),
    ("missing frame", json.dumps({"lesions": [{"id": 1, "point": {"x": 1, "y": 1, "z": 1}}]}), "prompts.lesions[0].frame", "invalid_input"),
    ("duplicate ids", native({"id": 1, "point": {"x": 1, "y": 1, "z": 1}}, {"id": 1, "point": {"x": 2, "y": 2, "z": 2}}), "prompts", "invalid_input"),
    ("zero id", native({"id": 0, "point": {"x": 1, "y": 1, "z": 1}}), "prompts.lesions[0].id", "invalid_input"),
    ("lesionlocator short box", json.dumps({"1": {"box": [1, 2, 3]}}), "prompts.1.box", "invalid_input"),
    ("lesionlocator outside", json.dumps({"1": {"point": [25, 5, 5]}}), "prompts.1.point", "prompt_outside_image"),
    ("unknown shape", json.dumps([1, 2, 3]), "prompts", "invalid_input"),
]


@pytest.mark.parametrize("document, field, code", [case[1:] for case in BAD_DOCUMENTS], ids=[case[0] for case in BAD_DOCUMENTS])
def test_bad_prompts_name_the_field(document, field, code):
    with pytest.raises(InputError) as raised:
        parse_prompts(document, GEOMETRY)

    assert raised.value.field == field
    assert raised.value.code == code
