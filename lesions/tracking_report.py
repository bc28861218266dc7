"""The correspondence table across time points and the RECIST 1.1 assessment.

The input per time point is its lesion table, keyed by lesion id, with the
same id at every time point. Per follow-up it also takes, for each lesion the
tracker carried over, its status ("tracked", "disappeared", "not_found",
"outside_field_of_view"), a note, and the volume of the previous mask carried
onto the follow-up by the registration. It also takes the ids that are new
there. The carried volume is what an unchanged lesion would measure, so it
separates real change from the engine's segmentation error. Changes
compare each follow-up with the time point just before it and with the
baseline.
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


def build_correspondence(
    measurements: Sequence[Sequence[LesionMeasurement]],
    tracks: Sequence[dict[int, tuple[str, str, float]]],
    new_ids: Sequence[Sequence[int]],
    slice_thickness_mm: float | None = None,
) -> dict:
    """Return the correspondence document: target lesions, and per follow-up one row per lesion and the RECIST assessment."""
    by_id = [{m.lesion_id: m for m in table} for table in measurements]
    targets = select_target_lesions(list(measurements[0]), slice_thickness_mm)
    baseline_sum = sum_of_diameters(list(measurements[0]), targets)

    followups, sums = [], []
    for index in range(1, len(measurements)):
        rows = [_row(index, lesion_id, by_id, tracks[index - 1], new_ids[index - 1], targets) for lesion_id in sorted(by_id[index])]
        current_sum = sum_of_diameters(list(measurements[index]), targets)
        recist = _assessment(baseline_sum, sums, current_sum, len(new_ids[index - 1]), targets, by_id[index])
        sums.append(current_sum)
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


def _row(index: int, lesion_id: int, by_id: list[dict], tracks: dict[int, tuple[str, str, float]], new_ids: Sequence[int], targets: list[int]) -> dict:
    current = by_id[index].get(lesion_id)
    previous = by_id[index - 1].get(lesion_id)
    baseline = by_id[0].get(lesion_id)
    status, note = _status(lesion_id, current, previous, tracks, new_ids)
    carried = tracks[lesion_id][2] if lesion_id in tracks else None

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


def _status(lesion_id, current, previous, tracks, new_ids) -> tuple[str, str]:
    if lesion_id in new_ids:
        return "new", "clicked at this follow-up and not overlapping any tracked lesion"
    if lesion_id in tracks:
        return tracks[lesion_id][:2]
    if previous is None or not previous.found:
        return "absent", "already gone at the previous time point"
    return ("tracked", "") if current is not None and current.found else ("disappeared", "")


def _assessment(baseline_sum: float, history: list[float], current_sum: float, new_lesions: int, targets: list[int], current: dict) -> dict:
    if not targets:
        return {"response": None, "reason": "not assessable: no measurable baseline lesion (long axis of at least 10 mm)"}
    gone = all(current.get(i) is None or not current[i].found for i in targets)
    assessment = assess(baseline_sum, history, current_sum, new_lesions, gone)
    return {key: getattr(assessment, key) for key in assessment.__dataclass_fields__}


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
