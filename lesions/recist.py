"""RECIST 1.1 target-lesion selection and overall response from target-lesion sums.

Conventions:

- A lesion's diameter is its long axis in the axial plane (``long_axis_mm`` of
  ``lesions.measurements.LesionMeasurement``). The sum of diameters is the sum of the
  target lesions' long axes, in millimetres.
- Every lesion counts as non-nodal. RECIST 1.1 measures a lymph node by its short
  axis (measurable from 15 mm, normal below 10 mm), but the service has no organ or
  node labels, so it cannot tell a node from any other lesion.
- The response covers the target lesions and new lesions only. Non-target lesions
  and their unequivocal progression are not assessed, so a CR here means "all target
  lesions gone and no new lesion", not a full RECIST complete response.
- A target lesion that could not be measured at a follow-up (outside the field of
  view, cut by its edge, or not found by the tracker) makes the response NE (not
  evaluable), unless the lesions that were measured already show progression.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lesions.measurements import LesionMeasurement

Response = Literal["CR", "PR", "SD", "PD", "NE"]

# A non-nodal lesion is measurable from a long axis of 10 mm on CT with slices of
# 5 mm or thinner. Thicker slices raise the minimum to twice the slice thickness.
MIN_MEASURABLE_LONG_AXIS_MM = 10.0
MEASURABLE_SLICE_THICKNESS_FACTOR = 2.0

# RECIST 1.1 takes at most 5 target lesions in total (and at most 2 per organ).
MAX_TARGET_LESIONS = 5

# PR: the sum fell by at least 30 % from baseline.
PARTIAL_RESPONSE_DECREASE_PERCENT = 30.0
# PD: the sum rose by at least 20 % over the nadir and by at least 5 mm.
PROGRESSION_INCREASE_PERCENT = 20.0
PROGRESSION_MIN_INCREASE_MM = 5.0

# Slack on the percent and millimetre thresholds, so that a change of exactly -30 %
# or +20 % still meets its threshold after floating-point rounding.
_THRESHOLD_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Assessment:
    """Overall response at one time point, with the numbers it was decided on.

    Sums are in millimetres. A percent change is None when its reference sum is 0.
    """

    response: Response
    reason: str
    baseline_sum_mm: float
    nadir_sum_mm: float
    current_sum_mm: float
    change_from_baseline_mm: float
    change_from_baseline_percent: float | None
    change_from_nadir_mm: float
    change_from_nadir_percent: float | None
    new_lesions: int
    not_evaluable_targets: int = 0


def select_target_lesions(
    baseline: Sequence[LesionMeasurement],
    slice_thickness_mm: float | None = None,
) -> list[int]:
    """Select the RECIST 1.1 target lesions of a baseline: the measurable lesions,
    largest long axis first, at most ``MAX_TARGET_LESIONS``. Return their ids.

    A lesion is measurable when its long axis is at least
    ``MIN_MEASURABLE_LONG_AXIS_MM``, or twice ``slice_thickness_mm`` when that is
    larger. Every lesion is treated as non-nodal (see the module docstring). Lesions
    with equal long axes are taken in order of id.

    NOTE: RECIST 1.1 also allows at most 2 target lesions per organ. The service has
    no organ labels, so this limit is not applied and more than 2 targets may share
    an organ.
    """
    min_long_axis = MIN_MEASURABLE_LONG_AXIS_MM
    if slice_thickness_mm is not None:
        if slice_thickness_mm <= 0:
            raise ValueError(f"slice_thickness_mm must be positive, got {slice_thickness_mm}")
        min_long_axis = max(min_long_axis, MEASURABLE_SLICE_THICKNESS_FACTOR * slice_thickness_mm)

    measurable = [
        lesion
        for lesion in baseline
        if lesion.long_axis_mm is not None and lesion.long_axis_mm >= min_long_axis
    ]
    measurable.sort(key=lambda lesion: (-lesion.long_axis_mm, lesion.lesion_id))
    return [lesion.lesion_id for lesion in measurable[:MAX_TARGET_LESIONS]]


def sum_of_diameters(measurements: Sequence[LesionMeasurement], target_ids: Sequence[int]) -> float:
    """Add up the long axes of the target lesions, in mm.

    A target missing from ``measurements``, or present without voxels, has
    disappeared and adds 0 mm.
    """
    long_axes = {lesion.lesion_id: lesion.long_axis_mm for lesion in measurements}
    return float(sum(long_axes.get(lesion_id) or 0.0 for lesion_id in target_ids))


def assess(
    baseline_sum: float,
    history_sums: Sequence[float],
    current_sum: float,
    new_lesions: int,
    all_targets_gone: bool,
    not_evaluable_targets: int = 0,
) -> Assessment:
    """Assess the RECIST 1.1 response of one follow-up from target-lesion sums in mm.

    ``history_sums`` are the sums of the follow-ups before this one, in any order.
    The nadir is the smallest of ``baseline_sum`` and ``history_sums``. Rules, first
    match wins:

    - PD: at least one new lesion, or a sum at least ``PROGRESSION_INCREASE_PERCENT``
      above the nadir that is also at least ``PROGRESSION_MIN_INCREASE_MM`` above it.
      A target that was not measured adds 0 mm, so this rule applies whatever it measures.
    - NE: ``not_evaluable_targets`` target lesions could not be measured.
    - CR: every target lesion has disappeared.
    - PR: a sum at least ``PARTIAL_RESPONSE_DECREASE_PERCENT`` below the baseline sum.
    - SD: otherwise.

    Raises ValueError when a sum is negative, the baseline sum is 0 (no target
    lesion), ``new_lesions`` is negative, or ``all_targets_gone`` is True while
    ``current_sum`` is not 0, or ``not_evaluable_targets`` is negative.
    """
    _validate_assess_inputs(baseline_sum, history_sums, current_sum, new_lesions, all_targets_gone)
    if not_evaluable_targets < 0:
        raise ValueError(f"not_evaluable_targets must not be negative, got {not_evaluable_targets}")

    nadir = min([baseline_sum, *history_sums])
    from_baseline = current_sum - baseline_sum
    from_nadir = current_sum - nadir
    from_baseline_percent = _percent(from_baseline, baseline_sum)
    from_nadir_percent = _percent(from_nadir, nadir)

    response, reason = _decide_response(
        nadir, from_nadir, from_nadir_percent, from_baseline_percent, new_lesions, all_targets_gone, not_evaluable_targets
    )
    return Assessment(
        response=response,
        reason=reason,
        baseline_sum_mm=float(baseline_sum),
        nadir_sum_mm=float(nadir),
        current_sum_mm=float(current_sum),
        change_from_baseline_mm=float(from_baseline),
        change_from_baseline_percent=from_baseline_percent,
        change_from_nadir_mm=float(from_nadir),
        change_from_nadir_percent=from_nadir_percent,
        new_lesions=new_lesions,
        not_evaluable_targets=not_evaluable_targets,
    )


def _validate_assess_inputs(
    baseline_sum: float,
    history_sums: Sequence[float],
    current_sum: float,
    new_lesions: int,
    all_targets_gone: bool,
) -> None:
    if baseline_sum <= 0:
        raise ValueError(
            f"baseline_sum must be positive, got {baseline_sum}: RECIST 1.1 needs at least one measurable target lesion"
        )
    for index, history_sum in enumerate(history_sums):
        if history_sum < 0:
            raise ValueError(f"history_sums[{index}] must not be negative, got {history_sum}")
    if current_sum < 0:
        raise ValueError(f"current_sum must not be negative, got {current_sum}")
    if new_lesions < 0:
        raise ValueError(f"new_lesions must not be negative, got {new_lesions}")
    if all_targets_gone and current_sum != 0:
        raise ValueError(f"all_targets_gone is True but current_sum is {current_sum} mm, not 0")


def _decide_response(
    nadir: float,
    from_nadir: float,
    from_nadir_percent: float | None,
    from_baseline_percent: float,
    new_lesions: int,
    all_targets_gone: bool,
    not_evaluable_targets: int,
) -> tuple[Response, str]:
    if new_lesions > 0:
        return "PD", f"{new_lesions} new lesion(s)"

    # With a nadir of 0 mm, 20 % of it is 0 mm, so only the 5 mm rule applies.
    rose_by_percent = nadir == 0 or from_nadir_percent >= PROGRESSION_INCREASE_PERCENT - _THRESHOLD_TOLERANCE
    rose_by_mm = from_nadir >= PROGRESSION_MIN_INCREASE_MM - _THRESHOLD_TOLERANCE
    if rose_by_percent and rose_by_mm:
        return "PD", f"sum rose {from_nadir:.1f} mm over the nadir of {nadir:.1f} mm"

    if not_evaluable_targets:
        return "NE", f"{not_evaluable_targets} target lesion(s) could not be measured at this follow-up"

    if all_targets_gone:
        return "CR", "all target lesions disappeared"

    if from_baseline_percent <= -PARTIAL_RESPONSE_DECREASE_PERCENT + _THRESHOLD_TOLERANCE:
        return "PR", f"sum fell {-from_baseline_percent:.1f} % from baseline"

    return "SD", "neither a 30 % decrease from baseline nor a 20 % and 5 mm increase over the nadir"


def _percent(change: float, reference: float) -> float | None:
    if reference == 0:
        return None
    return float(100.0 * change / reference)
