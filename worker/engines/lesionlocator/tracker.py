"""LesionLocatorTrack: carry each lesion of a previous scan into a follow-up with the tracking model.

For one pair of time points (previous, follow-up):

1. Both CTs are preprocessed like for segmentation and rounded to float16, as
   the official tracker does. On CPU the rounded values are then computed in
   float32. The previous label map is resampled per lesion like an nnU-Net
   segmentation.
2. Per registration pass (the unflipped images, plus the 7 flips when test-time
   mirroring is on, for each fold): the z windows are matched
   (``z_window.py``), both windows are resized to 175^3 and uniGradICON
   computes the field from follow-up to previous voxels. This happens once per
   pass and pair, and every lesion reuses it.
3. Per lesion and pass: the lesion's mask is cropped to the previous window,
   resized to 175^3 (nearest-exact), warped with the field (nearest, zero
   outside) and resized back to the follow-up window. The U-Net patch is
   centred on the rounded centre of mass of the warped mask, and the U-Net takes
   [follow-up patch, warped-mask patch].
4. The passes' logits are averaged, with certain background outside the
   patches, and exported to the follow-up's grid like a segmentation.

How this differs from the official code is listed in README.md in this folder.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from lesions.errors import InputError
from worker.engines.base import EngineOptions
from worker.tracking.classical_tracker import MIN_FRACTION_INSIDE_FIELD_OF_VIEW, LesionTrack, TrackResult, TrackStatus

from . import heap
from .plans import ModelPlans
from .prediction import mirror_axis_combinations
from .preprocessing import CaseGeometry, Triple, compute_geometry, preprocess_whole_volume
from .prompt_encoding import resample_mask
from .registration_network import REGISTRATION_INPUT_SHAPE, displacement_field, warp_nearest
from .track_export import PatchAverage, tracked_logits_to_mask
from .track_model import TrackFold, TrackModel
from .z_window import ZWindows, find_z_windows

logger = logging.getLogger(__name__)

REGISTRATION_SIZE = REGISTRATION_INPUT_SHAPE[2:]


@dataclass
class PreparedImage:
    """A CT on the model's preprocessed grid: (1, 1, Z, Y, X), float16-rounded values."""

    geometry: CaseGeometry
    volume: torch.Tensor


@dataclass
class RegistrationPass:
    """One registration of the pair: the flipped axes (0 = z), the fold, the z windows and the field."""

    flip_axes: tuple[int, ...]
    fold: int
    windows: ZWindows
    field: torch.Tensor
    seconds: float


@dataclass
class LesionPass:
    """The outcome of one registration pass for one lesion."""

    warped_voxels: int
    # Patch start in the (flipped) follow-up's preprocessed indexes, None when the warped mask is empty.
    patch_start: Triple | None = None
    network_input: torch.Tensor | None = None
    network_output: torch.Tensor | None = None


@dataclass
class TrackingRun:
    """The result of one pair plus the intermediate values, for tests and benchmarks."""

    result: TrackResult
    passes: list[RegistrationPass] = field(default_factory=list)
    # Per lesion id: the passes in the order of ``passes``.
    lesion_passes: dict[int, list[LesionPass]] = field(default_factory=dict)
    # Per lesion id: its own follow-up mask before overlaps are resolved in the label map.
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    preprocess_seconds: float = 0.0
    registration_seconds: float = 0.0
    lesion_seconds: float = 0.0


class LesionLocatorTracker:
    """Tracks lesions with a loaded LesionLocatorTrack model.

    ``include_last_z_offset=False`` reproduces the official z-window search,
    which skips the last offset. It exists for parity tests only.
    ``keep_freed_memory`` keeps freed feature maps in the heap during a call
    (``heap.py``). It defaults to on for CPU.
    """

    def __init__(
        self,
        model: TrackModel,
        device: torch.device,
        half_precision: bool,
        include_last_z_offset: bool = True,
        keep_freed_memory: bool | None = None,
    ):
        self.model = model
        self.device = device
        self.half_precision = half_precision and device.type == "cuda"
        self.include_last_z_offset = include_last_z_offset
        self.keep_freed_memory = device.type == "cpu" if keep_freed_memory is None else keep_freed_memory

    @property
    def plans(self) -> ModelPlans:
        return self.model.plans

    def track(self, prev_image: sitk.Image, prev_labels: np.ndarray, followup_image: sitk.Image, options: EngineOptions) -> TrackResult:
        """Find every lesion of ``prev_labels`` (ids > 0, [z, y, x]) in ``followup_image``, keeping the ids."""
        return self.run(prev_image, prev_labels, followup_image, options).result

    def run(
        self,
        prev_image: sitk.Image,
        prev_labels: np.ndarray,
        followup_image: sitk.Image,
        options: EngineOptions,
        keep_network_io: bool = False,
    ) -> TrackingRun:
        """Track like ``track`` and also return the registration passes and per-lesion details."""
        keeps_freed_memory = self.keep_freed_memory and heap.keep_freed_memory()
        try:
            return self._run(prev_image, prev_labels, followup_image, options, keep_network_io)
        finally:
            if keeps_freed_memory:
                heap.release_freed_memory()

    @torch.inference_mode()
    def _run(
        self,
        prev_image: sitk.Image,
        prev_labels: np.ndarray,
        followup_image: sitk.Image,
        options: EngineOptions,
        keep_network_io: bool,
    ) -> TrackingRun:
        started = time.perf_counter()
        previous = self.prepare(prev_image)
        followup = self.prepare(followup_image)
        prompts = lesion_prompts(prev_labels, previous.geometry)
        run = TrackingRun(result=None, preprocess_seconds=time.perf_counter() - started)  # type: ignore[arg-type]

        use_mirroring = options.test_time_augmentation if options.test_time_augmentation is not None else self.device.type == "cuda"
        flips = [(), *mirror_axis_combinations((0, 1, 2))] if use_mirroring else [()]
        averages = {lesion_id: PatchAverage() for lesion_id in prompts if prompts[lesion_id] is not None}
        run.lesion_passes = {lesion_id: [] for lesion_id in averages}

        for fold in self.model.folds:
            for flip_axes in flips:
                registration = self._register(fold, previous, followup, flip_axes)
                run.passes.append(registration)
                run.registration_seconds += registration.seconds

                lesions_started = time.perf_counter()
                followup_volume = _flip(followup.volume, flip_axes)
                for lesion_id, average in averages.items():
                    lesion_pass = self._track_lesion(fold, registration, prompts[lesion_id], followup_volume, followup.geometry, average, keep_network_io)
                    run.lesion_passes[lesion_id].append(lesion_pass)
                run.lesion_seconds += time.perf_counter() - lesions_started

        run.result = self._finish(prev_image, prev_labels, followup_image, followup.geometry, prompts, averages, run)
        logger.info(
            "lesionlocator tracking: %d lesions, %d registration passes, preprocessing %.1f s, registration %.1f s, lesions %.1f s",
            len(prompts),
            len(run.passes),
            run.preprocess_seconds,
            run.registration_seconds,
            run.lesion_seconds,
        )
        return run

    def prepare(self, image: sitk.Image) -> PreparedImage:
        """Preprocess a CT for the model and round it to float16 like the official tracker."""
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError("image", f"expected a 3D single-channel image, got {image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} components")
        array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
        spacing_xyz = image.GetSpacing()
        geometry = compute_geometry(array, (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]), self.plans)
        rounded = preprocess_whole_volume(array, geometry, self.plans.intensity).to(torch.float16)
        # On CUDA the official code keeps float16 and relies on autocast. On CPU float16 convolutions
        # are not implemented for every layer, so the rounded values are computed in float32.
        volume = rounded if self.half_precision else rounded.to(torch.float32)
        return PreparedImage(geometry=geometry, volume=volume[None, None].to(self.device))

    def _register(self, fold: TrackFold, previous: PreparedImage, followup: PreparedImage, flip_axes: tuple[int, ...]) -> RegistrationPass:
        started = time.perf_counter()
        moving = _flip(previous.volume, flip_axes)
        fixed = _flip(followup.volume, flip_axes)
        windows = find_z_windows(moving, fixed, REGISTRATION_SIZE[1:], include_last_offset=self.include_last_z_offset)

        moving = F.interpolate(moving[:, :, slice(*windows.baseline)], size=REGISTRATION_SIZE, mode="trilinear", align_corners=False)
        fixed = F.interpolate(fixed[:, :, slice(*windows.followup)], size=REGISTRATION_SIZE, mode="trilinear", align_corners=False)
        with self._autocast():
            field = displacement_field(fold.registration, moving, fixed).float()
        return RegistrationPass(flip_axes=flip_axes, fold=fold.fold, windows=windows, field=field, seconds=time.perf_counter() - started)

    def _track_lesion(
        self,
        fold: TrackFold,
        registration: RegistrationPass,
        prompt: np.ndarray,
        followup_volume: torch.Tensor,
        followup_geometry: CaseGeometry,
        average: PatchAverage,
        keep_network_io: bool,
    ) -> LesionPass:
        windows = registration.windows
        followup_window_shape = (windows.followup[1] - windows.followup[0], *followup_volume.shape[3:])

        # Resize the lesion's mask inside the previous window to the registration grid, in flipped indexes.
        indexes = [nearest_exact_indexes(stop - start, size) + start for (start, stop), size in zip(_window_ranges(windows.baseline, prompt.shape), REGISTRATION_SIZE)]
        indexes = [shape - 1 - index if axis in registration.flip_axes else index for axis, (index, shape) in enumerate(zip(indexes, prompt.shape))]
        small_prompt = torch.from_numpy(prompt[np.ix_(*indexes)].astype(np.float32))[None, None].to(self.device)
        with self._autocast():
            warped = warp_nearest(small_prompt, registration.field, fold.registration)[0, 0] > 0.5

        # The warped mask lives on the follow-up window, resized from 175^3 by nearest-exact indexes.
        back_indexes = [nearest_exact_indexes(size, length) for size, length in zip(REGISTRATION_SIZE, followup_window_shape)]
        voxels, centre = _resized_mask_centre(warped.cpu().numpy(), back_indexes)
        lesion_pass = LesionPass(warped_voxels=voxels)
        if voxels == 0:
            return lesion_pass

        start, stop = patch_around(centre, followup_window_shape, self.plans.patch_size)
        warped_patch = warped[torch.from_numpy(back_indexes[0][start[0] : stop[0]]).to(self.device)]
        warped_patch = warped_patch[:, torch.from_numpy(back_indexes[1][start[1] : stop[1]]).to(self.device)]
        warped_patch = warped_patch[:, :, torch.from_numpy(back_indexes[2][start[2] : stop[2]]).to(self.device)]
        offset = windows.followup[0]
        image_patch = followup_volume[0, 0, start[0] + offset : stop[0] + offset, start[1] : stop[1], start[2] : stop[2]]
        network_input = torch.stack([image_patch, warped_patch.to(image_patch.dtype)])

        output = self._predict_patch(fold, network_input)
        lesion_pass.patch_start = (start[0] + offset, start[1], start[2])
        if keep_network_io:
            lesion_pass.network_input = network_input.float().cpu()
            lesion_pass.network_output = output.cpu()

        placed_start, placed_output = _unflip_patch(lesion_pass.patch_start, output, followup_geometry.preprocessed_shape, registration.flip_axes)
        average.add(placed_start, placed_output)
        return lesion_pass

    def _predict_patch(self, fold: TrackFold, network_input: torch.Tensor) -> torch.Tensor:
        """Run the U-Net on one input (2, *size) and return float32 logits (2, *size). Axes shorter than the patch are zero-padded."""
        size = tuple(network_input.shape[1:])
        padding = [max(0, p - s) for p, s in zip(self.plans.patch_size, size)]
        before = [amount // 2 for amount in padding]
        # F.pad lists the last axis first: (x before, x after, y before, y after, z before, z after).
        pad_arguments = [value for axis in (2, 1, 0) for value in (before[axis], padding[axis] - before[axis])]
        padded = F.pad(network_input[None], pad_arguments)
        with self._autocast():
            output = fold.unet(padded)[0].float()
        return output[(slice(None), *(slice(b, b + s) for b, s in zip(before, size)))]

    def _finish(
        self,
        prev_image: sitk.Image,
        prev_labels: np.ndarray,
        followup_image: sitk.Image,
        followup_geometry: CaseGeometry,
        prompts: dict[int, np.ndarray | None],
        averages: dict[int, PatchAverage],
        run: TrackingRun,
    ) -> TrackResult:
        previous_voxel_ml = math.prod(prev_image.GetSpacing()) / 1000.0
        followup_voxel_ml = math.prod(followup_image.GetSpacing()) / 1000.0
        model_voxel_ml = math.prod(self.plans.spacing_zyx) / 1000.0
        first_pass = run.passes[0] if run.passes else None

        tracks: dict[int, LesionTrack] = {}
        masks = run.masks
        for lesion_id, prompt in prompts.items():
            previous_volume_ml = float(np.count_nonzero(prev_labels == lesion_id)) * previous_voxel_ml
            if prompt is None:
                tracks[lesion_id] = LesionTrack(lesion_id, "not_found", "the lesion vanishes when resampled to the model's voxel spacing", previous_volume_ml, 0.0, 0.0, 0.0)
                continue

            inside = _fraction_inside_window(prompt, first_pass.windows.baseline) if first_pass else 0.0
            warped_ml = run.lesion_passes[lesion_id][0].warped_voxels * model_voxel_ml if run.lesion_passes[lesion_id] else 0.0
            status, note, mask = self._lesion_outcome(inside, averages[lesion_id], followup_geometry)
            if mask is not None:
                masks[lesion_id] = mask
            followup_volume_ml = float(mask.sum()) * followup_voxel_ml if mask is not None else 0.0
            tracks[lesion_id] = LesionTrack(lesion_id, status, note, previous_volume_ml, warped_ml, followup_volume_ml, inside)

        labels = np.zeros(followup_geometry.original_shape, dtype=prev_labels.dtype)
        # Where two lesions claim a voxel, the lower id keeps it.
        for lesion_id in sorted(masks, reverse=True):
            labels[masks[lesion_id]] = lesion_id
        return TrackResult(followup_labels=labels, lesions=tracks, transform=None, warped_labels=None)

    def _lesion_outcome(self, inside: float, average: PatchAverage, geometry: CaseGeometry) -> tuple[TrackStatus, str, np.ndarray | None]:
        if inside < MIN_FRACTION_INSIDE_FIELD_OF_VIEW:
            note = f"only {100 * inside:.0f} % of the lesion lies inside the z range matched to the follow-up"
            return "outside_field_of_view", note, None
        if average.count == 0:
            return "not_found", "the warped mask is empty in every registration pass", None

        box_start, logits = average.mean()
        mask = tracked_logits_to_mask(box_start, logits, geometry)
        if not mask.any():
            return "disappeared", "the tracking model found no lesion voxel around the warped mask", None
        return "tracked", "", mask

    def _autocast(self):
        if self.half_precision:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()


def lesion_prompts(labels: np.ndarray, geometry: CaseGeometry) -> dict[int, np.ndarray | None]:
    """Resample each lesion of a label map [z, y, x] to the preprocessed grid (bool), None where it vanishes."""
    if tuple(labels.shape) != geometry.original_shape:
        raise InputError("baseline_mask", f"label map shape {tuple(labels.shape)} differs from the image {geometry.original_shape}")
    crop = tuple(slice(a, b) for a, b in zip(geometry.crop_start, geometry.crop_stop))
    cropped = labels[crop]

    prompts: dict[int, np.ndarray | None] = {}
    for lesion_id in (int(v) for v in np.unique(labels) if v > 0):
        lesion = cropped == lesion_id
        if not lesion.any():
            prompts[lesion_id] = None
            continue
        start, region = resample_mask(lesion, geometry)
        full = np.zeros(geometry.preprocessed_shape, dtype=bool)
        full[tuple(slice(s, s + n) for s, n in zip(start, region.shape))] = region
        prompts[lesion_id] = full if full.any() else None
    return prompts


def nearest_exact_indexes(input_size: int, output_size: int) -> np.ndarray:
    """Return the input index that ``F.interpolate(mode="nearest-exact")`` reads for each output index.

    The indexes come from torch itself, so they follow its float rounding exactly.
    """
    positions = torch.arange(input_size, dtype=torch.float64).reshape(1, 1, -1)
    return F.interpolate(positions, size=output_size, mode="nearest-exact")[0, 0].to(torch.int64).numpy()


def patch_around(centre: Triple, shape: Triple, patch_size: Triple) -> tuple[Triple, Triple]:
    """Place a patch [centre - p // 2, centre + p // 2) inside ``shape``, as the official tracker does.

    On an axis shorter than the patch the result covers the whole axis, and the
    caller pads it.
    """
    starts, stops = [], []
    for c, size, p in zip(centre, shape, patch_size):
        start, stop = c - p // 2, c + p // 2
        if start < 0:
            start, stop = 0, p
        if stop > size:
            start, stop = size - p, size
        starts.append(max(0, start))
        stops.append(stop)
    return tuple(starts), tuple(stops)


def _resized_mask_centre(mask: np.ndarray, indexes: Sequence[np.ndarray]) -> tuple[int, Triple]:
    """Return the voxel count and rounded centre of mass of ``mask[np.ix_(*indexes)]`` without building it.

    An output voxel copies the input voxel its indexes name, so each input voxel
    stands for (copies along z) x (copies along y) x (copies along x) output
    voxels, whose mean position is the mean of its copies per axis.
    """
    copies = [np.bincount(index, minlength=size).astype(np.float64) for index, size in zip(indexes, mask.shape)]
    position_sums = [np.bincount(index, weights=np.arange(index.size, dtype=np.float64), minlength=size) for index, size in zip(indexes, mask.shape)]

    weights = mask.astype(np.float64)
    count = float(np.einsum("zyx,z,y,x->", weights, *copies))
    if count == 0:
        return 0, (0, 0, 0)
    sums = [
        float(np.einsum("zyx,z,y,x->", weights, position_sums[0], copies[1], copies[2])),
        float(np.einsum("zyx,z,y,x->", weights, copies[0], position_sums[1], copies[2])),
        float(np.einsum("zyx,z,y,x->", weights, copies[0], copies[1], position_sums[2])),
    ]
    # np.round rounds halves to even, like torch.round in the official code.
    return int(round(count)), tuple(int(np.round(total / count)) for total in sums)


def _unflip_patch(start: Triple, output: torch.Tensor, shape: Triple, flip_axes: tuple[int, ...]) -> tuple[Triple, torch.Tensor]:
    """Map a patch of a flipped volume back to unflipped indexes."""
    if not flip_axes:
        return start, output
    size = output.shape[1:]
    unflipped = tuple(shape[a] - start[a] - size[a] if a in flip_axes else start[a] for a in range(3))
    return unflipped, torch.flip(output, [axis + 1 for axis in flip_axes])


def _flip(volume: torch.Tensor, flip_axes: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(volume, [axis + 2 for axis in flip_axes]) if flip_axes else volume


def _window_ranges(z_window: tuple[int, int], shape: Triple) -> list[tuple[int, int]]:
    return [z_window, (0, shape[1]), (0, shape[2])]


def _fraction_inside_window(prompt: np.ndarray, z_window: tuple[int, int]) -> float:
    per_slice = prompt.sum(axis=(1, 2))
    total = per_slice.sum()
    return float(per_slice[z_window[0] : z_window[1]].sum() / total) if total else 0.0
