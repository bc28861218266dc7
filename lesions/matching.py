"""Match the lesions of two time points on the follow-up grid.

Both label maps are numpy arrays [z, y, x] on the follow-up image's grid: the
previous time point's instance label map after warping onto that grid, and the
follow-up's own, independently segmented label map. A label value is a lesion id
and 0 is background. The ids of the two maps are independent of each other.

Matching runs in two passes:

1. Overlap. Two lesions overlap when their shared voxels make up at least
   ``MIN_OVERLAP_FRACTION`` of the smaller one. Overlapping lesions are paired one
   to one by the assignment with the largest total Dice. An unpaired previous lesion
   that overlaps a paired follow-up lesion has merged into it, and an unpaired
   follow-up lesion that overlaps a paired previous lesion has split from it.
2. Distance. Lesions left unpaired are paired one to one by the assignment with the
   smallest total centroid distance, among pairs at most ``MAX_MATCH_DISTANCE_MM``
   apart.

What remains is ``disappeared`` (previous) or ``new`` (follow-up). Distances are
in millimetres, computed from voxel indexes and the follow-up's spacing. The
direction matrix does not change distances because it is orthonormal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

MatchStatus = Literal["tracked", "new", "disappeared", "merged", "split"]
MatchMethod = Literal["overlap", "distance"]

# Shared voxels needed, as a fraction of the smaller lesion, before two lesions
# count as overlapping. Below it, a lesion that only touches the registration-blurred
# edge of a neighbour is not paired with that neighbour.
MIN_OVERLAP_FRACTION = 0.1

# Largest centroid distance at which two non-overlapping lesions are still paired.
# It covers a residual registration error of a few millimetres plus the centroid
# shift of a lesion that grows or shrinks unevenly. An estimate, not tuned on data.
MAX_MATCH_DISTANCE_MM = 20.0


@dataclass(frozen=True)
class Correspondence:
    """Previous lesions and follow-up lesions that are the same disease, and how.

    ``tracked`` pairs one with one, ``merged`` several previous lesions with one
    follow-up lesion, ``split`` one previous lesion with several follow-up lesions,
    ``disappeared`` has no follow-up lesion and ``new`` no previous lesion.
    ``dice`` and ``centroid_distance_mm`` compare the union of the previous lesions
    with the union of the follow-up lesions, and are None when one side is empty.
    """

    status: MatchStatus
    previous_ids: tuple[int, ...]
    followup_ids: tuple[int, ...]
    matched_by: MatchMethod | None
    dice: float | None
    centroid_distance_mm: float | None


@dataclass(frozen=True)
class _LesionTable:
    """Voxel counts and centroids (z, y, x, in mm from the grid origin) per lesion id."""

    ids: np.ndarray
    sizes: np.ndarray
    centroid_sums_mm: np.ndarray

    def centroid_mm(self, rows: Sequence[int]) -> np.ndarray:
        return self.centroid_sums_mm[list(rows)].sum(axis=0) / self.sizes[list(rows)].sum()


def match_lesions(
    prev_labels_warped: np.ndarray,
    followup_labels: np.ndarray,
    spacing: Sequence[float],
    max_distance_mm: float = MAX_MATCH_DISTANCE_MM,
    min_overlap_fraction: float = MIN_OVERLAP_FRACTION,
) -> list[Correspondence]:
    """Match previous lesions (warped onto the follow-up grid) with follow-up lesions.

    ``spacing`` is the follow-up's voxel spacing in ITK order (x, y, z), in mm. Only
    ids present in the label maps take part, so a previous lesion whose warped mask
    is empty (for example outside the follow-up's field of view) must be reported by
    the caller. Returns the correspondences ordered by smallest previous id, then new
    lesions by follow-up id.
    """
    _validate(prev_labels_warped, followup_labels, spacing, max_distance_mm, min_overlap_fraction)
    spacing_zyx = np.asarray(spacing, dtype=np.float64)[::-1]
    previous = _lesion_table(prev_labels_warped, spacing_zyx)
    followup = _lesion_table(followup_labels, spacing_zyx)
    shared = _shared_voxels(prev_labels_warped, followup_labels, previous.ids, followup.ids)

    overlap_groups = _match_by_overlap(previous, followup, shared, min_overlap_fraction)
    distance_groups = _match_by_distance(previous, followup, overlap_groups, max_distance_mm)
    matched = [(group, "overlap") for group in overlap_groups] + [(group, "distance") for group in distance_groups]

    unmatched_previous = set(range(len(previous.ids))) - {row for (rows, _), _ in matched for row in rows}
    unmatched_followup = set(range(len(followup.ids))) - {row for (_, rows), _ in matched for row in rows}
    matched += [(([row], []), None) for row in unmatched_previous]
    matched += [(([], [row]), None) for row in unmatched_followup]

    correspondences = [
        _describe(previous_rows, followup_rows, method, previous, followup, shared)
        for (previous_rows, followup_rows), method in matched
    ]
    return sorted(correspondences, key=_sort_key)


def _validate(
    prev_labels_warped: np.ndarray,
    followup_labels: np.ndarray,
    spacing: Sequence[float],
    max_distance_mm: float,
    min_overlap_fraction: float,
) -> None:
    for name, labels in (("prev_labels_warped", prev_labels_warped), ("followup_labels", followup_labels)):
        if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
            kind = getattr(labels, "dtype", type(labels).__name__)
            raise ValueError(f"{name} must be an integer numpy array, got {kind}")
        if labels.ndim != 3:
            raise ValueError(f"{name} must be 3D [z, y, x], got shape {labels.shape}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"{name} must not be negative, got minimum {labels.min()}")
    if prev_labels_warped.shape != followup_labels.shape:
        raise ValueError(
            f"prev_labels_warped shape {prev_labels_warped.shape} differs from followup_labels shape "
            f"{followup_labels.shape}: warp the previous labels onto the follow-up grid first"
        )
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive values (x, y, z) in mm, got {tuple(spacing)}")
    if max_distance_mm < 0:
        raise ValueError(f"max_distance_mm must not be negative, got {max_distance_mm}")
    if not 0 < min_overlap_fraction <= 1:
        raise ValueError(f"min_overlap_fraction must be in (0, 1], got {min_overlap_fraction}")


def _lesion_table(labels: np.ndarray, spacing_zyx: np.ndarray) -> _LesionTable:
    positions = np.flatnonzero(labels)
    values = labels.ravel()[positions]
    ids, rows = np.unique(values, return_inverse=True)
    sizes = np.bincount(rows, minlength=len(ids)).astype(np.float64)

    zyx_mm = np.stack(np.unravel_index(positions, labels.shape), axis=1) * spacing_zyx
    centroid_sums = np.stack(
        [np.bincount(rows, weights=zyx_mm[:, axis], minlength=len(ids)) for axis in range(3)], axis=1
    )
    return _LesionTable(ids=ids, sizes=sizes, centroid_sums_mm=centroid_sums.reshape(len(ids), 3))


def _shared_voxels(
    prev_labels: np.ndarray, followup_labels: np.ndarray, previous_ids: np.ndarray, followup_ids: np.ndarray
) -> np.ndarray:
    """Return the matrix [previous row, follow-up row] of shared voxel counts."""
    both = (prev_labels > 0) & (followup_labels > 0)
    previous_rows = np.searchsorted(previous_ids, prev_labels[both])
    followup_rows = np.searchsorted(followup_ids, followup_labels[both])
    shared = np.zeros((len(previous_ids), len(followup_ids)), dtype=np.float64)
    np.add.at(shared, (previous_rows, followup_rows), 1.0)
    return shared


def _match_by_overlap(
    previous: _LesionTable, followup: _LesionTable, shared: np.ndarray, min_overlap_fraction: float
) -> list[tuple[list[int], list[int]]]:
    """Return groups (previous rows, follow-up rows) joined by overlap."""
    smaller = np.minimum(previous.sizes[:, None], followup.sizes[None, :])
    overlapping = shared >= min_overlap_fraction * np.maximum(smaller, 1.0)
    overlapping &= shared > 0
    dice = np.where(overlapping, 2.0 * shared / (previous.sizes[:, None] + followup.sizes[None, :]), 0.0)

    previous_rows, followup_rows = linear_sum_assignment(dice, maximize=True)
    groups = {
        int(f): ([int(p)], [int(f)]) for p, f in zip(previous_rows, followup_rows) if overlapping[p, f]
    }
    paired_previous = {rows[0][0]: f for f, rows in groups.items()}

    # A lesion left over joins the group of the paired lesion it overlaps most.
    for p in range(len(previous.ids)):
        if p not in paired_previous and overlapping[p].any():
            best = _best_paired(dice[p], groups.keys())
            if best is not None:
                groups[best][0].append(p)
    for f in range(len(followup.ids)):
        if f not in groups and overlapping[:, f].any():
            best = _best_paired(dice[:, f], paired_previous.keys())
            if best is not None:
                groups[paired_previous[best]][1].append(f)
    return list(groups.values())


def _best_paired(dice_row: np.ndarray, paired_rows) -> int | None:
    candidates = [row for row in paired_rows if dice_row[row] > 0]
    if not candidates:
        return None
    return max(candidates, key=lambda row: dice_row[row])


def _match_by_distance(
    previous: _LesionTable,
    followup: _LesionTable,
    groups: list[tuple[list[int], list[int]]],
    max_distance_mm: float,
) -> list[tuple[list[int], list[int]]]:
    """Pair the lesions left out of ``groups`` by centroid distance; return ([previous row], [follow-up row])."""
    taken_previous = {row for rows, _ in groups for row in rows}
    taken_followup = {row for _, rows in groups for row in rows}
    free_previous = [row for row in range(len(previous.ids)) if row not in taken_previous]
    free_followup = [row for row in range(len(followup.ids)) if row not in taken_followup]
    if not free_previous or not free_followup:
        return []

    previous_centroids = previous.centroid_sums_mm[free_previous] / previous.sizes[free_previous, None]
    followup_centroids = followup.centroid_sums_mm[free_followup] / followup.sizes[free_followup, None]
    distance = np.linalg.norm(previous_centroids[:, None, :] - followup_centroids[None, :, :], axis=2)

    # Pairs beyond the limit cost more than any allowed set of pairs, so the
    # assignment takes them only when nothing else is left, and they are dropped.
    too_far = distance > max_distance_mm
    cost = np.where(too_far, distance.max() * (1 + distance.size) + 1.0, distance)
    rows, columns = linear_sum_assignment(cost)
    return [([free_previous[r]], [free_followup[c]]) for r, c in zip(rows, columns) if not too_far[r, c]]


def _describe(
    previous_rows: list[int],
    followup_rows: list[int],
    matched_by: MatchMethod | None,
    previous: _LesionTable,
    followup: _LesionTable,
    shared: np.ndarray,
) -> Correspondence:
    if not followup_rows:
        status = "disappeared"
    elif not previous_rows:
        status = "new"
    elif len(previous_rows) > 1:
        # NOTE: a group that also has several follow-up lesions (lesions that merged
        # and split at once) is reported as merged too.
        status = "merged"
    elif len(followup_rows) > 1:
        status = "split"
    else:
        status = "tracked"

    dice = distance = None
    if previous_rows and followup_rows:
        shared_voxels = shared[np.ix_(previous_rows, followup_rows)].sum()
        total = previous.sizes[previous_rows].sum() + followup.sizes[followup_rows].sum()
        dice = float(2.0 * shared_voxels / total)
        distance = float(np.linalg.norm(previous.centroid_mm(previous_rows) - followup.centroid_mm(followup_rows)))

    return Correspondence(
        status=status,
        previous_ids=tuple(sorted(int(previous.ids[row]) for row in previous_rows)),
        followup_ids=tuple(sorted(int(followup.ids[row]) for row in followup_rows)),
        matched_by=matched_by,
        dice=dice,
        centroid_distance_mm=distance,
    )


def _sort_key(correspondence: Correspondence) -> tuple[int, int]:
    if correspondence.previous_ids:
        return (0, correspondence.previous_ids[0])
    return (1, correspondence.followup_ids[0])
