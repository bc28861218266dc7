"""Track the lesions of a previous time point into a follow-up CT with any engine.

Conventions: label maps are numpy arrays [z, y, x] on their image's grid, a label
value is a lesion id and 0 is background. The follow-up is the fixed image of the
registration, so the transform maps follow-up physical points to previous physical
points (see ``worker.tracking.registration``). The follow-up label map keeps the
previous ids.

Each pair of time points is registered once. Then, for each lesion:

1. Its mask is warped onto the follow-up grid. A lesion with less than
   ``MIN_FRACTION_INSIDE_FIELD_OF_VIEW`` of its voxels inside the follow-up's field
   of view is ``outside_field_of_view``, and one whose warped mask is empty although
   it lies inside is ``not_found``. Neither is segmented.
2. The warped mask's border moves where the two images show that the lesion grew
   or shrank: see ``worker.tracking.change_refinement``. Both time points are
   read with one rule, so the volume change is free of a segmenter's own bias,
   and a scan compared with itself shows no change.
3. A lesion whose border hardly differs from the tissue around it, so that the
   images cannot show a change of it, is segmented by the engine at both time
   points instead, and the warped mask changes only where the two engine masks
   differ (``_apply_engine_change``). Each engine mask comes from a box prompt: the
   mask's bounding box, padded as a user would draw it. The box is then refitted to
   the result and the lesion segmented again, for at most ``MAX_BOX_PASSES``
   passes, so that the last box fits the lesion as a user's box would. Where the
   result reaches a face of the box inside the image, the lesion may have grown past
   it, so that face moves out.
4. Either result is kept only within ``GROWTH_ALLOWANCE_FRACTION`` of the lesion's
   size around the warped mask, so that a box that grew does not capture a neighbour.
5. A result smaller than ``MIN_VOLUME_FRACTION`` of the warped mask is
   ``disappeared``. So is a lesion whose core no longer looks like the lesion: the
   classical engine returns a mask for every box, even on healthy tissue, so the mask
   alone cannot show that a lesion is gone. On the previous image, the lesion's
   contrast is the HU median of its core minus that of a shell around it. The
   follow-up keeps a fraction of it: the HU median of the warped mask's core minus the
   same previous shell median, divided by the previous contrast. The core is the
   inner part of a mask, so a lesion that grew or shrank keeps its core.

NOTE: the engine's masks of step 3 follow their boxes more than the lesion
border, so that step misses most of a change of a few millimetres (at most a fifth
of a 3 mm growth on the synthetic follow-ups of the quality tests). None of the
eight real CT lesions there takes it. Disappearance of a lesion under
``MIN_ASSESSABLE_CONTRAST_HU`` is judged by step 2 alone, not by its core.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from lesions.prompt_types import LesionPrompt
from worker.engines.base import Engine, EngineOptions
from worker.tracking.change_refinement import connected_to, refine_by_change
from worker.tracking.registration import fraction_inside_field_of_view, register, warp_labels

logger = logging.getLogger(__name__)

TrackStatus = Literal["tracked", "disappeared", "not_found", "outside_field_of_view"]

# A lesion needs at least half of its voxels inside the follow-up's field of view to
# be segmented there. Below that, the visible part shows too little of the lesion.
MIN_FRACTION_INSIDE_FIELD_OF_VIEW = 0.5

# Lesions with a larger fraction outside the field of view get a note that their
# measurements are truncated.
NOTE_OUTSIDE_FRACTION = 0.01

# Padding of the box prompt around the warped mask, in mm on every side: about
# what a reader leaves when drawing a box around a lesion.
BOX_PADDING_MM = 3.0
# Step of a box face that the segmentation reached, as a fraction of the box's size
# along that axis (at least BOX_PADDING_MM). The face moves out by it for the next pass.
BOX_GROWTH_FRACTION = 0.25
MAX_BOX_PASSES = 3
# A box face moves in only when the mask is this many voxels further from it than the
# padding, so that the box follows a shrinking lesion but not the engine's own margin.
BOX_SHRINK_TOLERANCE_VOXELS = 1

# The follow-up mask may extend at most this fraction of the lesion's equivalent
# radius (at least MIN_GROWTH_ALLOWANCE_MM) beyond the warped mask. A 50 % increase
# in radius is a volume increase of 3.4 times.
GROWTH_ALLOWANCE_FRACTION = 0.5
MIN_GROWTH_ALLOWANCE_MM = 5.0

# A follow-up mask under this fraction of the warped mask's volume is a vanished
# lesion, not a measurement.
MIN_VOLUME_FRACTION = 0.05

# Shell around a lesion for the contrast test, in mm from its mask (inner, outer):
# beyond the partial-volume border, and close enough to be the adjacent tissue.
CONTRAST_SHELL_MM = (2.0, 6.0)
# A mask's core is its voxels at least this fraction of the mask's maximum depth
# inside it: for a sphere, the inner half of the radius.
CORE_DEPTH_FRACTION = 0.5
# Below this previous contrast, a change of contrast enhancement between the scans
# could move the medians as far as a vanished lesion would, so disappearance is not
# assessed. An estimate: the synthetic follow-ups below have no such change.
MIN_ASSESSABLE_CONTRAST_HU = 20.0
# A lesion that keeps less than this fraction of its previous contrast (or whose
# contrast changed sign) has disappeared. On follow-ups from tests/followup_generator.py
# of the four real CT lesions with at least 20 HU of contrast, lesions kept, grown or
# shrunk by 3 to 6 mm kept 0.97 to 1.01 of it, and removed ones -0.48 to 0.24.
MIN_CONTRAST_FRACTION = 0.4


@dataclass(frozen=True)
class LesionTrack:
    """Outcome for one previous lesion. Volumes are in ml; 0 where there is no mask."""

    lesion_id: int
    status: TrackStatus
    note: str
    previous_volume_ml: float
    warped_volume_ml: float
    followup_volume_ml: float
    fraction_inside_field_of_view: float


@dataclass
class TrackResult:
    """Follow-up label map [z, y, x] with the previous ids, one LesionTrack per previous
    lesion, the registration transform (follow-up to previous physical points), and the
    warped previous label map on the follow-up grid. A tracking model that registers
    on its own grid (LesionLocatorTrack) leaves the last two None."""

    followup_labels: np.ndarray
    lesions: dict[int, LesionTrack]
    transform: sitk.Transform | None
    warped_labels: np.ndarray | None


@dataclass(frozen=True)
class _Contrast:
    """HU medians of the previous lesion core, of the shell around it, and of the
    warped mask's core in the follow-up."""

    lesion_hu: float
    around_hu: float
    followup_hu: float

    @property
    def previous_hu(self) -> float:
        return self.lesion_hu - self.around_hu

    @property
    def kept_fraction(self) -> float:
        return (self.followup_hu - self.around_hu) / self.previous_hu


@dataclass(frozen=True)
class _TimePoint:
    """An image with its HU array [z, y, x] and spacing (z, y, x) in mm."""

    image: sitk.Image
    array: np.ndarray
    spacing_zyx: np.ndarray

    @classmethod
    def of(cls, image: sitk.Image) -> _TimePoint:
        return cls(image, sitk.GetArrayViewFromImage(image), np.array(image.GetSpacing()[::-1]))

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing_zyx)) / 1000.0


def track_lesions(
    prev_image: sitk.Image,
    prev_labels: np.ndarray,
    followup_image: sitk.Image,
    engine: Engine,
    transform: sitk.Transform | None = None,
    options: EngineOptions = EngineOptions(),
) -> TrackResult:
    """Find every lesion of ``prev_labels`` in ``followup_image`` and segment it there.

    ``transform`` maps follow-up physical points to previous physical points; when
    None, ``register`` computes it. Returns the follow-up label map and a LesionTrack
    per previous lesion id. Where two follow-up masks overlap, the voxel goes to the
    lesion whose warped mask contains it, else to the lower id.
    """
    started = time.perf_counter()
    if transform is None:
        transform = register(followup_image, prev_image)
    warped = warp_labels(prev_labels, prev_image, followup_image, transform)
    inside = fraction_inside_field_of_view(prev_labels, prev_image, followup_image, transform)
    previous = _TimePoint.of(prev_image)
    followup = _TimePoint.of(followup_image)
    warped_previous_hu = _warp_image(prev_image, followup_image, transform)

    tracks: dict[int, LesionTrack] = {}
    masks: dict[int, np.ndarray] = {}
    for lesion_id in sorted(inside):
        previous_mask = prev_labels == lesion_id
        warped_mask = warped == lesion_id
        status, note, mask = _track_one(
            lesion_id, previous, previous_mask, followup, warped_mask, warped_previous_hu, transform, inside[lesion_id], engine, options
        )
        tracks[lesion_id] = LesionTrack(
            lesion_id=lesion_id,
            status=status,
            note=note,
            previous_volume_ml=float(previous_mask.sum()) * previous.voxel_ml,
            warped_volume_ml=float(warped_mask.sum()) * followup.voxel_ml,
            followup_volume_ml=float(mask.sum()) * followup.voxel_ml if mask is not None else 0.0,
            fraction_inside_field_of_view=inside[lesion_id],
        )
        if mask is not None:
            masks[lesion_id] = mask

    followup_labels = _compose(masks, warped, prev_labels.dtype)
    logger.info(
        "tracking: %d lesions (%s), %.1f s",
        len(tracks),
        ", ".join(f"{lesion_id} {track.status}" for lesion_id, track in tracks.items()),
        time.perf_counter() - started,
    )
    return TrackResult(followup_labels=followup_labels, lesions=tracks, transform=transform, warped_labels=warped)


def _track_one(
    lesion_id: int,
    previous: _TimePoint,
    previous_mask: np.ndarray,
    followup: _TimePoint,
    warped_mask: np.ndarray,
    warped_previous_hu: np.ndarray,
    transform: sitk.Transform,
    inside_fraction: float,
    engine: Engine,
    options: EngineOptions,
) -> tuple[TrackStatus, str, np.ndarray | None]:
    """Return (status, note, follow-up mask or None) for one lesion."""
    if inside_fraction < MIN_FRACTION_INSIDE_FIELD_OF_VIEW:
        note = f"only {100 * inside_fraction:.0f} % of the lesion lies inside the follow-up's field of view"
        return "outside_field_of_view", note, None
    if not warped_mask.any():
        return "not_found", "the warped mask is empty: the lesion is too small for the follow-up's voxels", None

    contrast = _measure_contrast(previous, previous_mask, followup, warped_mask)
    logger.debug(
        "tracking: lesion %d contrast %+.0f HU, %.2f of it kept",
        lesion_id,
        contrast.previous_hu,
        contrast.kept_fraction,
    )
    status, note = _judge_contrast(contrast)
    if status == "disappeared":
        return status, note, None

    region = _growth_region(warped_mask, followup.spacing_zyx)
    mask = refine_by_change(followup.array, warped_previous_hu, warped_mask, region, followup.spacing_zyx)
    if mask is None:
        mask = _apply_engine_change(lesion_id, previous, previous_mask, followup, warped_mask, transform, engine, options) & region
    if mask.sum() < MIN_VOLUME_FRACTION * warped_mask.sum():
        note = f"the follow-up mask has {int(mask.sum())} voxels, under {MIN_VOLUME_FRACTION:.0%} of the warped mask"
        return "disappeared", note, None

    notes = [note] if note else []
    if inside_fraction < 1.0 - NOTE_OUTSIDE_FRACTION:
        notes.append(f"{100 * (1 - inside_fraction):.0f} % of the lesion lies outside the follow-up's field of view")
    return status, "; ".join(notes), mask


def _warp_image(prev_image: sitk.Image, followup_image: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """Return the previous image resampled onto the follow-up grid, [z, y, x] float32.

    Voxels that map outside the previous image take its lowest value (air on CT).
    """
    lowest = float(sitk.GetArrayViewFromImage(prev_image).min())
    warped = sitk.Resample(prev_image, followup_image, transform, sitk.sitkLinear, lowest, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(warped)


def _apply_engine_change(
    lesion_id: int,
    previous: _TimePoint,
    previous_mask: np.ndarray,
    followup: _TimePoint,
    warped_mask: np.ndarray,
    transform: sitk.Transform,
    engine: Engine,
    options: EngineOptions,
) -> np.ndarray:
    """Return the warped mask changed only where the engine's masks of the two time points differ.

    The engine segments the lesion at both time points from boxes fitted the same way,
    and its previous mask is warped onto the follow-up. A voxel joins where only the
    follow-up mask has it and leaves where only the warped previous mask has it, so
    the engine's own bias, the same at both time points, does not count as change.
    """
    followup_engine = _segment_with_fitted_box(lesion_id, warped_mask, followup, engine, options)
    previous_engine = _segment_with_fitted_box(lesion_id, previous_mask, previous, engine, options)
    warped_engine = warp_labels(previous_engine.astype(np.uint8), previous.image, followup.image, transform) > 0

    remaining = warped_mask & ~(warped_engine & ~followup_engine)
    grown = followup_engine & ~warped_engine & ~warped_mask
    return connected_to(remaining | grown, remaining)


def _segment_with_fitted_box(
    lesion_id: int,
    seed_mask: np.ndarray,
    timepoint: _TimePoint,
    engine: Engine,
    options: EngineOptions,
) -> np.ndarray:
    """Segment from a padded box around ``seed_mask`` on ``timepoint``'s image, then refit
    the box to the result (see ``_refit_box``) until the box no longer changes or
    ``MAX_BOX_PASSES`` is reached."""
    shape = np.array(seed_mask.shape)
    padding = np.ceil(BOX_PADDING_MM / timepoint.spacing_zyx).astype(int)
    low, high = _padded_box(seed_mask, padding)

    mask = np.zeros(seed_mask.shape, dtype=bool)
    for _ in range(MAX_BOX_PASSES):
        prompt = LesionPrompt(
            lesion_id=lesion_id,
            kind="box",
            box_min=tuple(int(v) for v in low[::-1]),
            box_max=tuple(int(v) for v in high[::-1]),
            source="tracked box",
        )
        mask = engine.segment(timepoint.image, [prompt], options, None)[lesion_id].astype(bool)
        if not mask.any():
            break
        new_low, new_high = _refit_box(mask, low, high, shape, padding)
        if np.array_equal(new_low, low) and np.array_equal(new_high, high):
            break
        low, high = new_low, new_high
    return mask


def _padded_box(mask: np.ndarray, padding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low, high = _bounding_box(mask)
    return np.maximum(low - padding, 0), np.minimum(high + padding, mask.shape)


def _refit_box(
    mask: np.ndarray, low: np.ndarray, high: np.ndarray, shape: np.ndarray, padding: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the box (low, high) for the next pass.

    A face that the mask reached moves out, unless it is an image face. A face more
    than the padding plus ``BOX_SHRINK_TOLERANCE_VOXELS`` away from the mask moves in
    to the padded mask. Other faces stay, so that an engine that segments slightly
    inside its box does not shrink the box pass after pass.
    """
    mask_low, mask_high = _bounding_box(mask)
    step = np.maximum(np.ceil(BOX_GROWTH_FRACTION * (high - low)).astype(int), padding)
    reached_low = (mask_low <= low) & (low > 0)
    reached_high = (mask_high >= high) & (high < shape)
    loose_low = mask_low - padding - BOX_SHRINK_TOLERANCE_VOXELS > low
    loose_high = mask_high + padding + BOX_SHRINK_TOLERANCE_VOXELS < high

    new_low = np.where(reached_low, low - step, np.where(loose_low, mask_low - padding, low))
    new_high = np.where(reached_high, high + step, np.where(loose_high, mask_high + padding, high))
    return np.maximum(new_low, 0), np.minimum(new_high, shape)


def _growth_region(warped_mask: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Return the voxels within the growth allowance of the warped mask."""
    volume_mm3 = warped_mask.sum() * np.prod(spacing_zyx)
    radius_mm = (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
    allowance_mm = max(GROWTH_ALLOWANCE_FRACTION * radius_mm, MIN_GROWTH_ALLOWANCE_MM)

    crop = _crop_around(warped_mask, allowance_mm, spacing_zyx)
    region = np.zeros(warped_mask.shape, dtype=bool)
    region[crop] = ndimage.distance_transform_edt(~warped_mask[crop], sampling=spacing_zyx) <= allowance_mm
    return region


def _measure_contrast(
    previous: _TimePoint, previous_mask: np.ndarray, followup: _TimePoint, warped_mask: np.ndarray
) -> _Contrast:
    lesion_hu = float(np.median(previous.array[_core(previous_mask, previous.spacing_zyx)]))
    crop = _crop_around(previous_mask, CONTRAST_SHELL_MM[1], previous.spacing_zyx)
    outside_mm = ndimage.distance_transform_edt(~previous_mask[crop], sampling=previous.spacing_zyx)
    shell = (outside_mm >= CONTRAST_SHELL_MM[0]) & (outside_mm <= CONTRAST_SHELL_MM[1])
    around_hu = float(np.median(previous.array[crop][shell]))
    followup_hu = float(np.median(followup.array[_core(warped_mask, followup.spacing_zyx)]))
    return _Contrast(lesion_hu=lesion_hu, around_hu=around_hu, followup_hu=followup_hu)


def _core(mask: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Return the voxels of a non-empty mask at least ``CORE_DEPTH_FRACTION`` of its maximum depth inside it."""
    crop = _crop_around(mask, 0.0, spacing_zyx)
    depth_mm = ndimage.distance_transform_edt(mask[crop], sampling=spacing_zyx)
    core = np.zeros(mask.shape, dtype=bool)
    core[crop] = depth_mm >= CORE_DEPTH_FRACTION * depth_mm.max()
    return core


def _judge_contrast(contrast: _Contrast) -> tuple[TrackStatus, str]:
    """Decide from the HU contrast whether the lesion is still there; return (status, note)."""
    if abs(contrast.previous_hu) < MIN_ASSESSABLE_CONTRAST_HU:
        note = (
            f"previous contrast {contrast.previous_hu:+.0f} HU is too low to judge from the lesion core "
            "whether it disappeared; only the change of its border is measured"
        )
        return "tracked", note
    if contrast.kept_fraction < MIN_CONTRAST_FRACTION:
        note = (
            f"the warped lesion core measures {contrast.followup_hu:+.0f} HU, where the lesion core measured "
            f"{contrast.lesion_hu:+.0f} HU and the tissue around it {contrast.around_hu:+.0f} HU"
        )
        return "disappeared", note
    return "tracked", ""


def _crop_around(mask: np.ndarray, margin_mm: float, spacing_zyx: np.ndarray) -> tuple[slice, slice, slice]:
    """Return the [z, y, x] slices of the bounding box of a non-empty mask grown by
    ``margin_mm`` plus one voxel, clipped to the array."""
    margin = np.ceil(margin_mm / spacing_zyx).astype(int) + 1
    low, high = _bounding_box(mask)
    low = np.maximum(low - margin, 0)
    high = np.minimum(high + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the half-open bounding box (low, high) [z, y, x] of a non-empty mask."""
    indexes = np.argwhere(mask)
    return indexes.min(axis=0), indexes.max(axis=0) + 1


def _compose(masks: dict[int, np.ndarray], warped: np.ndarray, dtype: np.dtype) -> np.ndarray:
    labels = np.zeros(warped.shape, dtype=dtype)
    claims = np.zeros(warped.shape, dtype=np.int32)
    for lesion_id in sorted(masks, reverse=True):
        labels[masks[lesion_id]] = lesion_id
        claims += masks[lesion_id]
    contested = claims > 1
    for lesion_id in masks:
        labels[contested & masks[lesion_id] & (warped == lesion_id)] = lesion_id
    return labels
