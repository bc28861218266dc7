"""Average the tracking model's patch outputs and turn them into a mask on the follow-up's grid.

The official tracker writes each pass's U-Net output into a full-size logit
volume that is (1, 0), certain background, everywhere outside the patch, averages
the passes (test-time flips, folds) and exports that volume like a segmentation.
Here only the box that the patches cover is kept. Outside it the value is the
same constant (1, 0), so the export reads that constant wherever an
interpolation tap falls outside the box, and gives the same mask.
"""

from __future__ import annotations

import numpy as np
import torch

from .preprocessing import CaseGeometry, Triple
from .resampling import resample_region

# Logits (background, lesion) of the voxels outside every patch.
OUTSIDE_LOGITS = (1.0, 0.0)


class PatchAverage:
    """Running mean of full-volume logits that differ from ``OUTSIDE_LOGITS`` only inside patches.

    Positions are preprocessed voxel indexes (z, y, x) of the follow-up.
    """

    def __init__(self) -> None:
        self._patches: list[tuple[Triple, torch.Tensor]] = []

    @property
    def count(self) -> int:
        return len(self._patches)

    def add(self, start: Triple, logits: torch.Tensor) -> None:
        """Add one pass's logits (classes, *patch size) placed at ``start``."""
        self._patches.append((start, logits.to(torch.float32).cpu()))

    def mean(self) -> tuple[Triple, torch.Tensor]:
        """Return the start and the mean logits over the box that all patches cover."""
        starts = np.array([start for start, _ in self._patches])
        stops = np.array([[s + n for s, n in zip(start, logits.shape[1:])] for start, logits in self._patches])
        box_start = tuple(int(v) for v in starts.min(axis=0))
        box_size = tuple(int(v) for v in stops.max(axis=0) - np.array(box_start))

        # mean = outside + sum(patch - outside) / count, because every pass is `outside` where it has no patch.
        outside = torch.tensor(OUTSIDE_LOGITS, dtype=torch.float32).reshape(-1, 1, 1, 1)
        total = torch.zeros((len(OUTSIDE_LOGITS), *box_size), dtype=torch.float32)
        for start, logits in self._patches:
            region = tuple(slice(s - b, s - b + n) for s, b, n in zip(start, box_start, logits.shape[1:]))
            total[(slice(None), *region)] += logits - outside
        return box_start, outside + total / len(self._patches)


def tracked_logits_to_mask(box_start: Triple, logits: torch.Tensor, geometry: CaseGeometry) -> np.ndarray:
    """Return the bool mask [z, y, x] on the follow-up's original grid from logits over a box of the preprocessed grid."""
    mask = np.zeros(geometry.original_shape, dtype=bool)
    box_stop = tuple(s + n for s, n in zip(box_start, logits.shape[1:]))

    # Only original voxels that read a tap inside the box can differ from background.
    maps = geometry.backward_maps
    output_ranges = [m.outputs_touching(a, b) for m, a, b in zip(maps, box_start, box_stop)]
    if any(stop <= start for start, stop in output_ranges):
        return mask
    source_ranges = [m.source_range(a, b) for m, (a, b) in zip(maps, output_ranges)]

    source = torch.tensor(OUTSIDE_LOGITS, dtype=torch.float32).reshape(-1, 1, 1, 1).repeat(1, *(b - a for a, b in source_ranges))
    common = [(max(a, s), min(b, t)) for a, b, (s, t) in zip(box_start, box_stop, source_ranges)]
    target = tuple(slice(low - s, high - s) for (low, high), (s, _) in zip(common, source_ranges))
    selected = tuple(slice(low - a, high - a) for (low, high), a in zip(common, box_start))
    source[(slice(None), *target)] = logits[(slice(None), *selected)]

    output_start = tuple(a for a, _ in output_ranges)
    output_stop = tuple(b for _, b in output_ranges)
    resampled = resample_region(source, tuple(s for s, _ in source_ranges), maps, output_start, output_stop)

    # torch.argmax returns the first maximum, so ties stay background, as in the official export.
    foreground = (resampled.argmax(dim=0) > 0).numpy()
    placement = tuple(slice(crop + a, crop + b) for crop, a, b in zip(geometry.crop_start, output_start, output_stop))
    mask[placement] = foreground
    return mask
