"""Trilinear resampling of sub-regions, matching ``torch.nn.functional.interpolate``.

nnU-Net resamples whole volumes with ``F.interpolate(mode="trilinear",
align_corners=False, antialias=False)`` to an explicit output size. Only the
voxels the network patches need are computed here, so the whole volume is never
resampled. Trilinear interpolation is separable: output voxel ``o`` along an
axis of input size ``n_in`` and output size ``n_out`` reads input voxels
``i0`` and ``i1`` with weights ``w0`` and ``w1``::

    scale = n_in / n_out                    (float32, as torch computes it)
    src   = max(scale * (o + 0.5) - 0.5, 0)
    i0    = min(floor(src), n_in - 1);  i1 = i0 + 1 if i0 < n_in - 1 else i0
    w1    = clamp(src - i0, 0, 1);      w0 = 1 - w1

Interpolating the three axes one after another gives the same values as the
torch kernel up to float32 rounding (about 1e-6 relative).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AxisMap:
    """Input taps and weights of every output voxel along one axis."""

    index0: np.ndarray  # int64, shape (n_out,)
    index1: np.ndarray
    weight0: np.ndarray  # float32
    weight1: np.ndarray

    @property
    def output_size(self) -> int:
        return int(self.index0.shape[0])

    def source_range(self, start: int, stop: int) -> tuple[int, int]:
        """Return the half-open input range read by outputs ``[start, stop)``."""
        return int(self.index0[start]), int(self.index1[stop - 1]) + 1

    def outputs_touching(self, source_start: int, source_stop: int) -> tuple[int, int]:
        """Return the half-open output range whose taps touch inputs ``[source_start, source_stop)``.

        The range is empty (start == stop) when no output reads those inputs.
        """
        touching = np.flatnonzero((self.index1 >= source_start) & (self.index0 < source_stop))
        return _first_and_last(touching)

    def outputs_inside(self, source_start: int, source_stop: int) -> tuple[int, int]:
        """Return the half-open output range whose non-zero-weight taps all lie in ``[source_start, source_stop)``.

        The range is empty (start == stop) when no output qualifies.
        """
        tap0_inside = (self.weight0 == 0) | ((self.index0 >= source_start) & (self.index0 < source_stop))
        tap1_inside = (self.weight1 == 0) | ((self.index1 >= source_start) & (self.index1 < source_stop))
        return _first_and_last(np.flatnonzero(tap0_inside & tap1_inside))


def _first_and_last(indexes: np.ndarray) -> tuple[int, int]:
    # The qualifying outputs of an interval of inputs are contiguous.
    if indexes.size == 0:
        return 0, 0
    return int(indexes[0]), int(indexes[-1]) + 1


def linear_axis_map(input_size: int, output_size: int) -> AxisMap:
    """Compute the taps of ``F.interpolate(..., align_corners=False)`` along one axis."""
    scale = np.float32(input_size) / np.float32(output_size)
    output_index = np.arange(output_size, dtype=np.float32)
    source = scale * (output_index + np.float32(0.5)) - np.float32(0.5)
    source = np.maximum(source, np.float32(0))

    index0 = np.minimum(np.floor(source).astype(np.int64), input_size - 1)
    index1 = np.where(index0 < input_size - 1, index0 + 1, index0)
    weight1 = np.clip(source - index0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    weight0 = (np.float32(1) - weight1).astype(np.float32)
    return AxisMap(index0=index0, index1=index1, weight0=weight0, weight1=weight1)


def resample_region(
    source: torch.Tensor,
    source_start: tuple[int, int, int],
    axis_maps: tuple[AxisMap, AxisMap, AxisMap],
    output_start: tuple[int, int, int],
    output_stop: tuple[int, int, int],
) -> torch.Tensor:
    """Interpolate the output voxels ``[output_start, output_stop)`` of a full-volume resampling.

    ``source`` has shape (C, Z, Y, X) and contains the input volume from index
    ``source_start`` on. It must contain every input voxel those outputs read
    (see ``AxisMap.source_range``). Returns a float32 tensor (C, *output size).
    """
    result = source.to(torch.float32)

    # Start with the axis that shrinks most, so later passes touch fewer voxels.
    shrink = [((output_stop[axis] - output_start[axis]) / max(1, source.shape[axis + 1]), axis) for axis in range(3)]
    for _, axis in sorted(shrink):
        result = _interpolate_axis(result, axis, source_start[axis], axis_maps[axis], output_start[axis], output_stop[axis])
    return result


def _interpolate_axis(
    volume: torch.Tensor, axis: int, volume_start: int, axis_map: AxisMap, output_start: int, output_stop: int
) -> torch.Tensor:
    dim = axis + 1
    selection = slice(output_start, output_stop)
    index0 = torch.from_numpy(axis_map.index0[selection] - volume_start)
    index1 = torch.from_numpy(axis_map.index1[selection] - volume_start)
    if index0.numel() and (int(index0.min()) < 0 or int(index1.max()) >= volume.shape[dim]):
        raise ValueError(f"source region does not cover the taps of outputs {output_start}..{output_stop} on axis {axis}")

    # Broadcast the weights along the interpolated dimension.
    shape = [1] * volume.ndim
    shape[dim] = output_stop - output_start
    weight0 = torch.from_numpy(axis_map.weight0[selection]).to(volume.device).reshape(shape)
    weight1 = torch.from_numpy(axis_map.weight1[selection]).to(volume.device).reshape(shape)

    lower = volume.index_select(dim, index0.to(volume.device))
    upper = volume.index_select(dim, index1.to(volume.device))
    return lower * weight0 + upper * weight1
