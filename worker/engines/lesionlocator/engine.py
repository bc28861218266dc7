"""The LesionLocator segmentation engine (promptable 3D lesion segmentation on CT).

Box and mask prompts run through ``LesionLocatorSeg/bbox_optimized``, point
prompts through ``LesionLocatorSeg/point_optimized``. The networks of every
fold are built and loaded once, on the first ``status()``, ``load()`` or
``segment()`` call, and stay on the device. When the checkpoint also has
``LesionLocatorTrack``, ``model_tracker()`` returns a tracker that runs it; a
missing or broken tracking model leaves segmentation working. See README.md in this folder for
how the results differ from the official implementation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from lesions.errors import EngineUnavailable, InputError
from lesions.prompt_types import LesionPrompt
from worker.engines.base import EngineOptions, EngineStatus, ProgressCallback

from . import heap
from .checkpoint import (
    MODEL_FOLDER_BY_PROMPT_KIND,
    TRACK_FOLDER_NAME,
    CheckpointError,
    ModelFolder,
    find_track_folder,
    load_model_folder,
    resolve_seg_folder,
)
from .export import logits_to_mask
from .inference import CasePlan, plan_case, predict_case
from .network import WeightsError, build_network, load_weights
from .plans import ModelPlans
from .prediction import batch_size_for_budget, bytes_per_patch, default_memory_budget
from .track_model import load_track_model
from .tracker import LesionLocatorTracker

logger = logging.getLogger(__name__)

ENGINE_NAME = "lesionlocator"
# Mask prompts are converted to boxes, so they use the box model.
MODEL_KIND_BY_PROMPT_KIND = {"box": "box", "mask": "box", "point": "point"}
DEFAULT_MAX_BATCH_SIZE_CUDA = 16
# Larger CPU batches gave no throughput gain. On the fixture benchmark (tiny
# network, torch 2.13, 2-core AMD EPYC, heap.py's malloc thresholds) a patch
# took 0.53 s of CPU time at batch 1, 0.47 s at batch 2 and 4, and 0.59 s at batch 8.
DEFAULT_MAX_BATCH_SIZE_CPU = 4


@dataclass
class LoadedModel:
    """The networks of one model variant, one per fold, on the engine's device."""

    kind: str
    path: Path
    plans: ModelPlans
    folds: tuple[int, ...]
    networks: list[nn.Module]
    mirror_axes: tuple[int, ...] | None


@dataclass
class SegmentationRun:
    """Masks of one ``segment`` call plus the intermediate results, for tests and debugging."""

    masks: dict[int, np.ndarray] = field(default_factory=dict)
    # Per model kind ("box", "point"): the planned case.
    cases: dict[str, CasePlan] = field(default_factory=dict)
    # Per lesion id: (padded start of the coverage box, blended logits (classes, *box size)).
    logits: dict[int, tuple[tuple[int, int, int], torch.Tensor]] = field(default_factory=dict)


class LesionLocatorEngine:
    """Engine protocol implementation running LesionLocator's segmentation models.

    ``folds=None`` uses every ``fold_<n>`` folder present. ``device=None`` picks
    CUDA when available, else CPU. ``half_precision`` runs the network under
    float16 autocast. It defaults to on for CUDA and is ignored on CPU.
    ``memory_budget_bytes`` caps the activation memory of one patch batch. By
    default it is half the free CUDA memory or a quarter of the available RAM.
    ``max_batch_size`` caps the patches per batch (default 16 on CUDA, 4 on CPU).
    ``keep_freed_memory`` raises glibc's malloc thresholds for the whole process
    so that freed feature maps are reused during a call (``heap.py``). It
    defaults to on for CPU, where it cut the fixture benchmark's CPU time by 40 %.
    """

    name = ENGINE_NAME

    def __init__(
        self,
        checkpoint_dir: str | Path,
        folds: Sequence[int] | None = None,
        device: str | torch.device | None = None,
        *,
        half_precision: bool | None = None,
        memory_budget_bytes: int | None = None,
        max_batch_size: int | None = None,
        keep_freed_memory: bool | None = None,
    ):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.folds = tuple(int(f) for f in folds) if folds is not None else None
        self.device = _resolve_device(device)
        if half_precision and self.device.type != "cuda":
            logger.warning("half precision was requested on %s, but it is supported on CUDA only, so the network runs in float32", self.device)
        self.half_precision = self.device.type == "cuda" and (half_precision is None or half_precision)
        self.memory_budget_bytes = memory_budget_bytes
        if max_batch_size is None:
            max_batch_size = DEFAULT_MAX_BATCH_SIZE_CUDA if self.device.type == "cuda" else DEFAULT_MAX_BATCH_SIZE_CPU
        self.max_batch_size = max(1, int(max_batch_size))
        self.keep_freed_memory = self.device.type == "cpu" if keep_freed_memory is None else bool(keep_freed_memory)

        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] | None = None
        self._load_error: EngineUnavailable | None = None
        self._track_lock = threading.Lock()
        self._tracker: LesionLocatorTracker | None = None
        self._track_error: EngineUnavailable | None = None
        self._track_checked = False

    def load(self) -> None:
        """Load both model variants once.

        Raise EngineUnavailable if that fails, and the same error on every later call.
        """
        with self._lock:
            if self._models is not None:
                return
            if self._load_error is not None:
                raise self._load_error

            started = time.perf_counter()
            try:
                seg_folder = resolve_seg_folder(self.checkpoint_dir)
                models = {
                    kind: self._load_model(kind, seg_folder / folder_name)
                    for kind, folder_name in MODEL_FOLDER_BY_PROMPT_KIND.items()
                }
            except EngineUnavailable as error:
                logger.error("lesionlocator checkpoint %s is unusable: %s", self.checkpoint_dir, error)
                self._load_error = error
                raise
            except RuntimeError as error:
                # For example out of device memory while moving the weights.
                logger.error("loading lesionlocator checkpoint %s on %s failed: %s", self.checkpoint_dir, self.device, error)
                self._load_error = EngineUnavailable(f"loading {self.checkpoint_dir} on {self.device} failed: {error}")
                raise self._load_error from error

            self._models = models
            logger.info(
                "lesionlocator loaded %s on %s in %.1f s (folds: box %s, point %s)",
                self.checkpoint_dir,
                self.device,
                time.perf_counter() - started,
                models["box"].folds,
                models["point"].folds,
            )

    def model_tracker(self) -> LesionLocatorTracker | None:
        """Return the tracker of ``LesionLocatorTrack``, loaded once, or None when the checkpoint has no such folder.

        Raise EngineUnavailable naming the file when the folder exists but does not load.
        """
        with self._track_lock:
            if self._track_error is not None:
                raise self._track_error
            if self._track_checked:
                return self._tracker

            track_folder = find_track_folder(self.checkpoint_dir)
            if track_folder is None:
                self._track_checked = True
                return None

            started = time.perf_counter()
            try:
                model = load_track_model(track_folder, self.folds, self.device)
            except EngineUnavailable as error:
                logger.error("lesionlocator tracking model %s is unusable: %s", track_folder, error)
                self._track_error = error
                raise
            except RuntimeError as error:
                logger.error("loading lesionlocator tracking model %s on %s failed: %s", track_folder, self.device, error)
                self._track_error = EngineUnavailable(f"loading {track_folder} on {self.device} failed: {error}")
                raise self._track_error from error

            self._tracker = LesionLocatorTracker(model, self.device, self.half_precision, keep_freed_memory=self.keep_freed_memory)
            self._track_checked = True
            logger.info(
                "lesionlocator loaded tracking model %s on %s in %.1f s (folds %s)",
                track_folder,
                self.device,
                time.perf_counter() - started,
                [fold.fold for fold in model.folds],
            )
            return self._tracker

    def model(self, kind: str) -> LoadedModel:
        """Return the loaded model variant for prompt kind ``box``, ``point`` or ``mask``."""
        self.load()
        return self._models[MODEL_KIND_BY_PROMPT_KIND[kind]]

    def status(self) -> EngineStatus:
        """Report whether the checkpoint loads, on which device, with which folds."""
        try:
            self.load()
        except EngineUnavailable as error:
            return EngineStatus(
                name=self.name, ready=False, device=str(self.device), detail=str(error), checkpoint=str(self.checkpoint_dir)
            )

        box, point = self._models["box"], self._models["point"]
        detail = f"box model folds {list(box.folds)}, point model folds {list(point.folds)}"
        detail += f"; test-time mirroring {'on' if self.device.type == 'cuda' else 'off'} by default"
        if self.half_precision:
            detail += "; float16 autocast"
        tracking, tracking_detail = self._tracking_status()
        return EngineStatus(
            name=self.name,
            ready=True,
            device=str(self.device),
            detail=detail,
            folds=box.folds,
            checkpoint=str(self.checkpoint_dir),
            tracking=tracking,
            tracking_detail=tracking_detail,
        )

    def _tracking_status(self) -> tuple[str, str]:
        try:
            tracker = self.model_tracker()
        except EngineUnavailable as error:
            return "classical", f"{TRACK_FOLDER_NAME} does not load, so tracking uses the classical tracker with this engine: {error}"
        if tracker is None:
            return "classical", f"the checkpoint has no {TRACK_FOLDER_NAME} folder, so tracking uses the classical tracker with this engine"
        folds = [fold.fold for fold in tracker.model.folds]
        return "model", f"{TRACK_FOLDER_NAME} folds {folds}"

    def segment(
        self,
        image: sitk.Image,
        prompts: Sequence[LesionPrompt],
        options: EngineOptions,
        progress: ProgressCallback | None = None,
    ) -> dict[int, np.ndarray]:
        """Return {lesion_id: bool array [z, y, x]} on the grid of ``image``."""
        return self.run(image, prompts, options, progress, keep_logits=False).masks

    def run(
        self,
        image: sitk.Image,
        prompts: Sequence[LesionPrompt],
        options: EngineOptions,
        progress: ProgressCallback | None = None,
        keep_logits: bool = True,
    ) -> SegmentationRun:
        """Segment like ``segment`` and also return the planned cases and, if requested, the blended logits."""
        self.load()
        _check_prompts(prompts)
        array, spacing_zyx = _image_array(image)
        use_mirroring = options.test_time_augmentation if options.test_time_augmentation is not None else self.device.type == "cuda"
        started = time.perf_counter()
        keeps_freed_memory = self.keep_freed_memory and heap.keep_freed_memory()
        try:
            run = self._segment_cases(array, spacing_zyx, prompts, use_mirroring, progress, keep_logits)
        finally:
            if keeps_freed_memory:
                heap.release_freed_memory()

        logger.info(
            "lesionlocator segmented %d lesions (%d patches, mirroring %s) in %.1f s",
            len(prompts),
            sum(len(lesion.patch_starts) for case in run.cases.values() for lesion in case.lesions),
            "on" if use_mirroring else "off",
            time.perf_counter() - started,
        )
        return run

    def _segment_cases(
        self,
        array: np.ndarray,
        spacing_zyx: tuple[float, float, float],
        prompts: Sequence[LesionPrompt],
        use_mirroring: bool,
        progress: ProgressCallback | None,
        keep_logits: bool,
    ) -> SegmentationRun:
        # Plan every model's patches first, so progress can count all of them.
        cases: dict[str, CasePlan] = {}
        for kind in ("box", "point"):
            group = [p for p in prompts if MODEL_KIND_BY_PROMPT_KIND[p.kind] == kind]
            if group:
                cases[kind] = plan_case(array, spacing_zyx, group, self._models[kind].plans)

        total_patches = sum(len(lesion.patch_starts) for case in cases.values() for lesion in case.lesions)
        run = SegmentationRun(cases=cases)
        finished_before = 0
        for kind, case in cases.items():
            model = self._models[kind]
            case_patches = sum(len(lesion.patch_starts) for lesion in case.lesions)

            def report(done: int, _total: int, offset: int = finished_before) -> None:
                if progress is not None:
                    progress((offset + done) / total_patches)

            predictions = predict_case(
                case,
                model.networks,
                num_classes=model.plans.num_classes,
                device=self.device,
                batch_size=self._batch_size(model),
                mirror_axes=model.mirror_axes if use_mirroring else None,
                half_precision=self.half_precision,
                progress=report,
            )
            for index, lesion_logits in predictions:
                lesion = case.lesions[index]
                run.masks[lesion.prompt.lesion_id] = logits_to_mask(lesion_logits, lesion.coverage_start, case.geometry)
                if keep_logits:
                    run.logits[lesion.prompt.lesion_id] = (lesion.coverage_start, lesion_logits)
            finished_before += case_patches
        return run

    def _load_model(self, kind: str, model_dir: Path) -> LoadedModel:
        folder = load_model_folder(model_dir, self.folds)
        networks = [self._build_fold_network(folder, fold) for fold in folder.folds]
        return LoadedModel(
            kind=kind,
            path=model_dir,
            plans=folder.plans,
            folds=folder.folds,
            networks=networks,
            mirror_axes=folder.mirror_axes,
        )

    def _build_fold_network(self, folder: ModelFolder, fold: int) -> nn.Module:
        checkpoint_path = folder.path / f"fold_{fold}" / "checkpoint_final.pth"
        try:
            network = build_network(folder.plans)
            load_weights(network, folder.fold_state_dicts[fold])
        except WeightsError as error:
            raise CheckpointError(checkpoint_path, f"does not fit the network of plans.json: {error}") from error
        except (ValueError, TypeError) as error:
            raise CheckpointError(folder.path / "plans.json", f"cannot build the network: {error}") from error
        return network.to(self.device).eval()

    def _batch_size(self, model: LoadedModel) -> int:
        budget = self.memory_budget_bytes if self.memory_budget_bytes is not None else default_memory_budget(self.device)
        patch_bytes = bytes_per_patch(model.networks[0], model.plans.patch_size, self.half_precision)
        return batch_size_for_budget(patch_bytes, budget, self.max_batch_size)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _image_array(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("image", f"expected a 3D single-channel image, got {image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} components")
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    spacing_xyz = image.GetSpacing()
    return array, (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0]))


def _check_prompts(prompts: Sequence[LesionPrompt]) -> None:
    seen: set[int] = set()
    for prompt in prompts:
        if prompt.kind not in MODEL_KIND_BY_PROMPT_KIND:
            raise InputError("prompts", f"lesion {prompt.lesion_id} has unsupported prompt kind {prompt.kind!r}")
        if prompt.lesion_id in seen:
            raise InputError("prompts", f"lesion id {prompt.lesion_id} appears more than once")
        seen.add(prompt.lesion_id)
