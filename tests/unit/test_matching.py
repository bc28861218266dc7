"""Lesion matching between two label maps on the follow-up grid."""

from __future__ import annotations

import numpy as np
import pytest

from lesions.matching import MAX_MATCH_DISTANCE_MM, match_lesions

SHAPE = (20, 40, 40)
SPACING = (1.0, 1.0, 2.0)  # x, y, z in mm


def blank() -> np.ndarray:
    return np.zeros(SHAPE, dtype=np.int32)


def paint_box(labels: np.ndarray, lesion_id: int, low_zyx, high_zyx) -> np.ndarray:
    labels[tuple(slice(a, b) for a, b in zip(low_zyx, high_zyx))] = lesion_id
    return labels


def by_status(correspondences) -> dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    table: dict[str, list] = {}
    for item in correspondences:
        table.setdefault(item.status, []).append((item.previous_ids, item.followup_ids))
    return table


def test_match_overlapping_lesions_tracked():
    previous = paint_box(blank(), 3, (5, 5, 5), (10, 15, 15))
    paint_box(previous, 7, (5, 25, 25), (10, 35, 35))
    followup = paint_box(blank(), 1, (5, 6, 6), (10, 16, 16))
    paint_box(followup, 2, (5, 24, 24), (10, 34, 34))

    result = match_lesions(previous, followup, SPACING)

    assert by_status(result) == {"tracked": [((3,), (1,)), ((7,), (2,))]}
    assert all(item.matched_by == "overlap" for item in result)
    assert result[0].dice == pytest.approx(2 * 5 * 9 * 9 / (2 * 500))
    assert result[0].centroid_distance_mm == pytest.approx(np.sqrt(2.0))


def test_match_new_and_disappeared():
    previous = paint_box(blank(), 1, (5, 5, 5), (10, 10, 10))
    followup = paint_box(blank(), 4, (5, 30, 30), (10, 35, 35))

    result = match_lesions(previous, followup, SPACING)

    assert by_status(result) == {"disappeared": [((1,), ())], "new": [((), (4,))]}
    assert all(item.dice is None and item.matched_by is None for item in result)


def test_match_by_distance_within_limit():
    previous = paint_box(blank(), 1, (5, 5, 5), (8, 8, 8))
    followup = paint_box(blank(), 2, (5, 5, 12), (8, 8, 15))  # 7 mm to the side, no overlap

    result = match_lesions(previous, followup, SPACING)

    assert by_status(result) == {"tracked": [((1,), (2,))]}
    assert result[0].matched_by == "distance"
    assert result[0].dice == 0.0
    assert result[0].centroid_distance_mm == pytest.approx(7.0)


def test_match_by_distance_respects_limit():
    previous = paint_box(blank(), 1, (5, 5, 5), (8, 8, 8))
    followup = paint_box(blank(), 2, (5, 5, 12), (8, 8, 15))

    result = match_lesions(previous, followup, SPACING, max_distance_mm=6.9)

    assert by_status(result) == {"disappeared": [((1,), ())], "new": [((), (2,))]}


def test_match_distance_uses_spacing_in_mm():
    previous = paint_box(blank(), 1, (2, 5, 5), (4, 8, 8))
    # 11 slices of 2 mm: 22 mm apart along z, beyond the default limit.
    followup = paint_box(blank(), 2, (13, 5, 5), (15, 8, 8))

    result = match_lesions(previous, followup, SPACING)

    assert MAX_MATCH_DISTANCE_MM < 22.0
    assert by_status(result) == {"disappeared": [((1,), ())], "new": [((), (2,))]}


def test_match_distance_assignment_is_optimal():
    # A greedy match would pair previous 1 with follow-up 10 (4 mm) and leave
    # previous 2 with follow-up 11 (17 mm). The smallest total pairs 1-11 and 2-10.
    previous = paint_box(blank(), 1, (5, 5, 10), (6, 6, 11))
    paint_box(previous, 2, (5, 5, 18), (6, 6, 19))
    followup = paint_box(blank(), 10, (5, 5, 14), (6, 6, 15))
    paint_box(followup, 11, (5, 5, 1), (6, 6, 2))

    result = match_lesions(previous, followup, SPACING)

    assert by_status(result) == {"tracked": [((1,), (11,)), ((2,), (10,))]}
    assert [item.centroid_distance_mm for item in result] == pytest.approx([9.0, 4.0])


def test_match_overlap_beats_distance():
    # Follow-up 5 overlaps previous 2, although its centroid is closer to previous 1.
    previous = paint_box(blank(), 1, (5, 10, 3), (8, 13, 6))
    paint_box(previous, 2, (5, 10, 8), (8, 13, 20))
    followup = paint_box(blank(), 5, (5, 10, 8), (8, 13, 11))

    result = match_lesions(previous, followup, SPACING)

    assert by_status(result) == {"disappeared": [((1,), ())], "tracked": [((2,), (5,))]}


def test_match_merged_lesions():
    previous = paint_box(blank(), 1, (5, 10, 5), (10, 20, 14))
    paint_box(previous, 2, (5, 10, 16), (10, 20, 25))
    followup = paint_box(blank(), 9, (5, 10, 5), (10, 20, 25))

    result = match_lesions(previous, followup, SPACING)

    assert by_status(result) == {"merged": [((1, 2), (9,))]}
    assert result[0].dice == pytest.approx(2 * 900 / (900 + 1000))


def test_match_split_lesion():
    previous = paint_box(blank(), 4, (5, 10, 5), (10, 20, 25))
    followup = paint_box(blank(), 1, (5, 10, 5), (10, 20, 13))
    paint_box(followup, 2, (5, 10, 17), (10, 20, 25))

    result = match_lesions(previous, followup, SPACING)

    assert by_status(result) == {"split": [((4,), (1, 2))]}


def test_match_touching_neighbour_is_not_overlap():
    # Follow-up 2 shares 1 of its 101 voxels with previous 1, under the overlap
    # fraction, so it does not split from previous 1 and is new.
    previous = paint_box(blank(), 1, (5, 5, 5), (10, 15, 15))
    followup = paint_box(blank(), 3, (5, 5, 5), (10, 15, 15))
    paint_box(followup, 2, (5, 15, 15), (9, 20, 20))
    followup[5, 14, 14] = 2

    result = match_lesions(previous, followup, SPACING)

    assert by_status(result) == {"tracked": [((1,), (3,))], "new": [((), (2,))]}


def test_match_empty_maps():
    assert match_lesions(blank(), blank(), SPACING) == []


def test_match_only_previous():
    previous = paint_box(blank(), 6, (5, 5, 5), (7, 7, 7))

    result = match_lesions(previous, blank(), SPACING)

    assert by_status(result) == {"disappeared": [((6,), ())]}


@pytest.mark.parametrize(
    ("previous", "followup", "spacing", "message"),
    [
        (np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.int32), SPACING, "prev_labels_warped"),
        (np.zeros(SHAPE, np.int32), np.zeros((20, 40, 41), np.int32), SPACING, "shape"),
        (np.zeros(SHAPE, np.int32), np.full(SHAPE, -1, np.int32), SPACING, "followup_labels"),
        (np.zeros((40, 40), np.int32), np.zeros((40, 40), np.int32), SPACING, "3D"),
        (np.zeros(SHAPE, np.int32), np.zeros(SHAPE, np.int32), (1.0, 0.0, 1.0), "spacing"),
        (np.zeros(SHAPE, np.int32), np.zeros(SHAPE, np.int32), (1.0, 1.0), "spacing"),
    ],
)
def test_match_rejects_invalid_input(previous, followup, spacing, message):
    with pytest.raises(ValueError, match=message):
        match_lesions(previous, followup, spacing)
