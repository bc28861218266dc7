"""Dice of the classical engine on the real CT lesions of the shared data folder.

Every lesion is prompted once with a box and once with a point built from its
ground-truth mask (see ``tests.lesion_cases``). Run with ``-s`` to print the
per-lesion table, next to the Dice of the ellipsoid inscribed in the box, which
needs no image at all.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import pytest

from tests.lesion_cases import (
    box_prompt,
    dice,
    inscribed_ellipsoid,
    load_ct_lesion_cases,
    point_prompt,
    shared_data_dir,
)
from worker.engines.base import EngineOptions
from worker.engines.classical import ClassicalEngine

BOX_MEAN_DICE_MIN = 0.78
POINT_MEAN_DICE_MIN = 0.50
POINT_MEDIAN_DICE_MIN = 0.55


@dataclass
class LesionResult:
    case: str
    lesion_id: int
    ellipsoid_dice: float
    box_dice: float
    point_dice: float


@pytest.fixture(scope="module")
def results() -> list[LesionResult]:
    data_dir = shared_data_dir()
    if not data_dir.is_dir():
        pytest.skip(f"{data_dir} is absent; set TUMORTRACK_SHARED_DIR to the shared folder that contains data/")

    engine = ClassicalEngine()
    rows = []
    started = time.perf_counter()
    for case in load_ct_lesion_cases(data_dir):
        ids = range(1, len(case.lesion_masks) + 1)
        boxes = [box_prompt(lesion_id, mask) for lesion_id, mask in zip(ids, case.lesion_masks)]
        points = [point_prompt(lesion_id, mask, case.image.GetSpacing()) for lesion_id, mask in zip(ids, case.lesion_masks)]
        box_masks = engine.segment(case.image, boxes, EngineOptions())
        point_masks = engine.segment(case.image, points, EngineOptions())

        for box, mask in zip(boxes, case.lesion_masks):
            rows.append(
                LesionResult(
                    case=case.name,
                    lesion_id=box.lesion_id,
                    ellipsoid_dice=dice(inscribed_ellipsoid(mask.shape, box), mask),
                    box_dice=dice(box_masks[box.lesion_id], mask),
                    point_dice=dice(point_masks[box.lesion_id], mask),
                )
            )
    seconds_per_lesion = (time.perf_counter() - started) / (2 * max(len(rows), 1))

    _print_table(rows, seconds_per_lesion)
    return rows


def _print_table(rows: list[LesionResult], seconds_per_lesion: float) -> None:
    print()
    print(f"{'case':34s} {'lesion':>6s} {'ellipsoid':>9s} {'box':>6s} {'point':>6s}")
    for row in rows:
        print(f"{row.case:34s} {row.lesion_id:6d} {row.ellipsoid_dice:9.3f} {row.box_dice:6.3f} {row.point_dice:6.3f}")
    for name, summary in (("mean", statistics.mean), ("median", statistics.median)):
        ellipsoid = summary(row.ellipsoid_dice for row in rows)
        box = summary(row.box_dice for row in rows)
        point = summary(row.point_dice for row in rows)
        print(f"{name:34s} {'':6s} {ellipsoid:9.3f} {box:6.3f} {point:6.3f}")
    print(f"{len(rows)} lesions, {seconds_per_lesion:.2f} s per prompt, including image reading")


def test_box_mean_dice(results):
    mean = statistics.mean(row.box_dice for row in results)

    assert mean >= BOX_MEAN_DICE_MIN, f"box mean Dice {mean:.3f} < {BOX_MEAN_DICE_MIN}"


def test_box_beats_inscribed_ellipsoid(results):
    box = statistics.mean(row.box_dice for row in results)
    ellipsoid = statistics.mean(row.ellipsoid_dice for row in results)

    assert box > ellipsoid, f"box mean Dice {box:.3f} does not beat the inscribed ellipsoid's {ellipsoid:.3f}"


def test_point_mean_dice(results):
    mean = statistics.mean(row.point_dice for row in results)

    assert mean >= POINT_MEAN_DICE_MIN, f"point mean Dice {mean:.3f} < {POINT_MEAN_DICE_MIN}"


def test_point_median_dice(results):
    median = statistics.median(row.point_dice for row in results)

    assert median >= POINT_MEDIAN_DICE_MIN, f"point median Dice {median:.3f} < {POINT_MEDIAN_DICE_MIN}"


def test_every_lesion_found(results):
    missed = [f"{row.case} lesion {row.lesion_id}" for row in results if min(row.box_dice, row.point_dice) == 0.0]

    assert not missed, f"no overlap with the lesion: {missed}"
