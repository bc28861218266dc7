"""nnU-Net preprocessing of the CT: crop to non-zero, CT normalisation, resampling.

The order and arithmetic follow nnU-Net v2's DefaultPreprocessor as used by
LesionLocator:

1. Crop to the bounding box of the non-zero voxels. nnU-Net fills holes in the
   non-zero mask first, but filling holes never changes a bounding box, so it
   is skipped here. An all-zero image is not cropped.
2. Normalise in float32: clip to the 0.5/99.5 foreground percentiles of the
   training set, subtract their mean, divide by their standard deviation. This
   happens before resampling.
3. Resample trilinearly to the plans' spacing. The target size per axis is
   ``int(round(old_spacing / new_spacing * old_size))`` with Python's
   round-half-to-even.
4. If the result is smaller than the patch on some axis, pad it with zeros,
   split evenly with the odd voxel after the image (nnU-Net's ``pad_nd_image``).

Steps 2 and 3 are computed on demand for sub-regions (``PreprocessedImage``),
which gives the same numbers as processing the whole volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lesions.errors import InputError

from .plans import CTIntensityProperties, ModelPlans
from .resampling import AxisMap, linear_axis_map, resample_region

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class CaseGeometry:
    """Index spaces of one image: original, cropped, preprocessed and padded (all z, y, x)."""

    original_shape: Triple
    crop_start: Triple
    crop_stop: Triple
    preprocessed_shape: Triple
    patch_size: Triple
    # Axis maps from the cropped original grid to the preprocessed grid and back.
    forward_maps: tuple[AxisMap, AxisMap, AxisMap] = field(repr=False)
    backward_maps: tuple[AxisMap, AxisMap, AxisMap] = field(repr=False)

    @property
    def cropped_shape(self) -> Triple:
        return tuple(stop - start for start, stop in zip(self.crop_start, self.crop_stop))

    @property
    def pad_before(self) -> Triple:
        return tuple(max(0, p - s) // 2 for p, s in zip(self.patch_size, self.preprocessed_shape))

    @property
    def padded_shape(self) -> Triple:
        return tuple(max(p, s) for p, s in zip(self.patch_size, self.preprocessed_shape))

    @property
    def scale_factors(self) -> tuple[float, float, float]:
        """Preprocessed size divided by cropped size, per axis (how prompts are scaled)."""
        return tuple(p / c for p, c in zip(self.preprocessed_shape, self.cropped_shape))


def nonzero_bounding_box(image: np.ndarray) -> tuple[Triple, Triple]:
    """Return the half-open bounding box (start, stop) of the non-zero voxels, or the whole image if there are none."""
    nonzero = image != 0
    starts, stops = [], []
    for axis in range(3):
        other_axes = tuple(a for a in range(3) if a != axis)
        occupied = np.flatnonzero(nonzero.any(axis=other_axes))
        if occupied.size == 0:
            return (0, 0, 0), tuple(image.shape)
        starts.append(int(occupied[0]))
        stops.append(int(occupied[-1]) + 1)
    return tuple(starts), tuple(stops)


def target_shape(cropped_shape: Triple, spacing_zyx: tuple[float, ...], target_spacing_zyx: tuple[float, ...]) -> Triple:
    """Compute nnU-Net's resampled shape. Python's round() rounds halves to even (457.5 -> 458)."""
    return tuple(
        int(round(old_spacing / new_spacing * size))
        for old_spacing, new_spacing, size in zip(spacing_zyx, target_spacing_zyx, cropped_shape)
    )


def compute_geometry(image: np.ndarray, spacing_zyx: tuple[float, float, float], plans: ModelPlans) -> CaseGeometry:
    """Derive crop box, preprocessed shape and resampling taps for ``image`` [z, y, x]."""
    crop_start, crop_stop = nonzero_bounding_box(image)
    cropped_shape = tuple(stop - start for start, stop in zip(crop_start, crop_stop))
    preprocessed_shape = target_shape(cropped_shape, spacing_zyx, plans.spacing_zyx)
    if min(preprocessed_shape) < 1:
        raise InputError(
            "image", f"the non-zero part {cropped_shape} at spacing {spacing_zyx} resamples to the empty shape {preprocessed_shape}"
        )

    return CaseGeometry(
        original_shape=tuple(image.shape),
        crop_start=crop_start,
        crop_stop=crop_stop,
        preprocessed_shape=preprocessed_shape,
        patch_size=plans.patch_size,
        forward_maps=tuple(linear_axis_map(c, p) for c, p in zip(cropped_shape, preprocessed_shape)),
        backward_maps=tuple(linear_axis_map(p, c) for c, p in zip(cropped_shape, preprocessed_shape)),
    )


def normalize_ct(image: np.ndarray, intensity: CTIntensityProperties) -> np.ndarray:
    """Return a float32 copy clipped and z-scored like nnU-Net's CTNormalization."""
    normalized = np.clip(image.astype(np.float32), intensity.lower_bound, intensity.upper_bound)
    normalized -= np.float32(intensity.mean)
    normalized /= np.float32(max(intensity.std, 1e-8))
    return normalized


def preprocess_whole_volume(image: np.ndarray, geometry: CaseGeometry, intensity: CTIntensityProperties) -> torch.Tensor:
    """Return the whole preprocessed CT (Z, Y, X), float32, resampled by ``F.interpolate`` as nnU-Net does.

    The tracking model needs every voxel, and the same kernel as the official
    code keeps the values bit-equal, which matters once they are rounded to float16.
    """
    crop = tuple(slice(start, stop) for start, stop in zip(geometry.crop_start, geometry.crop_stop))
    normalized = torch.from_numpy(normalize_ct(image[crop], intensity))[None, None]
    resampled = F.interpolate(normalized, size=geometry.preprocessed_shape, mode="trilinear", align_corners=False, antialias=False)
    return resampled[0, 0]


class PreprocessedImage:
    """The normalised, resampled CT of one case, computed region by region.

    Regions are in preprocessed (unpadded) voxel indexes. ``materialize()``
    computes the whole volume once, which is cheaper when many regions overlap.
    """

    def __init__(self, image: np.ndarray, geometry: CaseGeometry, intensity: CTIntensityProperties):
        self.geometry = geometry
        crop = tuple(slice(start, stop) for start, stop in zip(geometry.crop_start, geometry.crop_stop))
        self._cropped = image[crop]
        self._intensity = intensity
        self._full: torch.Tensor | None = None

    def materialize(self) -> None:
        """Compute and keep the whole preprocessed volume."""
        if self._full is None:
            self._full = self._resample((0, 0, 0), self.geometry.preprocessed_shape)

    def region(self, start: Triple, stop: Triple) -> torch.Tensor:
        """Return the preprocessed voxels ``[start, stop)`` as a float32 tensor (Z, Y, X)."""
        if self._full is not None:
            return self._full[tuple(slice(a, b) for a, b in zip(start, stop))]
        return self._resample(start, stop)

    def padded_patch(self, patch_start: Triple, patch_size: Triple) -> torch.Tensor:
        """Return one network patch at ``patch_start`` in padded indexes. Voxels outside the image are 0."""
        patch = torch.zeros(patch_size, dtype=torch.float32)
        inside_start, inside_stop, offset = clip_window_to_image(patch_start, patch_size, self.geometry)
        if all(stop > start for start, stop in zip(inside_start, inside_stop)):
            target = tuple(slice(o, o + (b - a)) for o, a, b in zip(offset, inside_start, inside_stop))
            patch[target] = self.region(inside_start, inside_stop)
        return patch

    def _resample(self, start: Triple, stop: Triple) -> torch.Tensor:
        maps = self.geometry.forward_maps
        source_ranges = [axis_map.source_range(a, b) for axis_map, a, b in zip(maps, start, stop)]
        slab = self._cropped[tuple(slice(a, b) for a, b in source_ranges)]

        # Normalising only the source slab gives the same values because normalisation is voxel-wise.
        normalized = torch.from_numpy(normalize_ct(slab, self._intensity))[None]
        source_start = tuple(a for a, _ in source_ranges)
        return resample_region(normalized, source_start, maps, start, stop)[0]


def clip_window_to_image(window_start: Triple, window_size: Triple, geometry: CaseGeometry) -> tuple[Triple, Triple, Triple]:
    """Intersect a padded-space window with the image.

    Returns the intersection as (start, stop) in preprocessed indexes and its
    offset inside the window.
    """
    starts, stops, offsets = [], [], []
    for axis in range(3):
        start = window_start[axis] - geometry.pad_before[axis]
        stop = start + window_size[axis]
        clipped_start = max(0, start)
        clipped_stop = min(geometry.preprocessed_shape[axis], stop)
        starts.append(clipped_start)
        stops.append(max(clipped_start, clipped_stop))
        offsets.append(clipped_start - start)
    return tuple(starts), tuple(stops), tuple(offsets)
