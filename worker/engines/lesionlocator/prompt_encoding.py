"""Turn lesion prompts into LesionLocator's prompt channel on the preprocessed grid.

Prompts arrive as voxel indexes (x, y, z) of the original image. They are moved
into the cropped image, scaled by ``preprocessed size / cropped size`` per axis
(no half-voxel correction, as in the official code) and drawn into the extra
input channel:

- A box ``[min, max)`` becomes ``[floor(min * f), ceil(max * f))``, grown by
  one voxel on every side and clipped to the image, filled with ones.
- A point is rounded half-to-even to a voxel and becomes a ball of radius 5
  (every offset with dz² + dy² + dx² <= 5.5², 739 voxels), clipped to the image.
- A mask is resampled like an nnU-Net segmentation (trilinear on the one-hot
  mask, voxels above 0.5 kept). Its bounding box, grown by one voxel and
  clipped, becomes a box prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from lesions.errors import InputError
from lesions.prompt_types import LesionPrompt

from .preprocessing import CaseGeometry, Triple
from .resampling import resample_region

BALL_RADIUS = 5
# skimage.morphology.ball(5, strict_radius=False) keeps offsets up to radius + 0.5.
_BALL_RADIUS_SQUARED = (BALL_RADIUS + 0.5) ** 2
# Boxes are grown by this many voxels per side after scaling, as the official inference does.
BOX_GROWTH = 1


@dataclass(frozen=True)
class EncodedPrompt:
    """One prompt in preprocessed voxel indexes (z, y, x)."""

    lesion_id: int
    kind: Literal["box", "point"]
    # Half-open box for kind "box". For kind "point" the ball centre is `point`.
    box_start: Triple | None = None
    box_stop: Triple | None = None
    point: Triple | None = None

    def bounding_box(self, shape: Triple) -> tuple[Triple, Triple]:
        """Return the half-open bounding box of the drawn prompt inside an image of ``shape``."""
        if self.kind == "box":
            return self.box_start, self.box_stop
        start = tuple(max(0, c - BALL_RADIUS) for c in self.point)
        stop = tuple(min(s, c + BALL_RADIUS + 1) for c, s in zip(self.point, shape))
        return start, stop

    def render(self, window_start: Triple, window_size: Triple, image_shape: Triple) -> torch.Tensor:
        """Draw the prompt channel for a window given in preprocessed indexes.

        The window may reach outside the image (padding). Voxels there stay 0,
        like nnU-Net's zero padding.
        """
        channel = torch.zeros(window_size, dtype=torch.float32)
        if self.kind == "box":
            target = _window_slices(self.box_start, self.box_stop, window_start, window_size)
            if target is not None:
                channel[target] = 1.0
            return channel

        # The ball is clipped to the image first, then to the window.
        ball = ball_mask()
        ball_start = tuple(c - BALL_RADIUS for c in self.point)
        clipped_start, clipped_stop = self.bounding_box(image_shape)
        target = _window_slices(clipped_start, clipped_stop, window_start, window_size)
        if target is not None:
            source = tuple(
                slice(t.start + w - b, t.stop + w - b) for t, w, b in zip(target, window_start, ball_start)
            )
            channel[target] = torch.from_numpy(ball[source].astype(np.float32))
        return channel

    def as_list(self) -> list[int]:
        """Return the prompt in the official sparse-prompt order: [z0, z1, y0, y1, x0, x1] or [z, y, x]."""
        if self.kind == "box":
            return [v for pair in zip(self.box_start, self.box_stop) for v in pair]
        return list(self.point)


def encode_prompt(prompt: LesionPrompt, geometry: CaseGeometry) -> EncodedPrompt:
    """Convert one LesionPrompt into preprocessed indexes. Raise InputError if it misses the image."""
    if prompt.kind == "box":
        return encode_box(prompt, geometry)
    if prompt.kind == "point":
        return encode_point(prompt, geometry)
    if prompt.kind == "mask":
        return encode_mask(prompt, geometry)
    raise InputError("prompts", f"lesion {prompt.lesion_id} has unsupported prompt kind {prompt.kind!r}")


def encode_box(prompt: LesionPrompt, geometry: CaseGeometry) -> EncodedPrompt:
    """Scale a half-open voxel box (x, y, z) to the preprocessed grid and grow it by one voxel."""
    if prompt.box_min is None or prompt.box_max is None:
        raise InputError("prompts", f"lesion {prompt.lesion_id} is a box prompt without box_min/box_max")

    box_min_zyx = tuple(prompt.box_min[::-1])
    box_max_zyx = tuple(prompt.box_max[::-1])
    starts, stops = [], []
    for axis in range(3):
        # Move into the cropped image and clip to it.
        low = max(0.0, float(box_min_zyx[axis] - geometry.crop_start[axis]))
        high = min(float(geometry.cropped_shape[axis]), float(box_max_zyx[axis] - geometry.crop_start[axis]))
        if high <= low:
            raise InputError(
                "prompts",
                f"lesion {prompt.lesion_id}: the box lies outside the non-zero part of the image on axis {'zyx'[axis]}",
            )

        factor = geometry.scale_factors[axis]
        scaled_low = math.floor(low * factor)
        scaled_high = math.ceil(high * factor)
        starts.append(max(0, scaled_low - BOX_GROWTH))
        stops.append(min(geometry.preprocessed_shape[axis], scaled_high + BOX_GROWTH))

    return EncodedPrompt(prompt.lesion_id, "box", box_start=tuple(starts), box_stop=tuple(stops))


def encode_point(prompt: LesionPrompt, geometry: CaseGeometry) -> EncodedPrompt:
    """Scale a voxel point (x, y, z) to the preprocessed grid, rounding halves to even."""
    if prompt.point is None:
        raise InputError("prompts", f"lesion {prompt.lesion_id} is a point prompt without a point")
    if not all(math.isfinite(float(v)) for v in prompt.point):
        raise InputError("prompts", f"lesion {prompt.lesion_id} has a non-finite point {prompt.point}")

    point_zyx = tuple(float(v) for v in prompt.point[::-1])
    centre = []
    for axis in range(3):
        # Subtract the crop offset once and clip to [0, cropped size], as the official code does for boxes.
        shifted = min(float(geometry.cropped_shape[axis]), max(0.0, point_zyx[axis] - geometry.crop_start[axis]))
        centre.append(int(np.round(shifted * geometry.scale_factors[axis])))

    return EncodedPrompt(prompt.lesion_id, "point", point=tuple(centre))


def encode_mask(prompt: LesionPrompt, geometry: CaseGeometry) -> EncodedPrompt:
    """Resample a lesion mask like an nnU-Net segmentation and return its grown bounding box."""
    mask = prompt.mask
    if mask is None or tuple(mask.shape) != geometry.original_shape:
        shape = None if mask is None else tuple(mask.shape)
        raise InputError("prompts", f"lesion {prompt.lesion_id}: mask shape {shape} differs from the image {geometry.original_shape}")

    crop = tuple(slice(a, b) for a, b in zip(geometry.crop_start, geometry.crop_stop))
    cropped = np.asarray(mask[crop], dtype=bool)
    if not cropped.any():
        raise InputError("prompts", f"lesion {prompt.lesion_id}: the mask has no voxel inside the non-zero part of the image")

    resampled_start, resampled = resample_mask(cropped, geometry)
    occupied = [np.flatnonzero(resampled.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if any(indexes.size == 0 for indexes in occupied):
        # NOTE: a mask thinner than half a preprocessed voxel vanishes when resampled,
        # and the official code stops on the empty prompt. Its voxel bounding box is used instead.
        return encode_box(_mask_bounding_box_prompt(prompt, cropped, geometry), geometry)

    starts, stops = [], []
    for axis in range(3):
        first = resampled_start[axis] + int(occupied[axis][0])
        last = resampled_start[axis] + int(occupied[axis][-1])
        starts.append(max(0, first - BOX_GROWTH))
        stops.append(min(geometry.preprocessed_shape[axis] - 1, last + BOX_GROWTH) + 1)
    return EncodedPrompt(prompt.lesion_id, "box", box_start=tuple(starts), box_stop=tuple(stops))


def resample_mask(cropped_mask: np.ndarray, geometry: CaseGeometry) -> tuple[Triple, np.ndarray]:
    """Resample only the preprocessed voxels whose interpolation taps touch the mask."""
    maps = geometry.forward_maps
    occupied = [np.flatnonzero(cropped_mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    output_ranges = [m.outputs_touching(int(o[0]), int(o[-1]) + 1) for m, o in zip(maps, occupied)]
    output_start = tuple(a for a, _ in output_ranges)
    output_stop = tuple(b for _, b in output_ranges)

    source_ranges = [m.source_range(a, b) for m, (a, b) in zip(maps, output_ranges)]
    slab = cropped_mask[tuple(slice(a, b) for a, b in source_ranges)]
    one_hot = torch.from_numpy(slab.astype(np.float32))[None]
    values = resample_region(one_hot, tuple(a for a, _ in source_ranges), maps, output_start, output_stop)[0]
    return output_start, (values > 0.5).numpy()


def _mask_bounding_box_prompt(prompt: LesionPrompt, cropped_mask: np.ndarray, geometry: CaseGeometry) -> LesionPrompt:
    starts_zyx, stops_zyx = [], []
    for axis in range(3):
        occupied = np.flatnonzero(cropped_mask.any(axis=tuple(a for a in range(3) if a != axis)))
        starts_zyx.append(int(occupied[0]) + geometry.crop_start[axis])
        stops_zyx.append(int(occupied[-1]) + 1 + geometry.crop_start[axis])
    return LesionPrompt(
        lesion_id=prompt.lesion_id,
        kind="box",
        box_min=tuple(starts_zyx[::-1]),
        box_max=tuple(stops_zyx[::-1]),
        source=prompt.source,
    )


def ball_mask() -> np.ndarray:
    """Return the bool ball (11, 11, 11) drawn around a point prompt."""
    offsets = np.arange(-BALL_RADIUS, BALL_RADIUS + 1)
    dz, dy, dx = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    return dz**2 + dy**2 + dx**2 <= _BALL_RADIUS_SQUARED


def _window_slices(start: Triple, stop: Triple, window_start: Triple, window_size: Triple) -> tuple[slice, ...] | None:
    """Return the slices of a window covered by the box [start, stop), or None if they do not meet."""
    slices = []
    for axis in range(3):
        low = max(start[axis], window_start[axis]) - window_start[axis]
        high = min(stop[axis], window_start[axis] + window_size[axis]) - window_start[axis]
        if high <= low:
            return None
        slices.append(slice(low, high))
    return tuple(slices)
