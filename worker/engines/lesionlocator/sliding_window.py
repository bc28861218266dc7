"""Patch placement around a prompt and Gaussian blending of the patch predictions.

Placement follows LesionLocator. With the prompt's bounding box given by its
first and last voxel (inclusive), a prompt smaller than the patch on every
axis gets one patch centred on it: ``start = int((first + last - patch) / 2)``,
clipped to the image. A larger prompt gets every tile of nnU-Net's sliding
window grid (step = half a patch) that overlaps it, where a tile overlaps when
``first < tile_stop and last > tile_start``.

Blending weights each patch with a Gaussian (sigma = patch / 8, maximum 10)
and divides by the summed weights. Unlike the official code, which accumulates
in float16, this accumulates in float32 on every device.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from .preprocessing import Triple

TILE_STEP_FRACTION = 0.5
GAUSSIAN_SIGMA_FRACTION = 1.0 / 8
GAUSSIAN_PEAK = 10.0


def sliding_window_starts(image_size: int, patch_size: int, step_fraction: float = TILE_STEP_FRACTION) -> list[int]:
    """Return nnU-Net's tile starts along one axis: evenly spread, first at 0, last flush with the end."""
    if image_size < patch_size:
        raise ValueError(f"image size {image_size} is smaller than the patch {patch_size}. Pad it to the patch size first.")

    target_step = patch_size * step_fraction
    num_steps = math.ceil((image_size - patch_size) / target_step) + 1
    if num_steps == 1:
        return [0]

    actual_step = (image_size - patch_size) / (num_steps - 1)
    # np.round rounds halves to even, as nnU-Net does (90.5 -> 90).
    return [int(np.round(actual_step * i)) for i in range(num_steps)]


def select_patch_starts(
    prompt_first: Triple, prompt_last: Triple, padded_shape: Triple, patch_size: Triple
) -> list[Triple]:
    """Return the patch starts (padded indexes) that LesionLocator predicts for one prompt.

    ``prompt_first`` and ``prompt_last`` are the inclusive bounds of the drawn prompt.
    """
    if all(last - first < patch for first, last, patch in zip(prompt_first, prompt_last, patch_size)):
        start = []
        for first, last, patch, size in zip(prompt_first, prompt_last, patch_size, padded_shape):
            # int() truncates toward zero, as in the official code.
            centred = int((first + last - patch) / 2)
            start.append(min(max(centred, 0), size - patch))
        return [tuple(start)]

    overlapping = []
    for first, last, patch, size in zip(prompt_first, prompt_last, patch_size, padded_shape):
        starts = sliding_window_starts(size, patch)
        selected = [s for s in starts if first < s + patch and last > s]
        # Under the official rule a prompt whose last voxel is 0 overlaps no tile.
        overlapping.append(selected or [s for s in starts if first < s + patch and last >= s])

    return [(z, y, x) for z in overlapping[0] for y in overlapping[1] for x in overlapping[2]]


@lru_cache(maxsize=4)
def gaussian_importance_map(patch_size: Triple) -> torch.Tensor:
    """Return the float32 blending weights of one patch. Every weight is positive."""
    impulse = np.zeros(patch_size, dtype=np.float64)
    impulse[tuple(size // 2 for size in patch_size)] = 1.0
    sigmas = [size * GAUSSIAN_SIGMA_FRACTION for size in patch_size]
    weights = gaussian_filter(impulse, sigmas, order=0, mode="constant", cval=0.0)

    weights = weights / weights.max() * GAUSSIAN_PEAK
    weights = weights.astype(np.float32)

    # A zero weight would leave voxels with 0/0 at patch corners.
    positive = weights > 0
    weights[~positive] = weights[positive].min()
    return torch.from_numpy(weights)


class PatchBlender:
    """Gaussian-weighted average of patch logits over the box the patches cover.

    ``start`` and ``stop`` are in padded indexes. The patches of one prompt form
    a full grid, so every voxel of the box is covered by at least one patch.
    """

    def __init__(self, start: Triple, stop: Triple, num_classes: int):
        self.start = start
        self.stop = stop
        size = tuple(b - a for a, b in zip(start, stop))
        self._weighted_sum = torch.zeros((num_classes, *size), dtype=torch.float32)
        self._weight_sum = torch.zeros(size, dtype=torch.float32)

    def add(self, patch_start: Triple, logits: torch.Tensor) -> None:
        """Accumulate the logits (classes, *patch) of the patch at ``patch_start``."""
        weights = gaussian_importance_map(tuple(logits.shape[1:]))
        target = tuple(
            slice(p - s, p - s + n) for p, s, n in zip(patch_start, self.start, logits.shape[1:])
        )
        self._weighted_sum[(slice(None), *target)] += logits.to(torch.float32) * weights
        self._weight_sum[target] += weights

    def logits(self) -> torch.Tensor:
        """Return the blended logits (classes, *box size), float32."""
        return self._weighted_sum / self._weight_sum


def covering_box(patch_starts: list[Triple], patch_size: Triple) -> tuple[Triple, Triple]:
    """Return the half-open box spanned by the patches."""
    start = tuple(min(s[axis] for s in patch_starts) for axis in range(3))
    stop = tuple(max(s[axis] for s in patch_starts) + patch_size[axis] for axis in range(3))
    return start, stop
