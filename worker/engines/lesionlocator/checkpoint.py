"""Load and validate a LesionLocator checkpoint folder without running pickled code.

Expected layout (the official release ``LesionLocatorCheckpoint`` folder)::

    <checkpoint_dir>/LesionLocatorSeg/bbox_optimized/{dataset.json, plans.json, fold_<f>/checkpoint_final.pth}
    <checkpoint_dir>/LesionLocatorSeg/point_optimized/...
    <checkpoint_dir>/LesionLocatorTrack/...   (optional, the tracking model)

``checkpoint_dir`` may also be the ``LesionLocatorSeg`` folder itself, and then
the tracking model is looked for next to it. Every
``.pth`` file is read with ``torch.load(weights_only=True)``, which only
rebuilds tensors, containers and the globals in ``ALLOWED_GLOBALS``. Each
failure raises ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lesions.errors import EngineUnavailable

from .plans import ModelPlans, PlansError, parse_model_plans, read_json

CHECKPOINT_FILE_NAME = "checkpoint_final.pth"
SEG_FOLDER_NAME = "LesionLocatorSeg"
# Prompt kind served by each model folder. Mask prompts become boxes and use the box model.
MODEL_FOLDER_BY_PROMPT_KIND = {"box": "bbox_optimized", "point": "point_optimized"}
SEGMENTATION_TRAINERS = ("LesionLocatorTrainerSegment",)
TRACK_FOLDER_NAME = "LesionLocatorTrack"
TRACKING_TRAINERS = ("LesionLocatorTrainerTrack",)

# nnU-Net trainers store the EMA pseudo-Dice (`_best_ema`) and their loss logs as
# numpy float64 and float32 scalars. Unpickling those needs the numpy scalar
# constructor (under its numpy >= 2 name and the numpy 1.x name that older
# checkpoints carry), np.dtype and the two dtype classes.
ALLOWED_GLOBALS = [
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
]

_FOLD_FOLDER = re.compile(r"^fold_(\d+)$")


class CheckpointError(EngineUnavailable):
    """A checkpoint file is missing, unreadable or does not fit the plans."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class ModelFolder:
    """One model variant (box or point) with the weights of every selected fold, on CPU."""

    path: Path
    plans: ModelPlans
    fold_state_dicts: dict[int, dict[str, torch.Tensor]]
    # Axes (0 = z, 1 = y, 2 = x) that test-time mirroring may flip. None disables mirroring.
    mirror_axes: tuple[int, ...] | None

    @property
    def folds(self) -> tuple[int, ...]:
        return tuple(sorted(self.fold_state_dicts))


def resolve_seg_folder(checkpoint_dir: Path) -> Path:
    """Return the folder that contains ``bbox_optimized`` and ``point_optimized``."""
    nested = checkpoint_dir / SEG_FOLDER_NAME
    if nested.is_dir():
        return nested
    if any((checkpoint_dir / name).is_dir() for name in MODEL_FOLDER_BY_PROMPT_KIND.values()):
        return checkpoint_dir
    raise CheckpointError(
        nested, f"is missing; expected {SEG_FOLDER_NAME}/bbox_optimized and {SEG_FOLDER_NAME}/point_optimized"
    )


def find_track_folder(checkpoint_dir: Path) -> Path | None:
    """Return the ``LesionLocatorTrack`` folder of the checkpoint, or None when there is none.

    When ``checkpoint_dir`` is the ``LesionLocatorSeg`` folder itself, the
    tracking model is its sibling.
    """
    is_seg_folder = any((checkpoint_dir / name).is_dir() for name in MODEL_FOLDER_BY_PROMPT_KIND.values())
    candidate = (checkpoint_dir.parent if is_seg_folder else checkpoint_dir) / TRACK_FOLDER_NAME
    return candidate if candidate.is_dir() else None


def discover_folds(model_dir: Path) -> list[int]:
    """List the fold numbers that have a ``fold_<f>`` folder, in ascending order."""
    folds = []
    for child in model_dir.iterdir() if model_dir.is_dir() else ():
        match = _FOLD_FOLDER.match(child.name)
        if match and child.is_dir():
            folds.append(int(match.group(1)))
    return sorted(folds)


def load_model_folder(
    model_dir: Path, folds: tuple[int, ...] | None = None, trainers: tuple[str, ...] = SEGMENTATION_TRAINERS
) -> ModelFolder:
    """Load plans, dataset description and fold weights of one model variant.

    ``folds=None`` loads every ``fold_<f>`` folder present. ``trainers`` lists the
    accepted ``trainer_name`` values. Raises CheckpointError.
    """
    if not model_dir.is_dir():
        raise CheckpointError(model_dir, "model folder is missing")

    plans_document = _read_json_or_raise(model_dir / "plans.json")
    dataset_document = _read_json_or_raise(model_dir / "dataset.json")

    selected_folds = list(folds) if folds is not None else discover_folds(model_dir)
    if not selected_folds:
        raise CheckpointError(model_dir, f"contains no fold_<n>/{CHECKPOINT_FILE_NAME}, so there are no weights to load")

    state_dicts: dict[int, dict[str, torch.Tensor]] = {}
    configuration = None
    mirror_axes: tuple[int, ...] | None = None
    for fold in selected_folds:
        path = model_dir / f"fold_{fold}" / CHECKPOINT_FILE_NAME
        checkpoint = read_checkpoint_file(path)

        # Like the official loader, the first fold decides the configuration and mirroring.
        if configuration is None:
            configuration = _checkpoint_configuration(checkpoint, path, trainers)
            mirror_axes = _checkpoint_mirror_axes(checkpoint, path)
        state_dicts[fold] = _checkpoint_state_dict(checkpoint, path)

    try:
        plans = parse_model_plans(plans_document, dataset_document, configuration)
    except PlansError as error:
        raise CheckpointError(model_dir / "plans.json", str(error)) from error

    return ModelFolder(path=model_dir, plans=plans, fold_state_dicts=state_dicts, mirror_axes=mirror_axes)


def read_checkpoint_file(path: Path) -> dict:
    """Unpickle ``path`` with ``weights_only=True`` and the allow-listed globals only."""
    if not path.is_file():
        raise CheckpointError(path, "is missing")

    try:
        # mmap keeps the tensors on disk until they are copied into the network, so
        # loading five folds does not hold five copies in RAM. Only the zip format
        # (torch >= 1.6) supports it.
        use_mmap = zipfile.is_zipfile(path)
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as error:
        raise CheckpointError(path, _describe_rejected_globals(path, error)) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(path, f"cannot be read because the file is truncated or corrupt ({error}). Download it again.") from error

    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"contains a {type(checkpoint).__name__}, expected a checkpoint dict")
    return checkpoint


def _describe_rejected_globals(path: Path, error: Exception) -> str:
    try:
        rejected = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - the load error below is reported either way
        rejected = []

    if rejected:
        return f"rejected because it contains pickled objects outside the allow-list: {', '.join(rejected)}"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"rejected by the weights-only unpickler: {first_line}"


def _read_json_or_raise(path: Path) -> dict:
    try:
        return read_json(path)
    except PlansError as error:
        raise CheckpointError(path, str(error).removeprefix(f"{path} ")) from error


def _checkpoint_configuration(checkpoint: dict, path: Path, trainers: tuple[str, ...]) -> str:
    trainer = checkpoint.get("trainer_name")
    if trainer not in trainers:
        raise CheckpointError(path, f"trainer_name {trainer!r} is not one of the expected trainers {trainers}")

    init_args = checkpoint.get("init_args")
    configuration = init_args.get("configuration") if isinstance(init_args, dict) else None
    if not isinstance(configuration, str):
        raise CheckpointError(path, "is missing init_args['configuration']")
    return configuration


def _checkpoint_mirror_axes(checkpoint: dict, path: Path) -> tuple[int, ...] | None:
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    if axes is None:
        return None
    try:
        parsed = tuple(int(axis) for axis in axes)
    except (TypeError, ValueError) as error:
        raise CheckpointError(path, f"inference_allowed_mirroring_axes {axes!r} is not a list of axes") from error
    if any(axis not in (0, 1, 2) for axis in parsed):
        raise CheckpointError(path, f"inference_allowed_mirroring_axes {axes!r} names an axis outside 0..2")
    return parsed


def _checkpoint_state_dict(checkpoint: dict, path: Path) -> dict[str, torch.Tensor]:
    weights = checkpoint.get("network_weights")
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(path, "is missing network_weights")

    bad_keys = [key for key, value in weights.items() if not isinstance(value, torch.Tensor)]
    if bad_keys:
        raise CheckpointError(path, f"network_weights[{bad_keys[0]!r}] is not a tensor")
    return dict(weights)
