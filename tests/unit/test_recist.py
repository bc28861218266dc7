"""RECIST 1.1: target selection, and the response rules on tables of known results."""

from __future__ import annotations

import pytest

from lesions.measurements import LesionMeasurement
from lesions.recist import assess, select_target_lesions, sum_of_diameters


def lesion(lesion_id: int, long_axis_mm: float | None) -> LesionMeasurement:
    if long_axis_mm is None:
        return LesionMeasurement(lesion_id=lesion_id, prompt="", voxel_count=0)
    return LesionMeasurement(lesion_id=lesion_id, prompt="", voxel_count=100, long_axis_mm=long_axis_mm)


# (baseline sum, earlier follow-up sums, current sum, new lesions, all targets gone, expected response)
RESPONSE_TABLE = [
    # The 5 mm rule: +20 % of a 20 mm sum is only 4 mm, so not PD.
    (20.0, [], 24.0, 0, False, "SD"),
    (20.0, [], 24.9, 0, False, "SD"),
    (20.0, [], 25.0, 0, False, "PD"),
    # A large sum: +20 % is well over 5 mm, so the percent rule decides.
    (100.0, [], 119.0, 0, False, "SD"),
    (100.0, [], 120.0, 0, False, "PD"),
    # PD is measured from the nadir: +20 % over a nadir of 50 mm, although below baseline.
    (100.0, [50.0], 60.0, 0, False, "PD"),
    (100.0, [50.0], 59.0, 0, False, "PR"),
    # The nadir is the smallest earlier sum, not the latest one.
    (100.0, [80.0, 50.0, 70.0], 59.0, 0, False, "PR"),
    (100.0, [80.0, 50.0, 70.0], 60.0, 0, False, "PD"),
    # A new lesion is PD whatever the sum does.
    (100.0, [], 40.0, 1, False, "PD"),
    (100.0, [], 0.0, 2, True, "PD"),
    # CR: every target gone and no new lesion.
    (100.0, [], 0.0, 0, True, "CR"),
    (100.0, [0.0], 0.0, 0, True, "CR"),
    # PR boundary: exactly -30 % is PR, just above is SD.
    (100.0, [], 70.0, 0, False, "PR"),
    (100.0, [], 70.1, 0, False, "SD"),
    (33.0, [], 23.1, 0, False, "PR"),
    (57.3, [], 57.3 * 0.7, 0, False, "PR"),
    # A reappearance after a nadir of 0 mm: only the 5 mm rule applies.
    (100.0, [0.0], 4.0, 0, False, "PR"),
    (100.0, [0.0], 5.0, 0, False, "PD"),
    # Unchanged.
    (100.0, [], 100.0, 0, False, "SD"),
]


@pytest.mark.parametrize(("baseline", "history", "current", "new", "gone", "expected"), RESPONSE_TABLE)
def test_assess_response_table(baseline, history, current, new, gone, expected):
    assessment = assess(baseline, history, current, new, gone)
    assert assessment.response == expected, assessment.reason


def test_assess_reports_changes_from_baseline_and_nadir():
    assessment = assess(100.0, [80.0, 50.0], 60.0, 0, False)

    assert assessment.nadir_sum_mm == 50.0
    assert assessment.change_from_baseline_mm == pytest.approx(-40.0)
    assert assessment.change_from_baseline_percent == pytest.approx(-40.0)
    assert assessment.change_from_nadir_mm == pytest.approx(10.0)
    assert assessment.change_from_nadir_percent == pytest.approx(20.0)
    assert assessment.response == "PD"


def test_assess_nadir_includes_baseline():
    assessment = assess(40.0, [45.0, 50.0], 47.0, 0, False)

    assert assessment.nadir_sum_mm == 40.0
    assert assessment.change_from_nadir_percent == pytest.approx(17.5)
    assert assessment.response == "SD"


def test_assess_percent_from_zero_nadir_is_none():
    assessment = assess(100.0, [0.0], 8.0, 0, False)

    assert assessment.change_from_nadir_percent is None
    assert assessment.change_from_nadir_mm == pytest.approx(8.0)
    assert assessment.response == "PD"


def test_assess_unmeasured_target_not_evaluable():
    assessment = assess(100.0, [], 60.0, 0, False, not_evaluable_targets=1)

    assert assessment.response == "NE"
    assert assessment.not_evaluable_targets == 1


def test_assess_progression_beats_unmeasured_target():
    # A missing target adds 0 mm, so a rise of the measured ones is progression whatever it measures.
    assert assess(100.0, [], 125.0, 0, False, not_evaluable_targets=1).response == "PD"
    assert assess(100.0, [], 60.0, 1, False, not_evaluable_targets=1).response == "PD"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((0.0, [], 0.0, 0, True), "baseline_sum"),
        ((-1.0, [], 0.0, 0, False), "baseline_sum"),
        ((10.0, [-1.0], 5.0, 0, False), "history_sums"),
        ((10.0, [], -1.0, 0, False), "current_sum"),
        ((10.0, [], 5.0, -1, False), "new_lesions"),
        ((10.0, [], 5.0, 0, True), "all_targets_gone"),
        ((10.0, [], 5.0, 0, False, -1), "not_evaluable_targets"),
    ],
)
def test_assess_rejects_invalid_input(arguments, message):
    with pytest.raises(ValueError, match=message):
        assess(*arguments)


def test_select_targets_largest_first_at_most_five():
    baseline = [lesion(i, 10.0 + i) for i in range(1, 8)]

    assert select_target_lesions(baseline) == [7, 6, 5, 4, 3]


def test_select_targets_skips_non_measurable():
    baseline = [lesion(1, 9.9), lesion(2, 10.0), lesion(3, None), lesion(4, 35.0)]

    assert select_target_lesions(baseline) == [4, 2]


def test_select_targets_equal_axes_by_id():
    baseline = [lesion(9, 20.0), lesion(3, 20.0), lesion(5, 20.0)]

    assert select_target_lesions(baseline) == [3, 5, 9]


def test_select_targets_thick_slices_raise_minimum():
    baseline = [lesion(1, 12.0), lesion(2, 14.0)]

    assert select_target_lesions(baseline, slice_thickness_mm=5.0) == [2, 1]
    assert select_target_lesions(baseline, slice_thickness_mm=6.5) == [2]


def test_select_targets_rejects_invalid_thickness():
    with pytest.raises(ValueError, match="slice_thickness_mm"):
        select_target_lesions([lesion(1, 20.0)], slice_thickness_mm=0.0)


def test_select_targets_empty_baseline():
    assert select_target_lesions([]) == []


def test_sum_of_diameters_counts_missing_targets_as_zero():
    follow_up = [lesion(1, 12.5), lesion(2, None), lesion(4, 30.0)]

    assert sum_of_diameters(follow_up, [1, 2, 3]) == pytest.approx(12.5)
    assert sum_of_diameters(follow_up, [1, 4]) == pytest.approx(42.5)
    assert sum_of_diameters(follow_up, []) == 0.0
