"""The lesion table of one time point as a JSON document and as CSV text.

Both forms carry the fields of ``LesionMeasurement`` under the same names. JSON keeps
vectors as lists: a point is [x, y, z] and an axis is [[x, y, z], [x, y, z]]. CSV has
one row per lesion and splits each vector into ``_x``, ``_y`` and ``_z`` columns, and
each axis into ``_end1`` and ``_end2`` points (``long_axis_end1_vox_x`` and so on).
A value that is None, such as every geometric value of a lesion that was prompted but
not found, is JSON null and an empty CSV cell. A last field, ``found``, is JSON true or
false and CSV "true" or "false". Units are in the names and are described in ``UNITS``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable, Sequence
from typing import Any

from lesions.measurements import LesionMeasurement

# Unit or meaning of every field that has one, keyed by the JSON field name.
UNITS: dict[str, str] = {
    "voxel_count": "voxels",
    "volume_ml": "millilitre",
    "long_axis_mm": "millimetre, longest in-plane diameter over all axial slices (RECIST 1.1)",
    "short_axis_mm": "millimetre, longest diameter perpendicular to the long axis in the same slice",
    "long_axis_slice": "voxel index z of the slice that contains both axes",
    "long_axis_endpoints_vox": "continuous voxel index (x, y, z), integers at voxel centres",
    "short_axis_endpoints_vox": "continuous voxel index (x, y, z), integers at voxel centres",
    "max_diameter_3d_mm": "millimetre, maximum 3D Feret diameter",
    "centroid_world_mm": "millimetre, world coordinates (x, y, z) in LPS",
    "intensity_mean_hu": "image intensity units, Hounsfield units for CT",
    "intensity_std_hu": "image intensity units, Hounsfield units for CT; population standard deviation",
    "intensity_min_hu": "image intensity units, Hounsfield units for CT",
    "intensity_max_hu": "image intensity units, Hounsfield units for CT",
    "bbox_min_vox": "voxel index (x, y, z) of the first voxel inside",
    "bbox_max_vox": "voxel index (x, y, z) of the first voxel past the end",
}

_AXIS_FIELDS = ("long_axis_endpoints_vox", "short_axis_endpoints_vox")
_POINT_FIELDS = ("centroid_world_mm", "bbox_min_vox", "bbox_max_vox")
_RESERVED_KEYS = ("lesions", "units")


def lesions_to_json(measurements: Iterable[LesionMeasurement], extra: dict[str, Any]) -> dict[str, Any]:
    """Build the JSON lesion table: {"lesions": [...], "units": UNITS, **extra}.

    ``extra`` contains what describes the whole table, such as the image geometry, and its
    keys go to the top level. Raises ValueError when ``extra`` uses "lesions" or "units".
    The result contains only dicts, lists, str, int, float, bool and None.
    """
    clashing = [key for key in _RESERVED_KEYS if key in extra]
    if clashing:
        raise ValueError(f"extra must not contain the reserved keys {clashing}")
    return {
        "lesions": [_lesion_to_json(measurement) for measurement in measurements],
        "units": dict(UNITS),
        **extra,
    }


def lesions_to_csv(measurements: Iterable[LesionMeasurement]) -> str:
    """Write the lesion table as CSV text with a header row and one row per lesion.

    Rows end in CRLF, as RFC 4180 and the csv module write them, so write the text to
    a file opened with ``newline=""``.
    """
    output = io.StringIO()
    writer = csv.DictWriter(output, fieldnames=csv_columns())
    writer.writeheader()
    for measurement in measurements:
        writer.writerow(_lesion_to_csv_row(measurement))
    return output.getvalue()


def csv_columns() -> list[str]:
    """Return the CSV header in column order."""
    columns = []
    for field in dataclasses.fields(LesionMeasurement):
        if field.name in _AXIS_FIELDS:
            prefix = field.name.removesuffix("_endpoints_vox")
            columns += _split_point(f"{prefix}_end1_vox") + _split_point(f"{prefix}_end2_vox")
        elif field.name in _POINT_FIELDS:
            columns += _split_point(field.name)
        else:
            columns.append(_public(field.name))
    return columns + ["found"]


# The table calls the lesion id "id", as the API and the label map do.
_PUBLIC_NAMES = {"lesion_id": "id"}


def _public(name: str) -> str:
    return _PUBLIC_NAMES.get(name, name)


def _split_point(name: str) -> list[str]:
    return [f"{name}_x", f"{name}_y", f"{name}_z"]


def _lesion_to_json(measurement: LesionMeasurement) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for field in dataclasses.fields(LesionMeasurement):
        value = getattr(measurement, field.name)
        if value is not None and field.name in _AXIS_FIELDS:
            value = [list(point) for point in value]
        elif value is not None and field.name in _POINT_FIELDS:
            value = list(value)
        row[_public(field.name)] = value
    row["found"] = measurement.found
    return row


def _lesion_to_csv_row(measurement: LesionMeasurement) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for field in dataclasses.fields(LesionMeasurement):
        value = getattr(measurement, field.name)
        if field.name in _AXIS_FIELDS:
            prefix = field.name.removesuffix("_endpoints_vox")
            ends = value or (None, None)
            row.update(_point_cells(f"{prefix}_end1_vox", ends[0]))
            row.update(_point_cells(f"{prefix}_end2_vox", ends[1]))
        elif field.name in _POINT_FIELDS:
            row.update(_point_cells(field.name, value))
        else:
            row[_public(field.name)] = "" if value is None else value
    row["found"] = "true" if measurement.found else "false"
    return row


def _point_cells(name: str, point: Sequence[float] | None) -> dict[str, Any]:
    values = point if point is not None else ("", "", "")
    return dict(zip(_split_point(name), values))
