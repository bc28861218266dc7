"""Loading and validation of LesionLocator checkpoint folders.

Each test writes a small checkpoint folder in the official layout (a 2-stage
ResidualEncoderUNet with random weights), then breaks one thing in it.
"""

from __future__ import annotations

import copy
import fractions
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lesions.errors import EngineUnavailable
from lesions.prompt_types import LesionPrompt
from worker.engines.base import EngineOptions
from worker.engines.lesionlocator import LesionLocatorEngine
from worker.engines.lesionlocator.checkpoint import read_checkpoint_file
from worker.engines.lesionlocator.network import build_network, load_weights
from worker.engines.lesionlocator.plans import parse_model_plans

DATASET = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz"}
RESAMPLING_KWARGS = {"is_seg": False, "memefficient_seg_resampling": True, "force_separate_z": False}
PLANS = {
    "transpose_forward": [0, 1, 2],
    "foreground_intensity_properties_per_channel": {
        "0": {"mean": -63.0, "std": 282.4, "percentile_00_5": -918.0, "percentile_99_5": 723.0}
    },
    "configurations": {
        "3d_fullres": {
            "patch_size": [16, 16, 16],
            "spacing": [2.0, 2.0, 2.0],
            "normalization_schemes": ["CTNormalization"],
            "resampling_fn_data": "resample_torch_fornnunet",
            "resampling_fn_seg": "resample_torch_fornnunet",
            "resampling_fn_probabilities": "resample_torch_fornnunet",
            "resampling_fn_data_kwargs": RESAMPLING_KWARGS,
            "resampling_fn_seg_kwargs": {**RESAMPLING_KWARGS, "is_seg": True},
            "resampling_fn_probabilities_kwargs": RESAMPLING_KWARGS,
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                "arch_kwargs": {
                    "n_stages": 2,
                    "features_per_stage": [4, 8],
                    "conv_op": "torch.nn.modules.conv.Conv3d",
                    "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
                    "strides": [[1, 1, 1], [2, 2, 2]],
                    "n_blocks_per_stage": [1, 1],
                    "n_conv_per_stage_decoder": [1],
                    "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                    "dropout_op": None,
                    "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU",
                    "nonlin_kwargs": {"inplace": True},
                },
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
            },
        }
    },
}


def _state_dict(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    network = build_network(parse_model_plans(PLANS, DATASET))
    return network.state_dict()


def _checkpoint(seed: int = 0, **extra) -> dict:
    checkpoint = {
        "network_weights": _state_dict(seed),
        "trainer_name": "LesionLocatorTrainerSegment",
        "init_args": {"configuration": "3d_fullres", "fold": 0, "device": torch.device("cpu")},
        "inference_allowed_mirroring_axes": (0, 1, 2),
        "current_epoch": 1000,
        # nnU-Net trainers store the EMA pseudo-Dice as a numpy float64.
        "_best_ema": np.float64(0.5),
    }
    checkpoint.update(extra)
    return checkpoint


def _write_model(folder: Path, folds=(0,), plans=PLANS, checkpoint_factory=_checkpoint) -> None:
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(DATASET))
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        torch.save(checkpoint_factory(seed=fold), folder / f"fold_{fold}" / "checkpoint_final.pth")


@pytest.fixture
def checkpoint_dir(tmp_path) -> Path:
    root = tmp_path / "LesionLocatorCheckpoint"
    _write_model(root / "LesionLocatorSeg" / "bbox_optimized", folds=(0, 1))
    _write_model(root / "LesionLocatorSeg" / "point_optimized", folds=(0, 1))
    return root


def _status_detail(checkpoint_dir: Path, **engine_kwargs) -> str:
    status = LesionLocatorEngine(checkpoint_dir, device="cpu", **engine_kwargs).status()
    assert not status.ready
    return status.detail


def test_valid_folder_ready_all_folds(checkpoint_dir):
    status = LesionLocatorEngine(checkpoint_dir, device="cpu").status()

    assert status.ready, status.detail
    assert status.name == "lesionlocator"
    assert status.folds == (0, 1)
    assert status.device == "cpu"
    assert status.checkpoint == str(checkpoint_dir)


def test_folds_argument_selects_folds(checkpoint_dir):
    engine = LesionLocatorEngine(checkpoint_dir, folds=[1], device="cpu")

    assert engine.status().folds == (1,)
    assert len(engine.model("box").networks) == 1


def test_seg_folder_itself_is_accepted(checkpoint_dir):
    status = LesionLocatorEngine(checkpoint_dir / "LesionLocatorSeg", device="cpu").status()

    assert status.ready, status.detail


def test_disallowed_pickled_object_rejected(checkpoint_dir):
    path = checkpoint_dir / "LesionLocatorSeg" / "bbox_optimized" / "fold_0" / "checkpoint_final.pth"
    torch.save(_checkpoint(learning_rate=fractions.Fraction(1, 3)), path)

    with pytest.raises(EngineUnavailable) as raised:
        read_checkpoint_file(path)

    assert str(path) in str(raised.value)
    assert "fractions.Fraction" in str(raised.value)
    assert "allow-list" in str(raised.value)


def test_disallowed_object_engine_not_ready(checkpoint_dir):
    path = checkpoint_dir / "LesionLocatorSeg" / "point_optimized" / "fold_1" / "checkpoint_final.pth"
    torch.save(_checkpoint(learning_rate=fractions.Fraction(1, 3)), path)

    detail = _status_detail(checkpoint_dir)

    assert str(path) in detail
    assert "fractions.Fraction" in detail


@pytest.mark.parametrize("missing", ["plans.json", "dataset.json"])
def test_missing_json_is_named(checkpoint_dir, missing):
    path = checkpoint_dir / "LesionLocatorSeg" / "point_optimized" / missing
    path.unlink()

    detail = _status_detail(checkpoint_dir)

    assert str(path) in detail
    assert "missing" in detail


def test_missing_requested_fold_is_named(checkpoint_dir):
    detail = _status_detail(checkpoint_dir, folds=(0, 2))

    assert str(checkpoint_dir / "LesionLocatorSeg" / "bbox_optimized" / "fold_2" / "checkpoint_final.pth") in detail


def test_folder_without_folds_is_named(tmp_path):
    root = tmp_path / "LesionLocatorCheckpoint"
    _write_model(root / "LesionLocatorSeg" / "bbox_optimized", folds=())
    _write_model(root / "LesionLocatorSeg" / "point_optimized")

    detail = _status_detail(root)

    assert str(root / "LesionLocatorSeg" / "bbox_optimized") in detail
    assert "no fold_<n>/checkpoint_final.pth" in detail


def test_missing_model_folder_is_named(tmp_path):
    root = tmp_path / "LesionLocatorCheckpoint"
    _write_model(root / "LesionLocatorSeg" / "bbox_optimized")

    detail = _status_detail(root)

    assert str(root / "LesionLocatorSeg" / "point_optimized") in detail


def test_empty_checkpoint_dir_is_named(tmp_path):
    detail = _status_detail(tmp_path)

    assert str(tmp_path / "LesionLocatorSeg") in detail


def test_truncated_checkpoint_is_named(checkpoint_dir):
    path = checkpoint_dir / "LesionLocatorSeg" / "bbox_optimized" / "fold_1" / "checkpoint_final.pth"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])

    detail = _status_detail(checkpoint_dir)

    assert str(path) in detail
    assert "truncated or corrupt" in detail


def test_wrong_weight_shape_is_named(checkpoint_dir):
    def wrong_shape_checkpoint(seed):
        checkpoint = _checkpoint(seed)
        checkpoint["network_weights"]["encoder.stem.convs.0.conv.weight"] = torch.zeros(4, 1, 3, 3, 3)
        return checkpoint

    path = checkpoint_dir / "LesionLocatorSeg" / "bbox_optimized" / "fold_0" / "checkpoint_final.pth"
    torch.save(wrong_shape_checkpoint(0), path)

    detail = _status_detail(checkpoint_dir)

    assert str(path) in detail
    assert "encoder.stem.convs.0.conv.weight" in detail


def test_plans_class_outside_allowlist_rejected(tmp_path):
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "collections.OrderedDict"
    root = tmp_path / "LesionLocatorCheckpoint"
    _write_model(root / "LesionLocatorSeg" / "bbox_optimized", plans=plans)
    _write_model(root / "LesionLocatorSeg" / "point_optimized")

    detail = _status_detail(root)

    assert str(root / "LesionLocatorSeg" / "bbox_optimized" / "plans.json") in detail
    assert "collections.OrderedDict" in detail


def test_broken_folder_segment_raises(tmp_path):
    engine = LesionLocatorEngine(tmp_path, device="cpu")
    image = sitk.Image(8, 8, 8, sitk.sitkFloat32)
    prompt = LesionPrompt(1, "box", box_min=(1, 1, 1), box_max=(4, 4, 4))

    with pytest.raises(EngineUnavailable):
        engine.segment(image, [prompt], EngineOptions())


def test_weights_load_without_alias_keys():
    # dynamic-network-architectures lists some tensors twice. A state dict with
    # only one name per tensor must load into the same values.
    plans = parse_model_plans(PLANS, DATASET)
    full = _state_dict(seed=3)
    deduplicated = {key: value for key, value in full.items() if ".all_modules." not in key and not key.startswith("decoder.encoder.")}
    network = build_network(plans)

    load_weights(network, deduplicated)

    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, full[key], msg=key)
    assert len(deduplicated) < len(full)


def test_loaded_engine_segments_small_image(checkpoint_dir):
    engine = LesionLocatorEngine(checkpoint_dir, device="cpu")
    array = np.full((12, 20, 20), -100.0, dtype=np.float32)
    array[4:8, 8:12, 8:12] = 60.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    prompts = [
        LesionPrompt(1, "box", box_min=(7, 7, 3), box_max=(13, 13, 9)),
        LesionPrompt(2, "point", point=(10.0, 10.0, 6.0)),
    ]

    masks = engine.segment(image, prompts, EngineOptions(test_time_augmentation=True))

    assert sorted(masks) == [1, 2]
    for mask in masks.values():
        assert mask.shape == (12, 20, 20)
        assert mask.dtype == bool
