"""The correspondence document: statuses across time points and RECIST 1.1 with lesions that were not measured."""

from __future__ import annotations

from lesions.measurements import LesionMeasurement
from lesions.tracking_report import build_correspondence


def lesion(lesion_id: int, long_axis_mm: float | None) -> LesionMeasurement:
    if long_axis_mm is None:
        return LesionMeasurement(lesion_id=lesion_id, prompt="", voxel_count=0, volume_ml=0.0)
    return LesionMeasurement(lesion_id=lesion_id, prompt="", voxel_count=100, volume_ml=long_axis_mm / 10, long_axis_mm=long_axis_mm, short_axis_mm=long_axis_mm / 2)


def tracked(fraction_inside: float = 1.0) -> tuple[str, str, float, float]:
    return ("tracked", "", 1.0, fraction_inside)


OUTSIDE = ("outside_field_of_view", "only 10 % of the lesion lies inside the follow-up's field of view", 0.0, 0.1)


def recist_of(document: dict, timepoint: int) -> dict:
    return document["followups"][timepoint - 1]["recist"]


def status_of(document: dict, timepoint: int, lesion_id: int) -> str:
    [row] = [row for row in document["followups"][timepoint - 1]["lesions"] if row["lesion_id"] == lesion_id]
    return row["status"]


def test_target_outside_field_of_view_not_evaluable():
    measurements = [[lesion(1, 40.0), lesion(2, 30.0)], [lesion(1, None), lesion(2, 30.0)]]

    document = build_correspondence(measurements, [{1: OUTSIDE, 2: tracked()}], [[]])

    assert recist_of(document, 1)["response"] == "NE"
    assert recist_of(document, 1)["not_evaluable_target_ids"] == [1]
    assert recist_of(document, 1)["current_sum_mm"] is None
    assert recist_of(document, 1)["change_from_baseline_percent"] is None
    [row] = [row for row in document["followups"][0]["lesions"] if row["lesion_id"] == 1]
    assert row["volume_ml"] is None
    assert row["volume_change_percent"] is None


def test_lesion_unknown_after_leaving_field_of_view():
    # Lesion 1 leaves the field of view at t1 and is not tracked at t2: its state is
    # unknown, not gone, so t2 is NE too and not a complete response.
    measurements = [[lesion(1, 40.0)], [lesion(1, None)], [lesion(1, None)]]

    document = build_correspondence(measurements, [{1: OUTSIDE}, {}], [[], []])

    assert status_of(document, 2, 1) == "absent"
    assert recist_of(document, 2)["response"] == "NE"


def test_disappeared_targets_complete_response():
    measurements = [[lesion(1, 40.0)], [lesion(1, None)], [lesion(1, None)]]

    document = build_correspondence(measurements, [{1: ("disappeared", "", 4.0, 1.0)}, {}], [[], []])

    assert recist_of(document, 1)["response"] == "CR"
    assert status_of(document, 2, 1) == "absent"
    assert recist_of(document, 2)["response"] == "CR"


def test_target_cut_by_field_of_view_not_evaluable():
    measurements = [[lesion(1, 40.0)], [lesion(1, 25.0)]]

    document = build_correspondence(measurements, [{1: tracked(fraction_inside=0.6)}], [[]])

    assert recist_of(document, 1)["response"] == "NE"


def test_new_lesion_progression_despite_unmeasured_target():
    measurements = [[lesion(1, 40.0)], [lesion(1, None), lesion(5, 12.0)]]

    document = build_correspondence(measurements, [{1: OUTSIDE}], [[5]])

    assert recist_of(document, 1)["response"] == "PD"


def test_unmeasured_time_point_not_nadir():
    # At t1 lesion 2 is outside the field of view, so the sum of 40 mm misses it. Were
    # it the nadir, the 55 mm of t2 would be a 37 % and 15 mm rise: PD. From the
    # baseline's 100 mm it is a 45 % fall: PR.
    measurements = [[lesion(1, 40.0), lesion(2, 60.0)], [lesion(1, 40.0), lesion(2, None)], [lesion(1, 30.0), lesion(2, 25.0)]]

    document = build_correspondence(measurements, [{1: tracked(), 2: OUTSIDE}, {1: tracked(), 2: tracked()}], [[], []])

    assert recist_of(document, 1)["response"] == "NE"
    assert recist_of(document, 2)["nadir_sum_mm"] == 100.0
    assert recist_of(document, 2)["response"] == "PR"


def test_new_lesion_has_no_row_before_it_appears():
    measurements = [[lesion(1, 40.0), lesion(2, None)], [lesion(1, 40.0), lesion(2, None)], [lesion(1, 40.0), lesion(2, 15.0)]]

    document = build_correspondence(measurements, [{1: tracked()}, {1: tracked()}], [[], [2]])

    assert [row["lesion_id"] for row in document["followups"][0]["lesions"]] == [1]
    assert status_of(document, 2, 2) == "new"
    assert recist_of(document, 2)["response"] == "PD"


def test_lesion_found_again_compares_with_last_seen():
    measurements = [[lesion(1, 40.0)], [lesion(1, 50.0)], [lesion(1, None)], [lesion(1, 45.0)]]
    found_again = ("tracked", "tracked from time point 1, where it was last seen", 5.0, 1.0)

    document = build_correspondence(measurements, [{1: tracked()}, {1: OUTSIDE}, {1: found_again}], [[], [], []])

    [row] = document["followups"][2]["lesions"]
    assert row["previous_volume_ml"] == 5.0
    assert row["previous_long_axis_mm"] == 50.0
    assert row["long_axis_change_mm"] == -5.0
    assert recist_of(document, 3)["response"] == "SD"
