"""Match the z ranges of two scans that cover different lengths of the body.

The registration network receives each image squeezed to 175 voxels per axis, so a
follow-up that covers far fewer slices than the baseline would be stretched
against it. When the z sizes differ by more than ``Z_DIFFERENCE_THRESHOLD``
preprocessed voxels, LesionLocatorTrack first slides the shorter image along
the longer one, both resized in-plane to 175 x 175. It then crops the longer
one to the window with the lowest mean squared error.

The official code tries offsets ``0 .. difference - 1`` and so never the last
one. Here every offset ``0 .. difference`` is tried. ``include_last_offset=False``
reproduces the official choice, for parity checks only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Preprocessed voxels (1 mm at the official spacing) of z-size difference that trigger the search.
Z_DIFFERENCE_THRESHOLD = 20


@dataclass(frozen=True)
class ZWindows:
    """Half-open z ranges [start, stop) of the baseline and follow-up that go into the registration."""

    baseline: tuple[int, int]
    followup: tuple[int, int]


def find_z_windows(
    baseline: torch.Tensor, followup: torch.Tensor, in_plane_size: tuple[int, int], include_last_offset: bool = True
) -> ZWindows:
    """Choose the z windows of two volumes (1, 1, Z, Y, X).

    Returns the full ranges when the z sizes differ by at most the threshold.
    The first offset with the lowest error wins.
    """
    baseline_z, followup_z = baseline.shape[2], followup.shape[2]
    if abs(baseline_z - followup_z) <= Z_DIFFERENCE_THRESHOLD:
        return ZWindows(baseline=(0, baseline_z), followup=(0, followup_z))

    baseline_small = F.interpolate(baseline, size=(baseline_z, *in_plane_size), mode="trilinear", align_corners=False)
    followup_small = F.interpolate(followup, size=(followup_z, *in_plane_size), mode="trilinear", align_corners=False)
    shorter, longer = (baseline_small, followup_small) if baseline_z < followup_z else (followup_small, baseline_small)

    length = shorter.shape[2]
    difference = longer.shape[2] - length
    last_offset = difference if include_last_offset else difference - 1
    errors = [F.mse_loss(shorter, longer[:, :, offset : offset + length]) for offset in range(last_offset + 1)]
    best = int(torch.argmin(torch.stack(errors)))

    if baseline_z < followup_z:
        return ZWindows(baseline=(0, baseline_z), followup=(best, best + length))
    return ZWindows(baseline=(best, best + length), followup=(0, followup_z))
