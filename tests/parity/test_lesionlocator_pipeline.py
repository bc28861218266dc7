"""Parity of the lesionlocator preprocessing, prompt encoding, patch placement and network.

These checks run at most a few patches through the tiny fixture network, so
they take seconds. Whole-image mask comparisons are in test_lesionlocator_masks.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lesions.prompt_types import LesionPrompt
from tests.parity.reference_data import TINY_CHECKPOINT, case_inputs, read_mask
from worker.engines.lesionlocator import LesionLocatorEngine
from worker.engines.lesionlocator.export import logits_to_mask
from worker.engines.lesionlocator.inference import plan_case
from worker.engines.lesionlocator.network import build_network, state_dict_aliases
from worker.engines.lesionlocator.plans import parse_model_plans, read_json
from worker.engines.lesionlocator.preprocessing import compute_geometry
from worker.engines.lesionlocator.prompt_encoding import ball_mask, encode_prompt

pytestmark = pytest.mark.parity

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def engine(reference_dir) -> LesionLocatorEngine:
    return LesionLocatorEngine(reference_dir / TINY_CHECKPOINT, folds=(0,), device="cpu")


@pytest.fixture(scope="module")
def transforms(reference_dir) -> dict:
    return json.loads((reference_dir / "numerics" / "seg" / "prompt_transforms.json").read_text())


@pytest.fixture(scope="module")
def numerics(reference_dir) -> dict:
    return json.loads((reference_dir / "numerics" / "seg" / "numerics_index.json").read_text())


def _plan(engine: LesionLocatorEngine, image: sitk.Image, prompts: list):
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = tuple(float(s) for s in image.GetSpacing()[::-1])
    return plan_case(array, spacing, prompts, engine.model(prompts[0].kind).plans)


@pytest.mark.parametrize("config", ["box_json", "box_zeropad", "point_zeropad"])
def test_crop_and_preprocessed_shape(engine, reference_dir, transforms, config):
    image, prompts = case_inputs(reference_dir, config)
    properties = transforms[config]["properties"]

    geometry = _plan(engine, image, prompts).geometry

    expected_crop = properties["bbox_used_for_cropping"]
    assert [list(pair) for pair in zip(geometry.crop_start, geometry.crop_stop)] == expected_crop
    assert list(geometry.preprocessed_shape) == transforms[config]["preprocessed_shape"]


@pytest.mark.parametrize("config", ["box_json", "point_json", "box_instmask", "box_binmask", "box_zeropad"])
def test_prompt_positions_and_patch_starts(engine, reference_dir, transforms, config):
    image, prompts = case_inputs(reference_dir, config)
    expected_lesions = transforms[config]["lesions"]

    case = _plan(engine, image, prompts)

    for lesion, expected in zip(case.lesions, expected_lesions):
        assert lesion.prompt.as_list() == expected["sparse_prompt_preprocessed"], f"lesion {expected['lesion_id']}"
        assert [list(s) for s in lesion.patch_starts] == expected["patch_starts_zyx"], f"lesion {expected['lesion_id']}"


def test_zero_pad_points_match_unpadded(engine, reference_dir, transforms):
    # The official code subtracts the crop offset twice for JSON points. Corrected,
    # the padded image crops back to the original CT, so the prompts must match the
    # unpadded run rather than the official zero-pad run.
    image, prompts = case_inputs(reference_dir, "point_zeropad")
    expected_lesions = transforms["point_json"]["lesions"]

    case = _plan(engine, image, prompts)

    for lesion, expected in zip(case.lesions, expected_lesions):
        assert lesion.prompt.as_list() == expected["sparse_prompt_preprocessed"], f"lesion {expected['lesion_id']}"
        assert [list(s) for s in lesion.patch_starts] == expected["patch_starts_zyx"], f"lesion {expected['lesion_id']}"


@pytest.mark.parametrize("config, numerics_key", [("box_json", "box_json_lesion2_notta"), ("point_json", "point_json_lesion2_notta")])
def test_first_patch_input_and_raw_output(engine, reference_dir, numerics, config, numerics_key):
    image, prompts = case_inputs(reference_dir, config)
    arrays = reference_dir / "numerics" / "seg"
    expected_input = np.load(arrays / f"{numerics_key}_first_patch_net_input.npy")
    expected_output = np.load(arrays / f"{numerics_key}_first_patch_net_output_raw.npy")
    lesion_index = numerics[numerics_key]["lesion_id"] - 1

    case = _plan(engine, image, prompts)
    patch_start = case.lesions[lesion_index].patch_starts[0]
    network_input = case.network_input(lesion_index, patch_start)
    with torch.inference_mode():
        raw_output = engine.model(prompts[0].kind).networks[0](network_input[None])[0]

    assert list(patch_start) == numerics[numerics_key]["first_patch_start_zyx"]
    assert np.abs(network_input.numpy() - expected_input).max() <= TOLERANCE
    assert np.abs(raw_output.numpy() - expected_output).max() <= TOLERANCE


@pytest.mark.parametrize(
    "numerics_key, official_run",
    [
        ("box_json_lesion2_notta", "seg_box_json_notta"),
        ("box_json_lesion2_tta", "seg_box_json_tta"),
        ("point_json_lesion2_notta", "seg_point_json_notta"),
        ("box_json_lesion3_notta", "seg_box_json_notta"),
    ],
)
def test_export_reproduces_official_masks(engine, reference_dir, numerics, numerics_key, official_run):
    # The stored logits cover exactly the predicted patches, so this checks the
    # resampling back to the original grid and the patch-border rule in isolation.
    entry = numerics[numerics_key]
    image, prompts = case_inputs(reference_dir, entry["config"])
    logits = np.load(reference_dir / "numerics" / "seg" / f"{numerics_key}_logits_fp16_crop.npy").astype(np.float32)
    official = read_mask(reference_dir / "outputs" / official_run / f"example_ct_lesion_{entry['lesion_id']}.nii.gz")

    geometry = _plan(engine, image, prompts).geometry
    mask = logits_to_mask(torch.from_numpy(logits), tuple(entry["crop_start_zyx"]), geometry)

    np.testing.assert_array_equal(mask, official)


def test_point_ball_has_739_voxels():
    ball = ball_mask()

    assert ball.shape == (11, 11, 11)
    assert int(ball.sum()) == 739


def test_full_size_plans_state_dict_layout(reference_dir):
    full = reference_dir / "checkpoints" / "full"
    expected = json.loads((full / "seg_state_dict_keys.json").read_text())
    plans = parse_model_plans(read_json(full / "plans.json"), read_json(full / "dataset.json"))

    # The meta device allocates no memory, so the 102M-parameter network builds quickly.
    network = build_network(plans, device="meta")
    state_dict = network.state_dict()
    aliases = state_dict_aliases(network)
    canonical_of = {key: canonical for canonical, keys in aliases.items() for key in keys}

    assert len(state_dict) == expected["n_keys"]
    assert [entry["key"] for entry in expected["keys"]] == list(state_dict)
    for entry in expected["keys"]:
        assert list(state_dict[entry["key"]].shape) == entry["shape"], entry["key"]
        assert canonical_of[entry["key"]] == (entry["alias_of"] or entry["key"]), entry["key"]
    assert sum(p.numel() for p in network.parameters()) == expected["n_unique_parameters"]


def test_box_at_first_voxel_starts_at_zero(engine):
    # The official code computes uint16(0) - 1 here and gets an empty box.
    image = np.full((40, 50, 60), 100.0, dtype=np.float32)
    geometry = compute_geometry(image, (3.0, 3.0, 3.0), engine.model("box").plans)
    prompt = LesionPrompt(1, "box", box_min=(0, 0, 0), box_max=(10, 8, 6))

    encoded = encode_prompt(prompt, geometry)

    assert encoded.box_start == (0, 0, 0)
    assert encoded.box_stop == (19, 32, 39)


def test_point_ball_clipped_at_image_corner(engine):
    image = np.full((40, 50, 60), 100.0, dtype=np.float32)
    geometry = compute_geometry(image, (3.0, 3.0, 3.0), engine.model("point").plans)
    prompt = LesionPrompt(1, "point", point=(0.0, 0.0, 0.0))
    corner_octant = int(ball_mask()[5:, 5:, 5:].sum())

    encoded = encode_prompt(prompt, geometry)
    channel = encoded.render((-4, -4, -4), (16, 16, 16), geometry.preprocessed_shape)

    assert encoded.point == (0, 0, 0)
    assert int(channel.sum()) == corner_octant
    assert float(channel[:4].sum()) == 0.0
