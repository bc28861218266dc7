"""Load the LesionLocatorTrack model: per fold a U-Net and a uniGradICON registration network.

Each ``fold_<f>/checkpoint_final.pth`` of the ``LesionLocatorTrack`` folder
holds, in ``network_weights``:

- ``unet.*``: the segmentation U-Net built from ``plans.json``, with two input
  channels (follow-up CT, warped prompt);
- ``reg_net.regis_net.*``: uniGradICON (``registration_network.py``);
- ``unet_patch_size``: an int64 buffer that must equal the plans' patch size.

The files are read like the segmentation checkpoints (``checkpoint.py``:
``torch.load(weights_only=True)`` with the same allow-list), and the trainer
must be ``LesionLocatorTrainerTrack``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CHECKPOINT_FILE_NAME, TRACKING_TRAINERS, CheckpointError, load_model_folder
from .network import WeightsError, build_network, load_weights
from .plans import ModelPlans
from .registration_network import RegistrationUnavailable, build_registration_network, registration_state_dict

UNET_PREFIX = "unet."
PATCH_SIZE_KEY = "unet_patch_size"


@dataclass
class TrackFold:
    """The two networks of one fold, in eval mode on the model's device."""

    fold: int
    unet: nn.Module
    registration: nn.Module


@dataclass
class TrackModel:
    """The loaded LesionLocatorTrack folder."""

    path: Path
    plans: ModelPlans
    folds: list[TrackFold]


def load_track_model(model_dir: Path, folds: tuple[int, ...] | None, device: torch.device) -> TrackModel:
    """Load every selected fold of ``model_dir``. Raises CheckpointError naming the file at fault."""
    folder = load_model_folder(model_dir, folds, trainers=TRACKING_TRAINERS)
    loaded = []
    for fold in folder.folds:
        path = model_dir / f"fold_{fold}" / CHECKPOINT_FILE_NAME
        unet, registration = _build_fold(folder.plans, folder.fold_state_dicts[fold], path)
        loaded.append(TrackFold(fold=fold, unet=unet.to(device).eval(), registration=registration.to(device).eval()))
    return TrackModel(path=model_dir, plans=folder.plans, folds=loaded)


def _build_fold(plans: ModelPlans, state_dict: dict[str, torch.Tensor], path: Path) -> tuple[nn.Module, nn.Module]:
    _check_patch_size(plans, state_dict, path)
    unknown = [key for key in state_dict if not key.startswith((UNET_PREFIX, "reg_net.")) and key != PATCH_SIZE_KEY]
    if unknown:
        raise CheckpointError(path, f"network_weights has {len(unknown)} keys outside unet.* and reg_net.*, the first is {unknown[0]!r}")

    try:
        unet = build_network(plans)
        load_weights(unet, {key.removeprefix(UNET_PREFIX): value for key, value in state_dict.items() if key.startswith(UNET_PREFIX)})
    except WeightsError as error:
        raise CheckpointError(path, f"unet.* does not fit the network of plans.json: {error}") from error
    except (ValueError, TypeError) as error:
        raise CheckpointError(path.parent.parent / "plans.json", f"cannot build the network: {error}") from error

    try:
        registration = build_registration_network()
    except RegistrationUnavailable as error:
        raise CheckpointError(path, str(error)) from error
    try:
        registration.load_state_dict(registration_state_dict(state_dict), strict=True)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(path, f"reg_net.* does not fit uniGradICON: {first_line}") from error
    return unet, registration


def _check_patch_size(plans: ModelPlans, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    stored = state_dict.get(PATCH_SIZE_KEY)
    if stored is None:
        raise CheckpointError(path, f"network_weights is missing {PATCH_SIZE_KEY!r}")
    if tuple(int(v) for v in stored.flatten().tolist()) != tuple(plans.patch_size):
        raise CheckpointError(path, f"{PATCH_SIZE_KEY} {stored.tolist()} differs from the plans' patch size {list(plans.patch_size)}")
