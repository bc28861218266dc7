"""The correspondence table across time points and the RECIST 1.1 assessment.

The input per time point is its lesion table, keyed by lesion id, with the
same id at every time point. Per follow-up it also takes, for each lesion the
tracker carried over, its status ("tracked", "disappeared", "not_found",
"outside_field_of_view"), a note, the volume of the previous mask carried
onto the follow-up by the registration, and the fraction of that mask inside
the follow-up's field of view. It also takes the ids that are new there. The carried volume is what an unchanged lesion would measure, so it
separates real change from the engine's segmentation error. Changes
compare each follow-up with the time point just before it and with the
baseline.

A target lesion is not evaluable at a follow-up when it was outside the field
of view, cut by its edge, or not found there, or when it has not been seen since
one of these. The RECIST response is then NE unless progression is already shown.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from PIL import Image

from lesions.measurements import LesionMeasurement
from lesions.recist import assess, select_target_lesions, sum_of_diameters

CSV_COLUMNS = [
    "timepoint", "lesion_id", "status", "note", "target",
    "previous_volume_ml", "carried_volume_ml", "volume_ml", "volume_change_ml", "volume_change_percent",
    "previous_long_axis_mm", "long_axis_mm", "long_axis_change_mm",
    "previous_short_axis_mm", "short_axis_mm", "short_axis_change_mm",
    "baseline_volume_ml", "volume_change_from_baseline_percent",
]

# A lesion with less of its carried mask inside the follow-up's field of view is
# cut by the edge, so its diameters and volume are not a measurement of all of it.
MIN_MEASURED_FRACTION = 0.99
# Statuses after which the lesion's state is unknown rather than gone.
UNKNOWN_STATUSES = ("outside_field_of_view", "not_found")

Track = tuple[str, str, float, float]


def build_correspondence(
    measurements: Sequence[Sequence[LesionMeasurement]],
    tracks: Sequence[dict[int, Track]],
    new_ids: Sequence[Sequence[int]],
    slice_thickness_mm: float | None = None,
) -> dict:
    """Return the correspondence document: target lesions, and per follow-up one row per lesion and the RECIST assessment.

    ``tracks`` has per follow-up {lesion id: (status, note, carried volume in ml,
    fraction of the carried mask inside the field of view)}.
    """
    by_id = [{m.lesion_id: m for m in table} for table in measurements]
    targets = select_target_lesions(list(measurements[0]), slice_thickness_mm)
    baseline_sum = sum_of_diameters(list(measurements[0]), targets)

    # A lesion new at a follow-up has no row before it.
    first_index = {lesion_id: index for index, ids in enumerate(new_ids, start=1) for lesion_id in ids}

    followups, sums = [], []
    unknown: set[int] = set()
    for index in range(1, len(measurements)):
        present = [lesion_id for lesion_id in sorted(by_id[index]) if first_index.get(lesion_id, 0) <= index]
        rows = [_row(index, lesion_id, by_id, tracks[index - 1], new_ids[index - 1], targets, unknown) for lesion_id in present]
        not_evaluable = [row["lesion_id"] for row in rows if row["target"] and _not_evaluable(row, tracks[index - 1], unknown)]
        current_sum = sum_of_diameters(list(measurements[index]), targets)
        recist = _assessment(baseline_sum, sums, current_sum, len(new_ids[index - 1]), targets, by_id[index], not_evaluable)
        # A sum that misses a lesion is no nadir: it would make later sums look like growth.
        if not not_evaluable:
            sums.append(current_sum)
        unknown = {row["lesion_id"] for row in rows if _unseen(row["status"], row["lesion_id"], unknown)}
        followups.append({"timepoint": index, "mask": f"mask_t{index}.nii.gz", "lesions": rows, "recist": recist})

    return {
        "baseline": {"timepoint": 0, "mask": "mask_t0.nii.gz", "lesion_ids": sorted(by_id[0])},
        "target_lesions": targets,
        "target_rule": "RECIST 1.1: measurable lesions (long axis >= 10 mm, or twice the slice thickness) ordered by long axis, at most 5; every lesion is treated as non-nodal and the 2-per-organ limit is not applied",
        "followups": followups,
    }


def correspondence_to_csv(document: dict) -> str:
    output = io.StringIO()
    writer = csv.DictWriter(output, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for followup in document["followups"]:
        for row in followup["lesions"]:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return output.getvalue()


def stitch_previews(previews: Sequence[bytes]) -> bytes:
    """Place the per-time-point preview sheets side by side, baseline first."""
    sheets = [Image.open(io.BytesIO(data)).convert("RGB") for data in previews]
    width = sum(sheet.width for sheet in sheets)
    height = max(sheet.height for sheet in sheets)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    left = 0
    for sheet in sheets:
        canvas.paste(sheet, (left, 0))
        left += sheet.width
    output = io.BytesIO()
    canvas.save(output, format="PNG")
    return output.getvalue()


def _row(index: int, lesion_id: int, by_id: list[dict], tracks: dict[int, Track], new_ids: Sequence[int], targets: list[int], unknown: set[int]) -> dict:
    current = by_id[index].get(lesion_id)
    previous = by_id[index - 1].get(lesion_id)
    baseline = by_id[0].get(lesion_id)
    status, note = _status(lesion_id, current, previous, tracks, new_ids, unknown)
    carried = tracks[lesion_id][2] if lesion_id in tracks else None
    # A lesion that was not measured has no values, not a volume of 0, and a lesion
    # found again compares with the time point where it was last seen.
    if _unseen(status, lesion_id, unknown):
        current = None
    if lesion_id in unknown:
        previous = _last_found(by_id, index, lesion_id)

    return {
        "timepoint": index,
        "lesion_id": lesion_id,
        "status": status,
        "note": note,
        "target": lesion_id in targets,
        "previous_volume_ml": _value(previous, "volume_ml"),
        "carried_volume_ml": round(carried, 3) if carried is not None else None,
        "volume_ml": _value(current, "volume_ml"),
        "volume_change_ml": _difference(current, previous, "volume_ml"),
        "volume_change_percent": _percent(current, previous, "volume_ml"),
        "previous_long_axis_mm": _value(previous, "long_axis_mm"),
        "long_axis_mm": _value(current, "long_axis_mm"),
        "long_axis_change_mm": _difference(current, previous, "long_axis_mm"),
        "previous_short_axis_mm": _value(previous, "short_axis_mm"),
        "short_axis_mm": _value(current, "short_axis_mm"),
        "short_axis_change_mm": _difference(current, previous, "short_axis_mm"),
        "baseline_volume_ml": _value(baseline, "volume_ml"),
        "volume_change_from_baseline_percent": _percent(current, baseline, "volume_ml"),
    }


def _status(lesion_id, current, previous, tracks, new_ids, unknown) -> tuple[str, str]:
    if lesion_id in new_ids:
        return "new", "clicked at this follow-up and not overlapping any tracked lesion"
    if lesion_id in tracks:
        return tracks[lesion_id][:2]
    if lesion_id in unknown:
        return "absent", "not tracked since it was outside the field of view or not found; its state is unknown"
    if previous is None or not previous.found:
        return "absent", "already gone at the previous time point"
    return ("tracked", "") if current is not None and current.found else ("disappeared", "")


def _last_found(by_id: list[dict], index: int, lesion_id: int) -> LesionMeasurement | None:
    """Return the lesion's measurement at the latest time point before ``index`` that showed it."""
    for earlier in range(index - 1, -1, -1):
        measurement = by_id[earlier].get(lesion_id)
        if measurement is not None and measurement.found:
            return measurement
    return None


def _unseen(status: str, lesion_id: int, unknown: set[int]) -> bool:
    """Return whether a lesion with ``status`` was not seen at this follow-up; ``unknown``
    contains the ids not seen at the previous one."""
    return status in UNKNOWN_STATUSES or (status == "absent" and lesion_id in unknown)


def _not_evaluable(row: dict, tracks: dict[int, Track], unknown: set[int]) -> bool:
    """Return whether the row's lesion was not measured whole at this follow-up."""
    if _unseen(row["status"], row["lesion_id"], unknown):
        return True
    track = tracks.get(row["lesion_id"])
    return row["status"] == "tracked" and track is not None and track[3] < MIN_MEASURED_FRACTION


def _assessment(baseline_sum: float, history: list[float], current_sum: float, new_lesions: int, targets: list[int], current: dict, not_evaluable: list[int]) -> dict:
    if not targets:
        return {"response": None, "reason": "not assessable: no measurable baseline lesion (long axis of at least 10 mm)"}
    gone = all(current.get(i) is None or not current[i].found for i in targets)
    assessment = assess(baseline_sum, history, current_sum, new_lesions, gone and not not_evaluable, len(not_evaluable))
    result = {key: getattr(assessment, key) for key in assessment.__dataclass_fields__}
    result["not_evaluable_target_ids"] = not_evaluable
    if assessment.response == "NE":
        # The sum misses the lesions that were not measured, so it is no measurement.
        for key in ("current_sum_mm", "change_from_baseline_mm", "change_from_baseline_percent", "change_from_nadir_mm", "change_from_nadir_percent"):
            result[key] = None
    return result


def _value(measurement: LesionMeasurement | None, name: str) -> float | None:
    if measurement is None or not measurement.found:
        return 0.0 if measurement is not None and name == "volume_ml" else None
    value = getattr(measurement, name)
    return round(value, 3) if value is not None else None


def _difference(current, previous, name: str) -> float | None:
    now, before = _value(current, name), _value(previous, name)
    if now is None and current is not None and name != "volume_ml":
        now = 0.0
    if now is None or before is None:
        return None
    return round(now - before, 3)


def _percent(current, reference, name: str) -> float | None:
    now, before = _value(current, name), _value(reference, name)
    if now is None or not before:
        return None
    return round(100.0 * (now - before) / before, 2)
