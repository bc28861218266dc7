"""Parity of the LesionLocatorTrack tracker with the official tracking run, and its fixes.

The official tracking of the fixture pair (5 lesions, mirroring off, float32)
is reproduced once per module with the official z-window choice, which skips
the last offset. That run takes about a minute on 2 cores, and every parity
check reads from it. The other tests replace the registration by a fixed
field, so they take seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.parity.reference_data import dice, read_image, track_checkpoint_dir
from worker.engines.base import EngineOptions
from worker.engines.lesionlocator import LesionLocatorEngine, tracker as tracker_module
from worker.engines.lesionlocator.tracker import LesionLocatorTracker, TrackingRun
from worker.engines.lesionlocator.z_window import find_z_windows

pytestmark = pytest.mark.parity

NO_MIRRORING = EngineOptions(test_time_augmentation=False)
# The U-Net input and output of the first pass, as the task states it for float16-rounded images.
NETWORK_TOLERANCE = 1e-3
# The field is stored as float16. Measured: max abs difference 1.5e-5 where displacements reach 0.04.
FIELD_TOLERANCE = 5e-5
MIN_DICE = 0.98
# The follow-up starts 10 slices of 3 mm further into the baseline: 30 voxels at the model's 1 mm.
TRUE_Z_OFFSET = 30


@pytest.fixture(scope="module")
def engine(reference_dir) -> LesionLocatorEngine:
    return LesionLocatorEngine(track_checkpoint_dir(reference_dir), folds=(0,), device="cpu")


@pytest.fixture(scope="module")
def tracker(engine) -> LesionLocatorTracker:
    tracker = engine.model_tracker()
    assert tracker is not None
    return tracker


@pytest.fixture(scope="module")
def official_window_tracker(tracker) -> LesionLocatorTracker:
    return LesionLocatorTracker(tracker.model, tracker.device, half_precision=False, include_last_z_offset=False)


@pytest.fixture(scope="module")
def pair(reference_dir) -> tuple[sitk.Image, np.ndarray, sitk.Image]:
    inputs = reference_dir / "inputs"
    baseline = read_image(inputs / "images" / "example_ct.nii.gz")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / "prompts" / "instance_mask" / "example_ct.nii.gz")))
    followup = read_image(inputs / "images" / "example_ct_fu.nii.gz")
    return baseline, labels, followup


@pytest.fixture(scope="module")
def official_run(official_window_tracker, pair) -> TrackingRun:
    baseline, labels, followup = pair
    return official_window_tracker.run(baseline, labels, followup, NO_MIRRORING, keep_network_io=True)


@pytest.fixture(scope="module")
def track_numerics(reference_dir) -> dict:
    folder = reference_dir / "numerics" / "track"
    return {
        "info": json.loads((folder / "track_lesion2_notta_info.json").read_text()),
        "input": np.load(folder / "track_lesion2_notta_unet_input_first_pass.npy"),
        "output": np.load(folder / "track_lesion2_notta_unet_output_first_pass.npy"),
        "field": np.load(folder / "track_lesion2_notta_phiAB_minus_identity_fp16.npz")["disp"],
    }


def test_track_model_loaded(engine):
    status = engine.status()

    assert status.ready
    assert status.tracking == "model"
    assert "LesionLocatorTrack folds [0]" in status.tracking_detail


def test_official_z_windows(official_run, track_numerics):
    windows = official_run.passes[0].windows

    assert list(windows.baseline) == track_numerics["info"]["x0_window"]
    assert list(windows.followup) == track_numerics["info"]["x1_window"]


def test_registration_pass_shared(official_run):
    assert len(official_run.passes) == 1
    assert all(len(passes) == 1 for passes in official_run.lesion_passes.values())
    assert sorted(official_run.lesion_passes) == [1, 2, 3, 4, 5]


def test_displacement_field(official_run, tracker, track_numerics):
    identity = tracker.model.folds[0].registration.identity_map
    displacement = (official_run.passes[0].field - identity)[0].numpy()
    expected = track_numerics["field"].astype(np.float32)

    assert displacement.shape == expected.shape
    assert np.abs(displacement - expected).max() <= FIELD_TOLERANCE


def test_warped_prompt_and_patch(official_run, track_numerics):
    info = track_numerics["info"]
    lesion_pass = official_run.lesion_passes[2][0]
    z0, _, y0, _, x0, _ = info["slicer"]

    assert lesion_pass.warped_voxels == info["warped_prompt_voxels"]
    # The official slicer is relative to the follow-up window; ours includes its start.
    assert lesion_pass.patch_start == (z0 + info["x1_window"][0], y0, x0)


def test_network_input_and_output(official_run, track_numerics):
    lesion_pass = official_run.lesion_passes[2][0]

    assert np.abs(lesion_pass.network_input.numpy() - track_numerics["input"]).max() <= NETWORK_TOLERANCE
    assert np.abs(lesion_pass.network_output.numpy() - track_numerics["output"]).max() <= NETWORK_TOLERANCE


@pytest.mark.parametrize("lesion_id", [1, 2, 3, 4, 5])
def test_tracked_mask_dice(official_run, reference_dir, lesion_id):
    path = reference_dir / "outputs" / "track_prev_mask_5lesions_notta_fp32driver" / f"example_ct_fu_lesion_{lesion_id}.nii.gz"
    official = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0

    assert official_run.result.lesions[lesion_id].status == "tracked"
    assert dice(official_run.masks[lesion_id], official) >= MIN_DICE


def test_followup_labels_keep_ids(official_run):
    labels = official_run.result.followup_labels

    assert set(np.unique(labels)) - {0} == {1, 2, 3, 4, 5}
    for lesion_id, mask in official_run.masks.items():
        # Overlapping blobs of the random network go to the lower id; every voxel left is the lesion's own.
        assert np.all(mask[labels == lesion_id])


def test_corrected_search_finds_true_offset(tracker, pair):
    baseline, _, followup = pair
    previous = tracker.prepare(baseline).volume
    current = tracker.prepare(followup).volume

    corrected = find_z_windows(previous, current, (175, 175))
    official = find_z_windows(previous, current, (175, 175), include_last_offset=False)

    assert corrected.baseline == (TRUE_Z_OFFSET, TRUE_Z_OFFSET + current.shape[2])
    assert official.baseline == (TRUE_Z_OFFSET - 1, TRUE_Z_OFFSET - 1 + current.shape[2])


def _fixed_field(shift: float):
    """Replace the registration by the identity grid shifted by ``shift`` (icon_registration's [0, 1] units)."""

    def field(network, moving, fixed):
        return network.identity_map + shift

    return field


def test_empty_warped_mask_not_found(tracker, pair, monkeypatch):
    baseline, labels, followup = pair
    # Every sample lands outside the previous image, so the warped masks are empty.
    monkeypatch.setattr(tracker_module, "displacement_field", _fixed_field(2.0))

    result = tracker.track(baseline, labels, followup, NO_MIRRORING)

    assert {track.status for track in result.lesions.values()} == {"not_found"}
    assert all(track.warped_volume_ml == 0.0 for track in result.lesions.values())
    assert not result.followup_labels.any()


def test_followup_narrower_than_patch(tracker, pair, monkeypatch):
    baseline, labels, followup = pair
    # 25 voxels of 3 mm resample to 94 voxels of 0.8 mm, under the 96 of the patch.
    narrow = followup[60:85, 55:80, :]
    monkeypatch.setattr(tracker_module, "displacement_field", _fixed_field(0.0))

    gallbladder = (labels == 2).astype(np.uint8)

    run = tracker.run(baseline, gallbladder, narrow, NO_MIRRORING, keep_network_io=True)

    lesion_pass = run.lesion_passes[1][0]
    assert lesion_pass.network_input.shape[2:] == (94, 94)
    assert lesion_pass.network_output.shape[2:] == (94, 94)
    assert run.result.followup_labels.shape == sitk.GetArrayViewFromImage(narrow).shape
    assert run.result.lesions[1].status in ("tracked", "disappeared")


def test_mirroring_registers_once_per_flip(tracker, pair, monkeypatch):
    baseline, labels, followup = pair
    calls = []
    shifted = _fixed_field(0.0)

    def counting_field(network, moving, fixed):
        calls.append(moving.shape)
        return shifted(network, moving, fixed)

    monkeypatch.setattr(tracker_module, "displacement_field", counting_field)
    two_lesions = np.where(np.isin(labels, (1, 2)), labels, 0)

    run = tracker.run(baseline, two_lesions, followup, EngineOptions(test_time_augmentation=True))

    assert len(calls) == 8
    assert [p.flip_axes for p in run.passes][:2] == [(), (0,)]
    assert all(len(passes) == 8 for passes in run.lesion_passes.values())
    assert torch.is_tensor(run.passes[0].field)
