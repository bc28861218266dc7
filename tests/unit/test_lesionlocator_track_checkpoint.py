"""Loading of the optional LesionLocatorTrack folder next to the segmentation models.

Each test writes the small segmentation checkpoint of test_lesionlocator_checkpoint.py
and a tracking folder with one thing broken. Segmentation must stay ready in
every case, and the tracking problem must name the file. A complete tracking
checkpoint (with the 70.7M-parameter uniGradICON) is loaded by the parity tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from worker.engines.lesionlocator import LesionLocatorEngine
from worker.engines.lesionlocator.checkpoint import CheckpointError

from .test_lesionlocator_checkpoint import DATASET, PLANS, _checkpoint, _state_dict, _write_model

PATCH_SIZE = PLANS["configurations"]["3d_fullres"]["patch_size"]


def _track_checkpoint(seed: int = 0, **changes) -> dict:
    weights = {f"unet.{key}": value for key, value in _state_dict(seed).items()}
    weights["unet_patch_size"] = torch.tensor(PATCH_SIZE)
    # Too small for uniGradICON: loading stops at the registration network.
    weights["reg_net.regis_net.netPsi.net.downConvs.0.weight"] = torch.zeros(1)
    checkpoint = _checkpoint(seed, network_weights=weights, trainer_name="LesionLocatorTrainerTrack")
    checkpoint.update(changes)
    return checkpoint


def _write_track_folder(root: Path, checkpoint: dict | None) -> Path:
    folder = root / "LesionLocatorTrack"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(PLANS))
    (folder / "dataset.json").write_text(json.dumps(DATASET))
    path = folder / "fold_0" / "checkpoint_final.pth"
    if checkpoint is not None:
        torch.save(checkpoint, path)
    return path


@pytest.fixture
def checkpoint_dir(tmp_path) -> Path:
    root = tmp_path / "LesionLocatorCheckpoint"
    _write_model(root / "LesionLocatorSeg" / "bbox_optimized")
    _write_model(root / "LesionLocatorSeg" / "point_optimized")
    return root


def _tracking_problem(checkpoint_dir: Path) -> str:
    engine = LesionLocatorEngine(checkpoint_dir, device="cpu")
    status = engine.status()
    assert status.ready, status.detail
    assert status.tracking == "classical"
    with pytest.raises(CheckpointError) as raised:
        engine.model_tracker()
    assert str(raised.value) in status.tracking_detail
    return status.tracking_detail


def test_no_track_folder_tracks_classically(checkpoint_dir):
    engine = LesionLocatorEngine(checkpoint_dir, device="cpu")

    status = engine.status()

    assert status.ready
    assert status.tracking == "classical"
    assert "no LesionLocatorTrack folder" in status.tracking_detail
    assert engine.model_tracker() is None


def test_missing_track_checkpoint_is_named(checkpoint_dir):
    path = _write_track_folder(checkpoint_dir, None)

    detail = _tracking_problem(checkpoint_dir)

    assert f"{path}: is missing" in detail


def test_truncated_track_checkpoint_is_named(checkpoint_dir):
    path = _write_track_folder(checkpoint_dir, _track_checkpoint())
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])

    detail = _tracking_problem(checkpoint_dir)

    assert str(path) in detail
    assert "truncated or corrupt" in detail


def test_segmentation_trainer_rejected(checkpoint_dir):
    path = _write_track_folder(checkpoint_dir, _track_checkpoint(trainer_name="LesionLocatorTrainerSegment"))

    detail = _tracking_problem(checkpoint_dir)

    assert str(path) in detail
    assert "LesionLocatorTrainerTrack" in detail


def test_patch_size_mismatch_is_named(checkpoint_dir):
    checkpoint = _track_checkpoint()
    checkpoint["network_weights"]["unet_patch_size"] = torch.tensor([8, 8, 8])
    path = _write_track_folder(checkpoint_dir, checkpoint)

    detail = _tracking_problem(checkpoint_dir)

    assert str(path) in detail
    assert "unet_patch_size [8, 8, 8]" in detail


def test_unet_weights_mismatch_is_named(checkpoint_dir):
    checkpoint = _track_checkpoint()
    checkpoint["network_weights"]["unet.encoder.stem.convs.0.conv.weight"] = torch.zeros(4, 1, 3, 3, 3)
    path = _write_track_folder(checkpoint_dir, checkpoint)

    detail = _tracking_problem(checkpoint_dir)

    assert str(path) in detail
    assert "encoder.stem.convs.0.conv.weight" in detail


def test_registration_weights_mismatch_is_named(checkpoint_dir):
    path = _write_track_folder(checkpoint_dir, _track_checkpoint())

    detail = _tracking_problem(checkpoint_dir)

    assert str(path) in detail
    assert "reg_net.* does not fit uniGradICON" in detail


def test_track_folder_next_to_seg_folder(checkpoint_dir):
    path = _write_track_folder(checkpoint_dir, None)

    detail = _tracking_problem(checkpoint_dir / "LesionLocatorSeg")

    assert f"{path}: is missing" in detail
