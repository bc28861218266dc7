"""The autoPET IV click files parse into the prompts they describe.

Their images are Git LFS files that the data folder does not hold, so the clicks
are resolved against a 512-voxel cube that contains every one of them.
"""

import json

import pytest

from lesions.errors import InputError
from lesions.geometry import ImageGeometry
from lesions.prompts import parse_prompts
from tests.lesion_cases import shared_data_dir

CUBE = ImageGeometry(size=(512, 512, 512), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))


def click_file(case: str, name: str) -> dict:
    path = shared_data_dir() / case / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the autoPET IV click files come with ../shared/data")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", ["baseline_clicks.json", "followup_clicks.json"])
def test_longitudinal_clicks_keep_their_lesion_names_as_ids(name):
    document = click_file("autopet4_task2_longitudinal_clicks", name)

    prompts = parse_prompts(json.dumps({**document, "frame": "voxel"}), CUBE)

    assert [p.lesion_id for p in prompts] == [int(entry["name"]) for entry in document["points"]] == list(range(1, 11))
    assert all(p.kind == "point" for p in prompts)
    for prompt, entry in zip(prompts, document["points"]):
        assert prompt.point == pytest.approx(entry["point"], abs=1e-9)


def test_baseline_and_followup_clicks_name_the_same_lesions():
    baseline = parse_prompts(json.dumps({**click_file("autopet4_task2_longitudinal_clicks", "baseline_clicks.json"), "frame": "voxel"}), CUBE)
    followup = parse_prompts(json.dumps({**click_file("autopet4_task2_longitudinal_clicks", "followup_clicks.json"), "frame": "voxel"}), CUBE)

    assert {p.lesion_id for p in baseline} == {p.lesion_id for p in followup}
    assert baseline[0].point == pytest.approx((314.557516339869, 242.467320261438, 104.450326797386))
    assert followup[0].point == pytest.approx((332.3402335262378, 289.42348395223786, 109.59344971014917))


def test_petct_clicks_drop_background():
    document = click_file("autopet4_task1_petct_clicks", "clicks_gc.json")
    tumour_points = [entry["point"] for entry in document["points"] if entry["name"] == "tumor"]

    prompts = parse_prompts(json.dumps({**document, "frame": "voxel"}), CUBE)

    assert len(document["points"]) == 20
    assert [p.lesion_id for p in prompts] == list(range(1, 11))
    assert [list(p.point) for p in prompts] == tumour_points
    assert prompts[0].point == (109.0, 103.0, 353.0)
    assert prompts[9].point == (93.0, 80.0, 187.0)


def test_raw_click_lists_match_the_grand_challenge_file():
    from_raw = parse_prompts(json.dumps(click_file("autopet4_task1_petct_clicks", "clicks_raw.json")), CUBE)
    from_gc = parse_prompts(json.dumps({**click_file("autopet4_task1_petct_clicks", "clicks_gc.json"), "frame": "voxel"}), CUBE)

    assert [(p.lesion_id, p.point) for p in from_raw] == [(p.lesion_id, p.point) for p in from_gc]
    assert all(p.source == "point voxel (autoPET tumour click)" for p in from_raw)


def test_only_background_clicks_is_rejected():
    document = {"type": "Multiple points", "frame": "voxel", "points": [{"name": "background", "point": [1, 2, 3]}]}

    with pytest.raises(InputError) as raised:
        parse_prompts(json.dumps(document), CUBE)

    assert raised.value.field == "prompts.points"
    assert "contains only background clicks" in str(raised.value)


def test_raw_click_outside_the_image_names_the_click():
    small = ImageGeometry(size=(200, 200, 200), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))

    with pytest.raises(InputError) as raised:
        parse_prompts(json.dumps(click_file("autopet4_task1_petct_clicks", "clicks_raw.json")), small)

    assert raised.value.field == "prompts.tumor[0]"
    assert raised.value.code == "prompt_outside_image"
