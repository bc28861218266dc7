"""Registration between time points and label warping, on a synthetic CT phantom."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from worker.tracking.registration import fraction_inside_field_of_view, register, volume_preserving_threshold, warp_labels

SPACING = (2.0, 2.0, 3.0)
ORIGIN = (-70.0, -60.0, 100.0)


def make_phantom(seed: int = 0) -> sitk.Image:
    """A 70 x 60 x 36 (x, y, z) CT-like volume: an elliptic body of soft tissue with
    smooth texture, two bone rods and noise, in air."""
    rng = np.random.default_rng(seed)
    shape = (36, 60, 70)
    z, y, x = np.indices(shape, dtype=np.float64)
    body = ((x - 35) / 30) ** 2 + ((y - 30) / 24) ** 2 <= 1.0

    texture = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(1.5, 3.0, 3.0))
    texture *= 80.0 / texture.std()
    array = np.where(body, 40.0 + texture, -1000.0)
    for centre_x, centre_y in ((20, 30), (48, 22)):
        array[((x - centre_x) ** 2 + (y - centre_y) ** 2 <= 9) & body] = 700.0
    array += rng.normal(0.0, 10.0, size=shape)

    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    return image


def centre_of(image: sitk.Image) -> tuple[float, ...]:
    size = np.array(image.GetSize())
    return image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist())


def body_points(image: sitk.Image, step: int = 4) -> np.ndarray:
    """Physical points of every ``step``-th body voxel, at least 5 voxels (3 along z) inside the image."""
    array = sitk.GetArrayFromImage(image)
    size_x, size_y, size_z = image.GetSize()
    points = []
    for z, y, x in np.argwhere(array > -500)[::step]:
        if 5 <= x < size_x - 5 and 5 <= y < size_y - 5 and 3 <= z < size_z - 3:
            points.append(image.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))
    return np.array(points)


def mapping_errors(found: sitk.Transform, truth: sitk.Transform, points: np.ndarray) -> np.ndarray:
    return np.array([np.linalg.norm(np.subtract(found.TransformPoint(p), truth.TransformPoint(p))) for p in points])


@pytest.fixture(scope="module")
def phantom() -> sitk.Image:
    return make_phantom()


@pytest.fixture(scope="module")
def rigid_truth(phantom) -> sitk.Euler3DTransform:
    # Follow-up to previous: 3, -2 and 2 degrees about x, y, z and a shift of a few mm.
    return sitk.Euler3DTransform(centre_of(phantom), *np.deg2rad([3.0, -2.0, 2.0]), (4.0, -3.0, 2.5))


def test_register_recovers_rigid_motion(phantom, rigid_truth):
    followup = sitk.Resample(phantom, phantom, rigid_truth, sitk.sitkLinear, -1000.0)

    transform = register(followup, phantom)

    errors = mapping_errors(transform, rigid_truth, body_points(followup))
    assert errors.mean() < 1.0, f"mean error {errors.mean():.2f} mm"
    assert np.percentile(errors, 95) < 2.0, f"95th percentile error {np.percentile(errors, 95):.2f} mm"


def test_register_across_grids_and_fields_of_view(phantom, rigid_truth):
    # The follow-up has other voxels (1.6 x 1.6 x 2.5 mm) and ends 12 mm earlier along x and y.
    spacing = (1.6, 1.6, 2.5)
    size = [int((extent * old - 12.0) / new) for extent, old, new in zip(phantom.GetSize(), SPACING, spacing)]
    followup = sitk.Resample(
        phantom, size, rigid_truth, sitk.sitkLinear, ORIGIN, spacing, phantom.GetDirection(), -1000.0, sitk.sitkFloat32
    )

    transform = register(followup, phantom)

    errors = mapping_errors(transform, rigid_truth, body_points(followup, step=10))
    assert errors.mean() < 1.0, f"mean error {errors.mean():.2f} mm"


def test_register_rigid_only_returns_affine(phantom, rigid_truth):
    followup = sitk.Resample(phantom, phantom, rigid_truth, sitk.sitkLinear, -1000.0)

    transform = register(followup, phantom, deformable=False)

    assert transform.GetNumberOfTransforms() == 1
    errors = mapping_errors(transform, rigid_truth, body_points(followup, step=10))
    assert errors.mean() < 1.0, f"mean error {errors.mean():.2f} mm"


def test_register_rejects_vector_image(phantom):
    vector = sitk.Compose(phantom, phantom)

    with pytest.raises(ValueError, match="moving"):
        register(phantom, vector)


def box_labels(image: sitk.Image, boxes: dict[int, tuple[tuple[int, int, int], tuple[int, int, int]]]) -> np.ndarray:
    labels = np.zeros(image.GetSize()[::-1], dtype=np.uint16)
    for lesion_id, (low, high) in boxes.items():
        labels[tuple(slice(a, b) for a, b in zip(low, high))] = lesion_id
    return labels


def test_warp_identity_keeps_labels(phantom):
    labels = box_labels(phantom, {2: ((5, 10, 10), (12, 20, 22)), 9: ((20, 30, 40), (26, 42, 50))})

    warped = warp_labels(labels, phantom, phantom, sitk.Euler3DTransform())

    np.testing.assert_array_equal(warped, labels)
    assert warped.dtype == labels.dtype


def test_warp_translation_shifts_labels(phantom):
    labels = box_labels(phantom, {3: ((5, 10, 10), (12, 20, 22))})
    # Follow-up point p matches previous point p + (4, -6, 3) mm: 2, -3 and 1 voxels.
    shift = sitk.TranslationTransform(3, (4.0, -6.0, 3.0))

    warped = warp_labels(labels, phantom, phantom, shift)

    expected = box_labels(phantom, {3: ((4, 13, 8), (11, 23, 20))})
    np.testing.assert_array_equal(warped, expected)


def test_warp_onto_finer_grid_keeps_volume(phantom):
    labels = box_labels(phantom, {1: ((5, 10, 10), (15, 30, 30))})
    followup = sitk.Image([105, 90, 45], sitk.sitkFloat32)
    followup.SetSpacing((1.3, 1.3, 2.4))
    followup.SetOrigin(ORIGIN)

    warped = warp_labels(labels, phantom, followup, sitk.Euler3DTransform())

    previous_ml = (labels == 1).sum() * np.prod(SPACING)
    warped_ml = (warped == 1).sum() * np.prod(followup.GetSpacing())
    assert set(np.unique(warped)) == {0, 1}
    assert warped_ml == pytest.approx(previous_ml, rel=0.1)


def test_subvoxel_shift_keeps_small_lesion_volume():
    # A ball of radius 2.5 voxels on 3 mm voxels, moved by about a third of a voxel.
    # Keeping the voxels where the interpolated mask reaches 0.5 loses 9 % of it.
    z, y, x = np.indices((20, 20, 20))
    ball = ((z - 9.5) ** 2 + (y - 9.5) ** 2 + (x - 9.5) ** 2 <= 2.5**2).astype(np.uint8)
    image = sitk.GetImageFromArray(np.zeros(ball.shape, np.float32))
    image.SetSpacing((3.0, 3.0, 3.0))
    shift = sitk.TranslationTransform(3, (1.1, -0.9, 0.8))

    warped = warp_labels(ball, image, image, shift)

    assert (warped == 1).sum() == pytest.approx(ball.sum(), rel=0.03)


def test_warp_matches_full_grid_resampling(phantom):
    # A deformation of up to about 15 mm moves lesions beyond the first warp margin.
    labels = box_labels(phantom, {4: ((8, 15, 12), (16, 28, 26)), 7: ((18, 30, 40), (28, 44, 55))})
    deformation = sitk.BSplineTransformInitializer(phantom, [2, 2, 2])
    coefficients = np.random.default_rng(3).normal(0.0, 6.0, len(deformation.GetParameters()))
    deformation.SetParameters(coefficients.tolist())
    transform = sitk.CompositeTransform([sitk.Euler3DTransform(centre_of(phantom), 0.05, 0.0, -0.04), deformation])

    warped = warp_labels(labels, phantom, phantom, transform)

    for lesion_id in (4, 7):
        mask = sitk.GetImageFromArray((labels == lesion_id).astype(np.float32))
        mask.CopyInformation(phantom)
        value = sitk.GetArrayFromImage(sitk.Resample(mask, phantom, transform, sitk.sitkLinear, 0.0))
        np.testing.assert_array_equal(warped == lesion_id, value >= volume_preserving_threshold(value))


def test_warp_lesion_outside_field_of_view_is_absent(phantom):
    labels = box_labels(phantom, {5: ((5, 10, 5), (10, 16, 12)), 6: ((20, 30, 40), (26, 42, 50))})
    # Follow-up x = previous x - 40 mm, so lesion 5 (x index 5 to 11, 2 mm voxels)
    # lands before the follow-up's first voxel.
    shift = sitk.TranslationTransform(3, (40.0, 0.0, 0.0))

    warped = warp_labels(labels, phantom, phantom, shift)
    fractions = fraction_inside_field_of_view(labels, phantom, phantom, shift)

    assert set(np.unique(warped)) == {0, 6}
    assert fractions == {5: 0.0, 6: 1.0}


def test_fraction_inside_field_of_view_partial(phantom):
    # 10 voxels wide along x, moved 6 voxels (12 mm) past the image's x = 0 edge.
    labels = box_labels(phantom, {8: ((10, 20, 0), (14, 26, 10))})
    shift = sitk.TranslationTransform(3, (12.0, 0.0, 0.0))

    fractions = fraction_inside_field_of_view(labels, phantom, phantom, shift)
    warped = warp_labels(labels, phantom, phantom, shift)

    assert fractions[8] == pytest.approx(0.4)
    assert (warped == 8).sum() == pytest.approx(0.4 * (labels == 8).sum())


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((36, 60, 70), dtype=np.float32), "integer"),
        (np.zeros((36, 60, 71), dtype=np.uint8), "shape"),
    ],
)
def test_warp_rejects_invalid_labels(phantom, labels, message):
    with pytest.raises(ValueError, match=message):
        warp_labels(labels, phantom, phantom, sitk.Euler3DTransform())


def local_shift(image: sitk.Image, centre_zyx: tuple[int, int, int], shift_x_mm: float) -> sitk.Transform:
    """A displacement field that moves follow-up points near ``centre_zyx`` by ``shift_x_mm``
    along x (Gaussian fall-off, 12 mm) and leaves the rest of the image in place."""
    z, y, x = np.indices(image.GetSize()[::-1], dtype=np.float64)
    spacing_zyx = image.GetSpacing()[::-1]
    squared = sum(((grid - c) * s) ** 2 for grid, c, s in zip((z, y, x), centre_zyx, spacing_zyx))
    field = np.zeros(z.shape + (3,))
    field[..., 0] = shift_x_mm * np.exp(-squared / (2 * 12.0**2))
    field_image = sitk.GetImageFromArray(field, isVector=True)
    field_image.CopyInformation(image)
    return sitk.DisplacementFieldTransform(field_image)


def test_warp_follows_local_deformation_beyond_margin(phantom):
    # Follow-up voxels around x index 20 show previous tissue 24 mm (12 voxels) further
    # along x, where the lesion is. The affine fit of this field is nearly the identity,
    # so the lesion lands well outside the first region searched.
    labels = box_labels(phantom, {3: ((16, 28, 30), (20, 32, 34))})
    transform = local_shift(phantom, (18, 30, 20), 24.0)

    warped = warp_labels(labels, phantom, phantom, transform)

    mask = sitk.GetImageFromArray((labels == 3).astype(np.float32))
    mask.CopyInformation(phantom)
    value = sitk.GetArrayFromImage(sitk.Resample(mask, phantom, transform, sitk.sitkLinear, 0.0))
    assert value.max() >= 0.5
    np.testing.assert_array_equal(warped == 3, value >= volume_preserving_threshold(value))
