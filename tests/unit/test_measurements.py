"""Tests for lesions.measurements on synthetic spheres, ellipsoids and random blobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lesions.measurements import LesionMeasurement, measure_lesions
from tests.lesion_cases import load_ct_lesion_cases, shared_data_dir

# Diameters run between boundary voxel faces, and each face lies within half a voxel
# of the true surface. So a diameter is within one voxel size of the true value, taking
# the largest spacing in the plane (axial axes) or in 3D (3D diameter) as the size.
AXIAL_TOLERANCE_VOXELS = 1.0
DIAMETER_3D_TOLERANCE_VOXELS = 1.0

# Volume, axes and 3D diameter of a digitised ellipsoid, relative to the analytic values,
# for ellipsoids at least 24 mm across on 0.7 x 0.7 x 2.5 mm voxels.
ELLIPSOID_RELATIVE_TOLERANCE = 0.03

# Rounding slack when comparing lengths that must agree exactly in exact arithmetic.
EXACT_MM = 1e-9

ANISOTROPIC_SPACING = (0.7, 0.7, 2.5)


def make_image(size_xyz, spacing=(1.0, 1.0, 1.0), direction=None, origin=(0.0, 0.0, 0.0), values=None):
    """Build a float32 image of ``size_xyz`` from ``values`` [z, y, x], zeros by default."""
    if values is None:
        values = np.zeros(tuple(reversed(size_xyz)), dtype=np.float32)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    return image


def ellipsoid_labels(size_xyz, spacing, semi_axes_mm, centre_offset_vox=(0.3, 0.1, 0.2), label=1):
    """Label the voxels whose centres lie in an axis-aligned ellipsoid near the grid centre."""
    z, y, x = np.ogrid[: size_xyz[2], : size_xyz[1], : size_xyz[0]]
    centre = [(size - 1) / 2 + offset for size, offset in zip(size_xyz, centre_offset_vox)]
    radius = sum(
        ((grid - c) * step / semi) ** 2
        for grid, c, step, semi in zip((x, y, z), centre, spacing, semi_axes_mm)
    )
    return np.where(radius <= 1.0, label, 0).astype(np.int32)


def grid_size_for(semi_axes_mm, spacing, margin_vox=3):
    return tuple(int(math.ceil(2 * semi / step)) + 2 * margin_vox for semi, step in zip(semi_axes_mm, spacing))


def index_to_mm(image):
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return direction @ np.diag(image.GetSpacing())


def distance_mm(image, pair):
    return float(np.linalg.norm(index_to_mm(image) @ (np.array(pair[1]) - np.array(pair[0]))))


def rotation_matrix(axis, degrees):
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    angle = math.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), ANISOTROPIC_SPACING, (0.5, 0.9, 2.0)])
def test_sphere_diameters_within_one_voxel(spacing):
    radius = 10.0
    size = grid_size_for((radius,) * 3, spacing)
    labels = ellipsoid_labels(size, spacing, (radius,) * 3)

    (lesion,) = measure_lesions(make_image(size, spacing), labels)

    in_plane_voxel = max(spacing[:2])
    assert lesion.long_axis_mm == pytest.approx(2 * radius, abs=AXIAL_TOLERANCE_VOXELS * in_plane_voxel)
    assert lesion.short_axis_mm == pytest.approx(2 * radius, abs=AXIAL_TOLERANCE_VOXELS * in_plane_voxel)
    assert lesion.max_diameter_3d_mm == pytest.approx(2 * radius, abs=DIAMETER_3D_TOLERANCE_VOXELS * max(spacing))


@pytest.mark.parametrize(
    "semi_axes_mm",
    [(20.0, 12.0, 16.0), (12.0, 20.0, 16.0), (15.0, 10.0, 25.0), (18.0, 18.0, 14.0)],
)
def test_ellipsoid_on_anisotropic_grid(semi_axes_mm):
    a, b, c = semi_axes_mm
    size = grid_size_for(semi_axes_mm, ANISOTROPIC_SPACING)
    labels = ellipsoid_labels(size, ANISOTROPIC_SPACING, semi_axes_mm)

    (lesion,) = measure_lesions(make_image(size, ANISOTROPIC_SPACING), labels)

    tolerance = ELLIPSOID_RELATIVE_TOLERANCE
    assert lesion.long_axis_mm == pytest.approx(2 * max(a, b), rel=tolerance)
    assert lesion.short_axis_mm == pytest.approx(2 * min(a, b), rel=tolerance)
    assert lesion.max_diameter_3d_mm == pytest.approx(2 * max(a, b, c), rel=tolerance)
    assert lesion.volume_ml == pytest.approx(4 / 3 * math.pi * a * b * c / 1000, rel=tolerance)


def test_ellipsoid_long_axis_on_central_slice():
    spacing = ANISOTROPIC_SPACING
    size = grid_size_for((20.0, 12.0, 16.0), spacing)
    labels = ellipsoid_labels(size, spacing, (20.0, 12.0, 16.0), centre_offset_vox=(0.0, 0.0, 0.0))

    (lesion,) = measure_lesions(make_image(size, spacing), labels)

    assert lesion.long_axis_slice == (size[2] - 1) // 2
    long_end1, long_end2 = lesion.long_axis_endpoints_vox
    assert abs(long_end2[0] - long_end1[0]) > abs(long_end2[1] - long_end1[1])


def test_endpoints_match_reported_lengths():
    spacing = (0.6, 0.8, 2.0)
    size = grid_size_for((14.0, 9.0, 10.0), spacing)
    labels = ellipsoid_labels(size, spacing, (14.0, 9.0, 10.0))
    image = make_image(size, spacing, direction=rotation_matrix((1, 2, 3), 25))

    (lesion,) = measure_lesions(image, labels)

    assert distance_mm(image, lesion.long_axis_endpoints_vox) == pytest.approx(lesion.long_axis_mm, abs=1e-6)
    assert distance_mm(image, lesion.short_axis_endpoints_vox) == pytest.approx(lesion.short_axis_mm, abs=1e-6)
    for point in lesion.long_axis_endpoints_vox + lesion.short_axis_endpoints_vox:
        assert point[2] == lesion.long_axis_slice


def test_short_axis_perpendicular_to_long_axis():
    spacing = (0.6, 0.8, 2.0)
    size = grid_size_for((14.0, 9.0, 10.0), spacing)
    labels = ellipsoid_labels(size, spacing, (14.0, 9.0, 10.0))
    image = make_image(size, spacing, direction=rotation_matrix((0, 0, 1), 40))

    (lesion,) = measure_lesions(image, labels)

    matrix = index_to_mm(image)
    long_vector = matrix @ np.subtract(*lesion.long_axis_endpoints_vox[::-1])
    short_vector = matrix @ np.subtract(*lesion.short_axis_endpoints_vox[::-1])
    cosine = long_vector @ short_vector / (np.linalg.norm(long_vector) * np.linalg.norm(short_vector))
    assert abs(cosine) < 1e-9


@pytest.mark.parametrize(
    "direction",
    [
        np.diag([-1.0, 1.0, 1.0]),
        np.diag([1.0, -1.0, -1.0]),
        rotation_matrix((1, 2, 3), 30),
        rotation_matrix((0, 1, 1), 75) @ np.diag([1.0, -1.0, 1.0]),
    ],
    ids=["flip-x", "flip-yz", "oblique", "oblique-flipped"],
)
def test_direction_does_not_change_lengths(direction):
    spacing = ANISOTROPIC_SPACING
    size = grid_size_for((11.0, 7.0, 9.0), spacing)
    labels = ellipsoid_labels(size, spacing, (11.0, 7.0, 9.0))
    (reference,) = measure_lesions(make_image(size, spacing), labels)

    (lesion,) = measure_lesions(make_image(size, spacing, direction=direction), labels)

    assert lesion.long_axis_mm == pytest.approx(reference.long_axis_mm, abs=EXACT_MM)
    assert lesion.short_axis_mm == pytest.approx(reference.short_axis_mm, abs=EXACT_MM)
    assert lesion.max_diameter_3d_mm == pytest.approx(reference.max_diameter_3d_mm, abs=EXACT_MM)
    assert lesion.volume_ml == pytest.approx(reference.volume_ml, abs=EXACT_MM)
    assert lesion.long_axis_slice == reference.long_axis_slice


def test_centroid_matches_itk_transform():
    spacing = (0.8, 0.7, 2.5)
    size = (20, 18, 10)
    labels = np.zeros((10, 18, 20), dtype=np.int16)
    labels[2:5, 3:9, 4:15] = 7
    labels[5, 3, 4] = 7
    image = make_image(size, spacing, direction=rotation_matrix((1, 1, 0), 20), origin=(-120.5, 33.0, 410.0))

    (lesion,) = measure_lesions(image, labels)

    z, y, x = np.nonzero(labels)
    expected = image.TransformContinuousIndexToPhysicalPoint((x.mean(), y.mean(), z.mean()))
    assert lesion.centroid_world_mm == pytest.approx(expected, abs=1e-9)


def test_intensity_statistics_from_image():
    rng = np.random.default_rng(7)
    values = rng.normal(40.0, 25.0, size=(8, 12, 14)).astype(np.float32)
    labels = np.zeros(values.shape, dtype=np.uint8)
    labels[2:6, 3:9, 4:10] = 1
    image = make_image((14, 12, 8), values=values)

    (lesion,) = measure_lesions(image, labels)

    inside = values[labels == 1].astype(np.float64)
    assert lesion.intensity_mean_hu == pytest.approx(inside.mean())
    assert lesion.intensity_std_hu == pytest.approx(inside.std())
    assert lesion.intensity_min_hu == pytest.approx(inside.min())
    assert lesion.intensity_max_hu == pytest.approx(inside.max())


def test_bbox_half_open_xyz():
    labels = np.zeros((10, 12, 14), dtype=np.int32)
    labels[2:5, 3:7, 4:11] = 2

    (lesion,) = measure_lesions(make_image((14, 12, 10)), labels)

    assert lesion.bbox_min_vox == (4, 3, 2)
    assert lesion.bbox_max_vox == (11, 7, 5)
    assert lesion.voxel_count == 3 * 4 * 7


def test_single_voxel_lesion():
    spacing = (0.7, 0.7, 2.5)
    labels = np.zeros((5, 5, 5), dtype=np.int32)
    labels[2, 2, 2] = 1

    (lesion,) = measure_lesions(make_image((5, 5, 5), spacing), labels)

    assert lesion.long_axis_mm == pytest.approx(0.7)
    assert lesion.short_axis_mm == pytest.approx(0.7)
    assert lesion.max_diameter_3d_mm == pytest.approx(2.5)
    assert lesion.volume_ml == pytest.approx(0.7 * 0.7 * 2.5 / 1000)


def test_long_axis_slice_with_widest_cross_section():
    labels = np.zeros((12, 40, 40), dtype=np.int32)
    y, x = np.ogrid[:40, :40]
    labels[3][(x - 20) ** 2 + (y - 20) ** 2 <= 5**2] = 4
    labels[9][(x - 15) ** 2 + (y - 22) ** 2 <= 12**2] = 4

    (lesion,) = measure_lesions(make_image((40, 40, 12)), labels)

    assert lesion.long_axis_slice == 9
    assert lesion.long_axis_mm == pytest.approx(25.0, abs=AXIAL_TOLERANCE_VOXELS)
    assert lesion.bbox_min_vox[2] == 3


def test_prompted_lesion_missing_from_labels():
    labels = np.zeros((6, 6, 6), dtype=np.int32)
    labels[1:3, 1:3, 1:3] = 2

    measurements = measure_lesions(make_image((6, 6, 6)), labels, {1: "box voxel", 2: "point world"})

    assert [m.lesion_id for m in measurements] == [1, 2]
    assert measurements[0] == LesionMeasurement(lesion_id=1, prompt="box voxel", voxel_count=0)
    assert not measurements[0].found
    assert measurements[1].found
    assert measurements[1].prompt == "point world"


def test_empty_label_map_without_prompts():
    labels = np.zeros((4, 4, 4), dtype=np.int32)

    assert measure_lesions(make_image((4, 4, 4)), labels) == []


def test_unprompted_labels_sorted_by_id():
    labels = np.zeros((6, 6, 6), dtype=np.int32)
    labels[0, 0, 0] = 9
    labels[5, 5, 5] = 3

    measurements = measure_lesions(make_image((6, 6, 6)), labels)

    assert [m.lesion_id for m in measurements] == [3, 9]
    assert [m.prompt for m in measurements] == ["", ""]


@pytest.mark.timeout(60)
def test_100k_voxel_lesion_measured():
    spacing = (1.0, 1.0, 1.0)
    labels = ellipsoid_labels((70, 70, 70), spacing, (29.0, 29.0, 29.0))
    assert labels.sum() > 100_000

    (lesion,) = measure_lesions(make_image((70, 70, 70), spacing), labels)

    assert lesion.max_diameter_3d_mm == pytest.approx(58.0, abs=DIAMETER_3D_TOLERANCE_VOXELS)


def test_measurements_are_plain_python_types():
    labels = np.zeros((6, 6, 6), dtype=np.uint16)
    labels[1:4, 1:4, 1:4] = 1

    (lesion,) = measure_lesions(make_image((6, 6, 6)), labels)

    for name in ("volume_ml", "long_axis_mm", "short_axis_mm", "max_diameter_3d_mm", "intensity_mean_hu"):
        assert type(getattr(lesion, name)) is float
    assert type(lesion.long_axis_slice) is int
    assert all(type(value) is int for value in lesion.bbox_min_vox + lesion.bbox_max_vox)
    assert all(type(value) is float for value in lesion.centroid_world_mm)


def test_rejects_2d_image():
    image = sitk.Image(4, 4, sitk.sitkFloat32)

    with pytest.raises(ValueError, match="3D"):
        measure_lesions(image, np.zeros((4, 4), dtype=np.int32))


def test_rejects_vector_image():
    image = sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)

    with pytest.raises(ValueError, match="one component"):
        measure_lesions(image, np.zeros((4, 4, 4), dtype=np.int32))


def test_rejects_boolean_labels():
    with pytest.raises(ValueError, match="integer"):
        measure_lesions(make_image((4, 4, 4)), np.zeros((4, 4, 4), dtype=bool))


def test_rejects_labels_of_other_shape():
    with pytest.raises(ValueError, match="shape"):
        measure_lesions(make_image((4, 5, 6)), np.zeros((4, 5, 6), dtype=np.int32))


def test_rejects_negative_labels():
    labels = np.zeros((4, 4, 4), dtype=np.int32)
    labels[0, 0, 0] = -1

    with pytest.raises(ValueError, match="negative"):
        measure_lesions(make_image((4, 4, 4)), labels)


@pytest.mark.parametrize("lesion_id", [0, -2, "1", True])
def test_rejects_invalid_prompt_id(lesion_id):
    with pytest.raises(ValueError, match="positive integers"):
        measure_lesions(make_image((4, 4, 4)), np.zeros((4, 4, 4), dtype=np.int32), {lesion_id: "box"})


def test_rejects_prompt_that_is_not_string():
    with pytest.raises(ValueError, match="must be a string"):
        measure_lesions(make_image((4, 4, 4)), np.zeros((4, 4, 4), dtype=np.int32), {1: None})


def test_numpy_prompt_id_becomes_int():
    labels = np.zeros((4, 4, 4), dtype=np.int32)

    (lesion,) = measure_lesions(make_image((4, 4, 4)), labels, {np.int64(2): "box"})

    assert type(lesion.lesion_id) is int


@settings(max_examples=60, deadline=None)
@given(
    mask=arrays(bool, (4, 6, 7)).filter(lambda mask: mask.any()),
    spacing=st.tuples(*[st.floats(0.3, 3.0)] * 3),
)
def test_random_blob_invariants(mask, spacing):
    image = make_image((7, 6, 4), spacing, direction=rotation_matrix((1, 2, 2), 33))
    labels = mask.astype(np.int32) * 5

    (lesion,) = measure_lesions(image, labels)

    assert lesion.voxel_count == int(mask.sum())
    assert lesion.volume_ml == pytest.approx(mask.sum() * np.prod(spacing) / 1000)
    assert lesion.short_axis_mm <= lesion.long_axis_mm + EXACT_MM
    assert lesion.long_axis_mm <= lesion.max_diameter_3d_mm + EXACT_MM
    assert mask[lesion.long_axis_slice].any()
    assert distance_mm(image, lesion.long_axis_endpoints_vox) == pytest.approx(lesion.long_axis_mm)
    assert distance_mm(image, lesion.short_axis_endpoints_vox) == pytest.approx(lesion.short_axis_mm)


@pytest.mark.skipif(not shared_data_dir().exists(), reason="shared CT cases not found")
def test_real_ct_lesions_within_bbox_bounds():
    for case in load_ct_lesion_cases(shared_data_dir()):
        labels = np.zeros(case.lesion_masks[0].shape, dtype=np.int32)
        for lesion_id, mask in enumerate(case.lesion_masks, start=1):
            labels[mask] = lesion_id
        spacing = np.array(case.image.GetSpacing())

        for lesion in measure_lesions(case.image, labels):
            # Face-to-face distances cannot be shorter than the widest bbox side or
            # longer than the bbox diagonal, both in mm between voxel edges.
            extent_mm = (np.array(lesion.bbox_max_vox) - np.array(lesion.bbox_min_vox)) * spacing
            assert lesion.max_diameter_3d_mm >= extent_mm.max() - EXACT_MM, case.name
            assert lesion.max_diameter_3d_mm <= np.linalg.norm(extent_mm) + EXACT_MM, case.name
            assert lesion.long_axis_mm <= np.linalg.norm(extent_mm[:2]) + EXACT_MM, case.name
            assert lesion.short_axis_mm <= lesion.long_axis_mm, case.name
            assert lesion.long_axis_mm <= lesion.max_diameter_3d_mm + EXACT_MM, case.name
