"""Tests for lesions.lesion_table: JSON and CSV round trips of measured lesions."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np
import pytest
import SimpleITK as sitk

from lesions.lesion_table import UNITS, csv_columns, lesions_to_csv, lesions_to_json
from lesions.measurements import LesionMeasurement, measure_lesions

GEOMETRY = {
    "image": {
        "size": [20, 18, 10],
        "spacing": [0.7, 0.7, 2.5],
        "origin": [-100.0, 20.0, 300.0],
        "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    }
}


@pytest.fixture(scope="module")
def measurements() -> list[LesionMeasurement]:
    """Two found lesions and one prompted lesion that is absent from the label map."""
    image = sitk.GetImageFromArray(np.full((10, 18, 20), 35.5, dtype=np.float32))
    image.SetSpacing((0.7, 0.7, 2.5))
    image.SetOrigin((-100.0, 20.0, 300.0))
    labels = np.zeros((10, 18, 20), dtype=np.int32)
    labels[2:6, 3:10, 4:12] = 1
    labels[7, 12, 15] = 3
    prompts = {1: 'box x[4,12) y[3,10) z[2,6)', 2: 'point, "world"', 3: "point (15.0, 12.0, 7.0)"}
    return measure_lesions(image, labels, prompts)


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_json_top_level_keys(measurements):
    table = lesions_to_json(measurements, GEOMETRY)

    assert set(table) == {"lesions", "units", "image"}
    assert table["image"] == GEOMETRY["image"]
    assert table["units"] == UNITS


def test_json_round_trip(measurements):
    table = lesions_to_json(measurements, GEOMETRY)

    assert json.loads(json.dumps(table, allow_nan=False)) == table


def test_json_lesion_fields(measurements):
    lesions = lesions_to_json(measurements, {})["lesions"]

    assert [lesion["id"] for lesion in lesions] == [1, 2, 3]
    first = lesions[0]
    assert first["volume_ml"] == measurements[0].volume_ml
    assert first["long_axis_endpoints_vox"] == [list(point) for point in measurements[0].long_axis_endpoints_vox]
    assert first["bbox_min_vox"] == [4, 3, 2]
    assert first["centroid_world_mm"] == list(measurements[0].centroid_world_mm)
    assert first["found"] is True


def test_json_lesion_not_found(measurements):
    missing = lesions_to_json(measurements, {})["lesions"][1]

    assert missing["found"] is False
    assert missing["voxel_count"] == 0
    assert missing["prompt"] == 'point, "world"'
    assert missing["long_axis_mm"] is None
    assert missing["long_axis_endpoints_vox"] is None
    assert missing["centroid_world_mm"] is None


def test_json_every_field_present(measurements):
    lesion = lesions_to_json(measurements, {})["lesions"][0]

    expected = {field.name for field in dataclasses.fields(LesionMeasurement)} - {"lesion_id"} | {"id", "found"}
    assert set(lesion) == expected


def test_units_name_existing_fields():
    field_names = {field.name for field in dataclasses.fields(LesionMeasurement)}

    assert set(UNITS) <= field_names


@pytest.mark.parametrize("key", ["lesions", "units"])
def test_json_rejects_reserved_extra_key(measurements, key):
    with pytest.raises(ValueError, match=key):
        lesions_to_json(measurements, {key: []})


def test_csv_header_with_units():
    columns = csv_columns()

    for name in (
        "id",
        "prompt",
        "volume_ml",
        "long_axis_mm",
        "short_axis_mm",
        "max_diameter_3d_mm",
        "long_axis_slice",
        "long_axis_end1_vox_x",
        "short_axis_end2_vox_z",
        "centroid_world_mm_x",
        "centroid_world_mm_z",
        "intensity_mean_hu",
        "bbox_min_vox_y",
        "bbox_max_vox_z",
        "found",
    ):
        assert name in columns
    assert len(columns) == len(set(columns))


def test_csv_round_trip(measurements):
    rows = read_csv(lesions_to_csv(measurements))

    assert len(rows) == len(measurements)
    for row, measurement in zip(rows, measurements):
        assert int(row["id"]) == measurement.lesion_id
        assert row["prompt"] == measurement.prompt
        assert int(row["voxel_count"]) == measurement.voxel_count

    found = rows[0]
    lesion = measurements[0]
    assert float(found["volume_ml"]) == lesion.volume_ml
    assert float(found["long_axis_mm"]) == lesion.long_axis_mm
    assert float(found["short_axis_mm"]) == lesion.short_axis_mm
    assert int(found["long_axis_slice"]) == lesion.long_axis_slice
    assert float(found["intensity_mean_hu"]) == lesion.intensity_mean_hu
    assert found["found"] == "true"


def test_csv_vectors_split_into_columns(measurements):
    row = read_csv(lesions_to_csv(measurements))[0]
    lesion = measurements[0]

    centroid = tuple(float(row[f"centroid_world_mm_{axis}"]) for axis in "xyz")
    assert centroid == lesion.centroid_world_mm
    bbox_max = tuple(int(row[f"bbox_max_vox_{axis}"]) for axis in "xyz")
    assert bbox_max == lesion.bbox_max_vox
    end2 = tuple(float(row[f"long_axis_end2_vox_{axis}"]) for axis in "xyz")
    assert end2 == lesion.long_axis_endpoints_vox[1]
    end1 = tuple(float(row[f"short_axis_end1_vox_{axis}"]) for axis in "xyz")
    assert end1 == lesion.short_axis_endpoints_vox[0]


def test_csv_empty_cells_for_lesion_not_found(measurements):
    row = read_csv(lesions_to_csv(measurements))[1]

    assert row["voxel_count"] == "0"
    assert row["found"] == "false"
    for column in ("volume_ml", "long_axis_mm", "long_axis_end1_vox_x", "centroid_world_mm_y", "bbox_min_vox_z"):
        assert row[column] == ""


def test_csv_quotes_prompt_with_comma(measurements):
    row = read_csv(lesions_to_csv(measurements))[1]

    assert row["prompt"] == 'point, "world"'


def test_csv_without_lesions_has_header_only():
    text = lesions_to_csv([])

    assert read_csv(text) == []
    assert next(csv.reader(io.StringIO(text))) == csv_columns()
