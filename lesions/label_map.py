"""Compose per-lesion masks into one instance label map (label = lesion id)."""

from __future__ import annotations

import numpy as np


def compose_instances(masks: dict[int, np.ndarray], shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """Return the label map [z, y, x] and warnings about overlapping lesions.

    Where two lesions claim a voxel, the smaller lesion keeps it: a small
    lesion next to a large one would otherwise vanish, while the large one
    loses a sliver.
    """
    labels = np.zeros(shape, dtype=np.uint16)
    claimed = np.zeros(shape, dtype=bool)
    warnings = []

    by_size = sorted(masks.items(), key=lambda item: int(item[1].sum()), reverse=True)
    for lesion_id, mask in by_size:
        if mask.shape != tuple(shape):
            raise ValueError(f"mask of lesion {lesion_id} has shape {mask.shape}, expected {tuple(shape)}")
        overlap = mask & claimed
        if overlap.any():
            others = sorted(int(v) for v in np.unique(labels[overlap]))
            warnings.append(f"lesion {lesion_id} overlaps lesion(s) {others} in {int(overlap.sum())} voxels; the smaller lesion keeps them")
        labels[mask] = lesion_id
        claimed |= mask

    return labels, warnings
