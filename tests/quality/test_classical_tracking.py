"""Longitudinal tracking with the classical engine on synthetic follow-ups of real CTs.

Each follow-up comes from ``tests.followup_generator``: a real CT with a known
rigid motion, a smooth deformation, scanner noise, a narrower field of view, and a
known change of its lesion. The previous label map is the ground-truth mask, so a
tracked mask is compared with the true follow-up mask, and the measured volume change
(tracked follow-up volume minus previous volume) with the true one.

Every one of the eight real CT lesions is grown and shrunk by 3 mm, and the measured
volume change must be within 10 % of the baseline volume of the true change. One
growth misses that limit and is marked xfail with the measured numbers. Run with
``-s`` to print the numbers of every case.

The last tests use spheres on a synthetic image. With high contrast they check the
change detection itself. With a lesion too faint for it they replace the classical
engine with an ideal one, which returns each image's true lesion inside its box, and
check that the tracker's box follows growth and shrinkage when the engine does. They
need no shared data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import SimpleITK as sitk

from tests.followup_generator import LesionChange, Motion, SyntheticFollowUp, make_followup
from tests.lesion_cases import CT_LESION_CASES, LesionCase, dice, load_ct_lesion_cases, shared_data_dir
from worker.engines.base import EngineOptions, EngineStatus
from worker.engines.classical import ClassicalEngine
from worker.tracking.classical_tracker import TrackResult, track_lesions

MIN_DICE = 0.75
# Largest error of the measured volume change, as a fraction of the baseline volume.
MAX_VOLUME_CHANGE_ERROR = 0.10

# A lesion id other than 1, so that a tracker that renumbers lesions fails.
LESION_ID = 7

# Distance by which a lesion's border moves when it grows or shrinks.
CHANGE_MM = 3.0

# Cases by role. The HU median of the lesion core minus that of a 2 to 6 mm shell
# around the lesion is +78 HU for the ibsi_sts_002 sarcoma, +607 HU for the NSCLC
# tumour, and +5 HU for the DeepLesion lesion.
CONTRASTED_SOFT_TISSUE = "ibsi_sts_002"
LUNG_TUMOUR = "nsclc_lung1_001_ct_gtv"
LOW_CONTRAST_LESION = "deeplesion_000015_01_01_103-115"


@dataclass
class Tracked:
    followup: SyntheticFollowUp
    result: TrackResult
    seconds: float

    @property
    def dice(self) -> float:
        return dice(self.result.followup_labels == LESION_ID, self.followup.labels == LESION_ID)

    @property
    def volume_change_error(self) -> float:
        """Measured minus true volume change, as a fraction of the baseline volume."""
        track = self.result.lesions[LESION_ID]
        measured = track.followup_volume_ml - track.previous_volume_ml
        true = self.followup.volume_change_ml(LESION_ID)
        return (measured - true) / self.followup.baseline_volume_ml[LESION_ID]


@pytest.fixture(scope="module")
def cases() -> dict[str, LesionCase]:
    data_dir = shared_data_dir()
    if not data_dir.is_dir():
        pytest.skip(f"{data_dir} is absent; set TUMORTRACK_SHARED_DIR to the shared folder that contains data/")
    return {case.name: case for case in load_ct_lesion_cases(data_dir)}


def lesion_labels(case: LesionCase) -> np.ndarray:
    return case.lesion_masks[0].astype(np.uint16) * LESION_ID


def track(
    image: sitk.Image,
    labels: np.ndarray,
    change: LesionChange,
    motion: Motion = Motion(),
    seed: int = 1,
) -> Tracked:
    followup = make_followup(image, labels, {LESION_ID: change}, motion=motion, seed=seed)
    started = time.perf_counter()
    result = track_lesions(image, labels, followup.image, ClassicalEngine())
    tracked = Tracked(followup, result, time.perf_counter() - started)
    print(_summary(change, tracked))
    return tracked


def _summary(change: LesionChange, tracked: Tracked) -> str:
    lesion = tracked.result.lesions[LESION_ID]
    line = f"{change.kind} {change.distance_mm:g} mm: {lesion.status}, {tracked.seconds:.1f} s"
    if lesion.status == "tracked":
        line += f", Dice {tracked.dice:.3f}, volume change error {100 * tracked.volume_change_error:+.1f} %"
    return line + (f" ({lesion.note})" if lesion.note else "")


@pytest.fixture(scope="module")
def unchanged_lung_tumour(cases) -> Tracked:
    case = cases[LUNG_TUMOUR]
    return track(case.image, lesion_labels(case), LesionChange("keep"))


@pytest.fixture(scope="module")
def grown_soft_tissue(cases) -> Tracked:
    case = cases[CONTRASTED_SOFT_TISSUE]
    return track(case.image, lesion_labels(case), LesionChange("grow", CHANGE_MM))


@pytest.fixture(scope="module")
def shrunk_lung_tumour(cases) -> Tracked:
    case = cases[LUNG_TUMOUR]
    return track(case.image, lesion_labels(case), LesionChange("shrink", CHANGE_MM))


def test_unchanged_lesion_tracked(unchanged_lung_tumour):
    assert unchanged_lung_tumour.result.lesions[LESION_ID].status == "tracked"
    assert unchanged_lung_tumour.dice >= MIN_DICE
    assert abs(unchanged_lung_tumour.volume_change_error) <= MAX_VOLUME_CHANGE_ERROR


def test_grown_lesion_tracked(grown_soft_tissue):
    assert grown_soft_tissue.result.lesions[LESION_ID].status == "tracked"
    assert grown_soft_tissue.dice >= MIN_DICE


def test_shrunk_lesion_tracked(shrunk_lung_tumour):
    assert shrunk_lung_tumour.result.lesions[LESION_ID].status == "tracked"
    assert shrunk_lung_tumour.dice >= MIN_DICE


# ibsi_sts_019 (+11 HU) grows into tissue that looks like its own border: the front
# millimetre of the growth shows on too few voxels to win the vote.
MISSED_GROWTH = pytest.mark.xfail(
    strict=True,
    reason="the change is measured 18 % of the baseline volume short (27 % with other noise): "
    "the outer millimetre of a 3 mm growth is missed on this faint lesion",
)


@pytest.mark.parametrize("kind", ["grow", "shrink"])
@pytest.mark.parametrize("case_name", [name for name, _, _ in CT_LESION_CASES])
def test_volume_change_within_limit(cases, case_name, kind, request):
    if (case_name, kind) == ("ibsi_sts_019", "grow"):
        request.applymarker(MISSED_GROWTH)
    case = cases[case_name]

    tracked = track(case.image, lesion_labels(case), LesionChange(kind, CHANGE_MM))

    assert tracked.result.lesions[LESION_ID].status == "tracked"
    assert tracked.dice >= MIN_DICE
    assert abs(tracked.volume_change_error) <= MAX_VOLUME_CHANGE_ERROR


def test_identical_followup_keeps_every_volume(cases):
    # Faint lesions go through the engine and contrasted ones through change
    # detection. Either way, a scan compared with itself must show no change.
    for case in cases.values():
        labels = lesion_labels(case)

        result = track_lesions(case.image, labels, sitk.Image(case.image), ClassicalEngine())

        track = result.lesions[LESION_ID]
        assert track.status == "tracked", f"{case.name}: {track.note}"
        assert track.followup_volume_ml == pytest.approx(track.previous_volume_ml, rel=0.02), case.name


def test_tracked_labels_keep_ids_only(unchanged_lung_tumour, grown_soft_tissue):
    for tracked in (unchanged_lung_tumour, grown_soft_tissue):
        assert set(np.unique(tracked.result.followup_labels)) == {0, LESION_ID}
        assert set(tracked.result.lesions) == {LESION_ID}


@pytest.mark.parametrize("case_name", [CONTRASTED_SOFT_TISSUE, LUNG_TUMOUR])
def test_removed_lesion_disappeared(cases, case_name):
    case = cases[case_name]

    tracked = track(case.image, lesion_labels(case), LesionChange("remove"))

    assert tracked.result.lesions[LESION_ID].status == "disappeared"
    assert not tracked.result.followup_labels.any()
    assert tracked.result.lesions[LESION_ID].followup_volume_ml == 0.0


@pytest.mark.xfail(
    strict=True,
    reason="the removed lesion, 5 HU brighter than the tissue around it, keeps 6 % of its carried mask "
    "where the evidence is too weak, over the 5 % under which a lesion counts as gone",
)
def test_removed_low_contrast_lesion_disappeared(cases):
    case = cases[LOW_CONTRAST_LESION]

    tracked = track(case.image, lesion_labels(case), LesionChange("remove"))

    assert tracked.result.lesions[LESION_ID].status == "disappeared"


def test_chain_of_followups_keeps_ids(cases, grown_soft_tissue):
    # The second follow-up moves the first one's true image and labels again, and is
    # tracked from the first follow-up's tracked labels, as the service would.
    first = grown_soft_tissue
    followup = make_followup(
        first.followup.image,
        first.followup.labels,
        {LESION_ID: LesionChange("keep")},
        motion=Motion(rotation_degrees=(-2.0, 1.0, -2.5), translation_mm=(-3.0, 4.0, -2.0), crop_mm=(5.0, 5.0, 3.0)),
        seed=2,
    )

    second = track_lesions(first.followup.image, first.result.followup_labels, followup.image, ClassicalEngine())

    assert second.lesions[LESION_ID].status == "tracked"
    assert set(np.unique(second.followup_labels)) == {0, LESION_ID}
    assert dice(second.followup_labels == LESION_ID, followup.labels == LESION_ID) >= MIN_DICE


def test_other_voxel_size_tracked(cases):
    case = cases[LUNG_TUMOUR]

    motion = Motion(spacing=(0.8, 0.8, 2.5))

    tracked = track(case.image, lesion_labels(case), LesionChange("keep"), motion=motion, seed=2)

    assert tracked.followup.image.GetSpacing() == pytest.approx((0.8, 0.8, 2.5))
    assert tracked.result.lesions[LESION_ID].status == "tracked"
    assert tracked.dice >= MIN_DICE


def test_lesion_outside_field_of_view(cases):
    case = cases[CONTRASTED_SOFT_TISSUE]
    followup = make_followup(case.image, lesion_labels(case), {LESION_ID: LesionChange("keep")}, seed=1)
    # The lesion spans x indexes 52 to 108; keep only x below 60 of the follow-up.
    cropped = followup.image[:60, :, :]

    result = track_lesions(case.image, lesion_labels(case), cropped, ClassicalEngine())

    assert result.lesions[LESION_ID].status == "outside_field_of_view"
    assert result.lesions[LESION_ID].fraction_inside_field_of_view < 0.5
    assert not result.followup_labels.any()


@pytest.mark.parametrize("columns", [100, 120])
def test_narrower_followup_registered(cases, columns):
    # The follow-up is the baseline cut to its first columns along x, which leaves 78 %
    # and 98 % of the lung tumour inside. Started from the centres of mass alone,
    # the registration ended about 75 mm off and called the lesion outside the field of view.
    case = cases[LUNG_TUMOUR]
    labels = lesion_labels(case)
    followup = case.image[:columns, :, :]

    result = track_lesions(case.image, labels, followup, ClassicalEngine())

    centre = followup.TransformContinuousIndexToPhysicalPoint([(size - 1) / 2 for size in followup.GetSize()])
    assert np.linalg.norm(np.subtract(result.transform.TransformPoint(centre), centre)) < 2.0
    assert result.lesions[LESION_ID].status == "tracked"
    assert dice(result.followup_labels == LESION_ID, labels[:, :, :columns] == LESION_ID) >= 0.9


def test_lesion_smaller_than_followup_voxels_not_found(cases):
    # A one-voxel lesion next to the real one, and follow-up voxels 3 times larger
    # along x and y: linear interpolation never reaches 0.5, so its warped mask is empty.
    case = cases[CONTRASTED_SOFT_TISSUE]
    labels = lesion_labels(case)
    labels[24, 40, 40] = 3
    spacing = tuple(3 * s for s in case.image.GetSpacing()[:2]) + (case.image.GetSpacing()[2],)
    followup = make_followup(case.image, labels, {}, motion=Motion(spacing=spacing), seed=1)

    result = track_lesions(case.image, labels, followup.image, ClassicalEngine(), transform=followup.transform)

    assert result.lesions[3].status == "not_found"
    assert result.lesions[LESION_ID].status == "tracked"
    assert set(np.unique(result.followup_labels)) == {0, LESION_ID}


class IdealEngine:
    """An engine that returns the true lesion mask of each image inside each box prompt."""

    name = "ideal"

    def __init__(self, lesions: dict[int, np.ndarray]):
        # Keyed by id() of the SimpleITK image the tracker passes in.
        self.lesions = lesions
        self.boxes: list[tuple[tuple[int, int, int], tuple[int, int, int]]] = []

    def status(self) -> EngineStatus:
        return EngineStatus(name=self.name, ready=True)

    def segment(self, image, prompts, options: EngineOptions, progress=None) -> dict[int, np.ndarray]:
        lesion = self.lesions[id(image)]
        masks = {}
        for prompt in prompts:
            self.boxes.append((prompt.box_min, prompt.box_max))
            in_box = np.zeros(lesion.shape, dtype=bool)
            in_box[prompt.zyx_slices()] = True
            masks[prompt.lesion_id] = lesion & in_box
        return masks


def sphere(shape: tuple[int, int, int], radius_voxels: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    centre = [(size - 1) / 2 for size in shape]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius_voxels**2


def sphere_image(lesion: np.ndarray, lesion_hu: float = 44.0, seed: int = 0, spacing_mm: float = 1.0) -> sitk.Image:
    """Soft tissue of 40 HU with a lesion and noise, in 1 mm voxels. The default lesion
    is fainter than the noise of the change between two images of other ``seed``, so
    the tracker uses the engine."""
    noise = np.random.default_rng(seed).normal(0.0, 10.0, lesion.shape)
    image = sitk.GetImageFromArray(np.where(lesion, lesion_hu, 40.0).astype(np.float32) + noise.astype(np.float32))
    image.SetOrigin((-20.0, -20.0, -20.0))
    image.SetSpacing((spacing_mm,) * 3)
    return image


@pytest.mark.parametrize(("change", "radius_after"), [("grow", 10.0), ("shrink", 4.0), ("keep", 7.0)])
def test_box_follows_ideal_engine(change, radius_after):
    shape = (41, 41, 41)
    before = sphere(shape, 7.0)
    after = sphere(shape, radius_after)
    before_image, after_image = sphere_image(before), sphere_image(after, seed=1)
    engine = IdealEngine({id(before_image): before, id(after_image): after})

    labels = before.astype(np.uint8) * 3

    result = track_lesions(before_image, labels, after_image, engine, sitk.Euler3DTransform())

    assert result.lesions[3].status == "tracked", result.lesions[3].note
    np.testing.assert_array_equal(result.followup_labels == 3, after)
    print(f"{change}: boxes {engine.boxes}")


def test_empty_ideal_segmentation_disappeared():
    shape = (41, 41, 41)
    before = sphere(shape, 7.0)
    gone = np.zeros(shape, dtype=bool)
    before_image, gone_image = sphere_image(before), sphere_image(gone, seed=1)
    engine = IdealEngine({id(before_image): before, id(gone_image): gone})

    labels = before.astype(np.uint8) * 3

    result = track_lesions(before_image, labels, gone_image, engine, sitk.Euler3DTransform())

    assert result.lesions[3].status == "disappeared"
    assert not result.followup_labels.any()


# On 3 mm voxels the shells of the first 2 mm inside and outside a border hold no voxel.
@pytest.mark.parametrize("spacing_mm", [1.0, 3.0])
@pytest.mark.parametrize(("change", "radius_after"), [("grow", 10.0), ("shrink", 4.0), ("keep", 7.0)])
def test_contrasted_sphere_change_detected(change, radius_after, spacing_mm):
    shape = (41, 41, 41)
    before = sphere(shape, 7.0)
    after = sphere(shape, radius_after)
    engine = IdealEngine({})

    labels = before.astype(np.uint8) * 3
    before_image = sphere_image(before, 120.0, spacing_mm=spacing_mm)
    after_image = sphere_image(after, 120.0, seed=1, spacing_mm=spacing_mm)

    result = track_lesions(before_image, labels, after_image, engine, sitk.Euler3DTransform())

    tracked = result.followup_labels == 3
    assert result.lesions[3].status == "tracked", result.lesions[3].note
    assert engine.boxes == []
    assert dice(tracked, after) >= 0.95
    assert tracked.sum() == pytest.approx(after.sum(), rel=0.05)
