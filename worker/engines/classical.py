"""The ``classical`` engine: box and point segmentation without learned weights.

It runs on the CPU and needs no checkpoint, so it is always ready.
``classical_segmentation`` describes the method and where it fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from lesions.errors import InputError
from lesions.prompt_types import LesionPrompt
from worker.engines import classical_segmentation
from worker.engines.base import EngineOptions, EngineStatus, ProgressCallback

logger = logging.getLogger(__name__)

# Components of a mask prompt smaller than this fraction of its largest component
# are specks or touching neighbours, not part of the lesion being tracked.
MASK_PROMPT_MIN_COMPONENT_FRACTION = 0.1


class ClassicalEngine:
    """Engine that combines an ellipsoid shape prior with an HU intensity model around each prompt."""

    name = "classical"

    def status(self) -> EngineStatus:
        return EngineStatus(
            name=self.name,
            ready=True,
            device="cpu",
            detail="ellipsoid shape prior and HU histograms, no learned weights",
        )

    def segment(
        self,
        image: sitk.Image,
        prompts: Sequence[LesionPrompt],
        options: EngineOptions,
        progress: ProgressCallback | None = None,
    ) -> dict[int, np.ndarray]:
        """Segment each prompted lesion and return {lesion_id: bool array [z, y, x]} on the grid of ``image``.

        None of the ``options`` apply to this engine.
        """
        _check_image(image)
        _check_unique_ids(prompts)
        volume = sitk.GetArrayViewFromImage(image)
        spacing_zyx = tuple(float(s) for s in reversed(image.GetSpacing()))

        masks = {}
        for done, prompt in enumerate(prompts, start=1):
            started = time.perf_counter()
            masks[prompt.lesion_id] = _segment_prompt(volume, spacing_zyx, prompt)
            logger.debug(
                "classical: lesion %d (%s) segmented, %d voxels, %.2f s",
                prompt.lesion_id,
                prompt.kind,
                int(masks[prompt.lesion_id].sum()),
                time.perf_counter() - started,
            )
            if progress is not None:
                progress(done / len(prompts))
        return masks


def _segment_prompt(volume: np.ndarray, spacing_zyx: tuple[float, ...], prompt: LesionPrompt) -> np.ndarray:
    if prompt.kind == "box":
        low, high = _box_bounds(prompt, volume.shape)
        return classical_segmentation.segment_box(volume, spacing_zyx, low, high)

    if prompt.kind == "point":
        return classical_segmentation.segment_point(volume, spacing_zyx, _point_index(prompt, volume.shape))

    if prompt.kind == "mask":
        mask = _mask_array(prompt, volume.shape)
        return classical_segmentation.keep_main_components(mask, MASK_PROMPT_MIN_COMPONENT_FRACTION)

    raise InputError("prompts", f"lesion {prompt.lesion_id}: unknown prompt kind {prompt.kind!r}. Use box, point or mask.")


def _box_bounds(prompt: LesionPrompt, shape_zyx: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return the box as (low, high) in [z, y, x] order, clipped to the image."""
    if prompt.box_min is None or prompt.box_max is None:
        raise InputError("prompts", f"lesion {prompt.lesion_id}: box prompt is missing box_min or box_max")

    low = tuple(max(int(value), 0) for value in reversed(prompt.box_min))
    high = tuple(min(int(value), size) for value, size in zip(reversed(prompt.box_max), shape_zyx))
    if any(h <= l for l, h in zip(low, high)):
        raise InputError(
            "prompts",
            f"lesion {prompt.lesion_id}: {prompt.describe()} is empty or outside the image "
            f"of size (x, y, z) {tuple(reversed(shape_zyx))}. Draw the box on the image.",
        )
    return low, high


def _point_index(prompt: LesionPrompt, shape_zyx: tuple[int, ...]) -> tuple[float, ...]:
    """Return the point as a fractional index (z, y, x), checked to lie inside the image."""
    if prompt.point is None:
        raise InputError("prompts", f"lesion {prompt.lesion_id}: point prompt is missing its point")

    point_zyx = tuple(float(value) for value in reversed(prompt.point))
    # Voxel indexes address voxel centres, so the image spans [-0.5, size - 0.5] on each axis.
    if any(not -0.5 <= value <= size - 0.5 for value, size in zip(point_zyx, shape_zyx)):
        raise InputError(
            "prompts",
            f"lesion {prompt.lesion_id}: {prompt.describe()} is outside the image "
            f"of size (x, y, z) {tuple(reversed(shape_zyx))}",
        )
    return tuple(min(max(value, 0.0), size - 1.0) for value, size in zip(point_zyx, shape_zyx))


def _mask_array(prompt: LesionPrompt, shape_zyx: tuple[int, ...]) -> np.ndarray:
    if prompt.mask is None:
        raise InputError("prompts", f"lesion {prompt.lesion_id}: mask prompt is missing its mask")
    mask = np.asarray(prompt.mask).astype(bool, copy=False)
    if mask.shape != tuple(shape_zyx):
        raise InputError(
            "prompts",
            f"lesion {prompt.lesion_id}: mask shape (z, y, x) {mask.shape} does not match "
            f"the image shape {tuple(shape_zyx)}. Resample the mask onto the image grid.",
        )
    return mask


def _check_image(image: sitk.Image) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            "image",
            f"expected a 3D scalar CT volume, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel",
        )


def _check_unique_ids(prompts: Sequence[LesionPrompt]) -> None:
    ids = [prompt.lesion_id for prompt in prompts]
    duplicates = sorted({lesion_id for lesion_id in ids if ids.count(lesion_id) > 1})
    if duplicates:
        raise InputError("prompts", f"lesion ids {duplicates} appear more than once. Give each lesion its own id.")
