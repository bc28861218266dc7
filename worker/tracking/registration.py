"""Register a follow-up CT to the previous time point, and carry label maps across.

Conventions:

- The follow-up is the fixed image and the previous time point the moving image.
  ``register`` returns ITK's registration transform, which maps a physical point of
  the follow-up (LPS, mm) to the matching physical point of the previous image. That
  is the direction resampling needs, so ``warp_labels`` brings a previous label map
  onto the follow-up grid with it directly.
- Label maps are numpy arrays [z, y, x] on their image's grid, 0 is background.
- The two images may differ in size, spacing, direction and field of view.

``register`` runs three stages, each on a coarse-to-fine pyramid, with the Mattes
mutual information sampled at random voxels of the fixed image: rigid (Euler3D,
started from the centres of mass), affine, then a B-spline with a coarse mesh.
HU values are clipped to a soft-tissue window first, so that air, bone and metal do
not dominate the metric, and each image is cropped to the patient's body.

NOTE: the centres of mass differ when the two fields of view cover different parts
of the body. Synthetic follow-ups of two CTs whose field of view ended 60 mm earlier
along x still registered within 1.3 mm at the lesion. Larger differences, such as a
chest CT against a whole-body CT, are untested.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from lesions.image_io import itk_error_reason

logger = logging.getLogger(__name__)

# Intensities are clipped to this HU window: it spans fat (about -100 HU) to
# contrast-enhanced soft tissue, and flattens air, lung and bone.
HU_WINDOW = (-200.0, 300.0)

# Voxels above this HU are body. Each image is cropped to their bounding box plus
# BODY_MARGIN_MM, so that the air around the patient is neither smoothed nor sampled.
BODY_THRESHOLD_HU = -500.0
BODY_MARGIN_MM = 10.0

# Registration runs on a copy resampled to voxels at least this large along each
# axis. At 2 mm the metric still resolves organ boundaries, and a 150 x 150 x 150 mm
# region has about 420 000 voxels, so every pyramid level is cheap to build.
WORKING_SPACING_MM = 2.0

# Lattice points per axis at which the transform is sampled to fit its affine
# approximation, which predicts where each lesion lands in the follow-up.
AFFINE_FIT_POINTS_PER_AXIS = 6

# A lesion is warped onto the follow-up box predicted by the affine approximation,
# grown by this margin for the deformable part. When that is not enough, the margin
# doubles until the lesion fits.
WARP_MARGIN_MM = 10.0

# The volume-preserving threshold never goes below this, so that voxels that a
# lesion barely touches do not join it.
MIN_WARP_THRESHOLD = 0.25

# Histogram bins per image of the Mattes mutual information. At 20 000 samples the
# 32 x 32 joint histogram gets about 20 samples per bin on average.
HISTOGRAM_BINS = 32

# Fixed seed for the random metric sampling, so that a job run twice gives the same
# transform.
SAMPLING_SEED = 20240601


@dataclass(frozen=True)
class _Stage:
    """Pyramid, sampling and optimizer settings of one registration stage.

    About ``samples`` fixed-image voxels are drawn at random on each pyramid level,
    which bounds the cost of one metric evaluation whatever the image size.
    """

    shrink_factors: tuple[int, ...]
    smoothing_sigmas_mm: tuple[float, ...]
    samples: int
    iterations: int


# Every stage runs on two levels of the working grid: at half resolution, then at
# full working resolution. The B-spline stage gets fewer samples because each of its
# samples costs over ten times an affine one, measured with SimpleITK 2.5 on 2 CPU
# cores. Each B-spline sample touches 64 control points.
RIGID_STAGE = _Stage(shrink_factors=(2, 1), smoothing_sigmas_mm=(2.0, 1.0), samples=20_000, iterations=60)
AFFINE_STAGE = _Stage(shrink_factors=(2, 1), smoothing_sigmas_mm=(2.0, 1.0), samples=20_000, iterations=40)
DEFORMABLE_STAGE = _Stage(shrink_factors=(2, 1), smoothing_sigmas_mm=(2.0, 1.0), samples=3_000, iterations=20)

# Step limits of the gradient descent in the rigid and affine stages, in mm of
# voxel shift (optimizer scales come from the physical shift of each parameter).
# The affine stage starts from the rigid result and takes smaller steps: with 4 mm
# steps its 12 parameters sheared a sarcoma case far from the rigid optimum.
RIGID_MAX_STEP_MM = 4.0
AFFINE_MAX_STEP_MM = 1.0
MIN_STEP_MM = 0.01

# B-spline control points are about this far apart, so the deformable stage models
# organ motion and breathing over several centimetres, not the shape of a lesion.
# A finer mesh would let the registration absorb lesion growth or shrinkage.
CONTROL_POINT_SPACING_MM = 60.0
# Mesh cells per axis at most, because the cost of a metric evaluation grows with the
# number of B-spline parameters. On a 512 x 512 x 13 CT, an 8 x 8 x 1 mesh took twice
# as long as a 4 x 4 x 1 mesh. Larger images get control points further apart instead.
MAX_MESH_CELLS = 4


class RegistrationError(RuntimeError):
    """The two images could not be registered at all."""


def register(fixed: sitk.Image, moving: sitk.Image, deformable: bool = True) -> sitk.Transform:
    """Register ``moving`` (the previous time point) to ``fixed`` (the follow-up).

    Returns a transform that maps follow-up physical points to previous-image
    physical points: a CompositeTransform of the affine and, when ``deformable``,
    the B-spline, which ITK applies first. A stage that fails in ITK leaves the
    previous stage's result. Raises ValueError when an image is not 3D scalar, and
    RegistrationError when even the rigid stage fails from both starts.
    """
    _check_image("fixed", fixed)
    _check_image("moving", moving)
    started = time.perf_counter()
    fixed_prepared = _prepare(fixed)
    moving_prepared = _prepare(moving)

    rigid, rigid_metric = _register_rigid(fixed_prepared, moving_prepared)
    affine = _register_affine(fixed_prepared, moving_prepared, rigid, rigid_metric)
    transform = sitk.CompositeTransform(affine)
    if deformable:
        try:
            transform.AddTransform(_register_bspline(fixed_prepared, moving_prepared, affine))
        except RuntimeError as error:
            # With little overlap the B-spline can move every sample out of the image.
            logger.warning("registration: B-spline stage failed, keeping the affine transform: %s", itk_error_reason(error))

    logger.info(
        "registration: fixed %s, moving %s, %s, %.1f s",
        fixed.GetSize(),
        moving.GetSize(),
        "rigid + affine + B-spline" if deformable else "rigid + affine",
        time.perf_counter() - started,
    )
    return transform


def warp_labels(
    labels_prev: np.ndarray,
    prev_image: sitk.Image,
    followup_image: sitk.Image,
    transform: sitk.Transform,
) -> np.ndarray:
    """Resample an instance label map of the previous image onto the follow-up grid.

    ``transform`` maps follow-up physical points to previous physical points, as
    ``register`` returns it. Each lesion's binary mask is resampled with linear
    interpolation and thresholded so that it keeps the volume that the interpolated
    values add up to (``volume_preserving_threshold``). Where two lesions claim a
    voxel, the one with the higher value wins. Returns an array [z, y, x] of the follow-up's shape and
    of ``labels_prev``'s dtype, with the same ids. A lesion that maps outside the
    follow-up's field of view is absent from it.
    """
    _check_labels("labels_prev", labels_prev, "prev_image", prev_image)
    _check_image("followup_image", followup_image)

    approximation = _approximate_affine(transform, followup_image)
    shape = tuple(reversed(followup_image.GetSize()))
    warped = np.zeros(shape, dtype=labels_prev.dtype)
    best_value = np.zeros(shape, dtype=np.float32)
    for lesion_id in _lesion_ids(labels_prev):
        placed = _warp_lesion(labels_prev == lesion_id, prev_image, followup_image, transform, approximation)
        if placed is None:
            continue
        value, region = placed
        threshold = volume_preserving_threshold(value)
        if threshold is None:
            continue
        wins = (value >= threshold) & (value > best_value[region])
        warped[region][wins] = lesion_id
        best_value[region][wins] = value[wins]
    return warped


def volume_preserving_threshold(value: np.ndarray) -> float | None:
    """Return the threshold that keeps as many voxels as the interpolated mask values
    add up to, or None when they add up to less than half a voxel.

    A fixed threshold of 0.5 cuts the corners and thin parts of a mask resampled by
    less than a voxel. On 3 mm voxels, organs shifted by about a millimetre lost a
    median of 7 % of their volume, and small ones up to 43 %. The sum of the linearly
    interpolated values is the lesion's volume in follow-up voxels, so keeping that
    many voxels, those with the highest values, keeps the volume.
    """
    count = int(round(float(value.sum())))
    if count == 0:
        return None
    flat = value.ravel()
    rank = flat.size - min(count, flat.size)
    return max(float(np.partition(flat, rank)[rank]), MIN_WARP_THRESHOLD)


def fraction_inside_field_of_view(
    labels_prev: np.ndarray,
    prev_image: sitk.Image,
    followup_image: sitk.Image,
    transform: sitk.Transform,
) -> dict[int, float]:
    """Return {lesion id: fraction of its voxels that map inside the follow-up's field of view}.

    A previous voxel centre maps to the follow-up through the inverse of the affine
    that best fits ``transform`` (follow-up to previous) over the follow-up grid, so
    the deformable part of the transform is ignored.
    """
    _check_labels("labels_prev", labels_prev, "prev_image", prev_image)
    _check_image("followup_image", followup_image)

    approximation = _approximate_affine(transform, followup_image)
    prev_index_to_physical = _index_to_physical(prev_image)
    followup_physical_to_index = np.linalg.inv(_index_to_physical(followup_image))
    previous_to_followup = np.linalg.inv(approximation)
    # Continuous indexes inside the image lie within half a voxel of a voxel centre.
    low = np.full(3, -0.5)
    high = np.array(followup_image.GetSize()) - 0.5

    fractions = {}
    for lesion_id in _lesion_ids(labels_prev):
        index_xyz = np.argwhere(labels_prev == lesion_id)[:, ::-1].astype(np.float64)
        points = _apply(prev_index_to_physical, index_xyz)
        followup_index = _apply(followup_physical_to_index @ previous_to_followup, points)
        inside = np.all((followup_index >= low) & (followup_index <= high), axis=1)
        fractions[lesion_id] = float(inside.mean())
    return fractions


def _check_image(name: str, image: sitk.Image) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{name} must be a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel"
        )


def _check_labels(name: str, labels: np.ndarray, image_name: str, image: sitk.Image) -> None:
    _check_image(image_name, image)
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        kind = getattr(labels, "dtype", type(labels).__name__)
        raise ValueError(f"{name} must be an integer numpy array, got {kind}")
    expected = tuple(reversed(image.GetSize()))
    if labels.shape != expected:
        raise ValueError(f"{name} shape {labels.shape} does not match its image's [z, y, x] shape {expected}")


def _lesion_ids(labels: np.ndarray) -> list[int]:
    return [int(value) for value in np.unique(labels) if value != 0]


def _prepare(image: sitk.Image) -> sitk.Image:
    """Crop to the body, resample to the working grid and clip to ``HU_WINDOW``, as float32."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    image = _crop_to_body(image)
    image = _resample_to_working_grid(image)
    return sitk.Clamp(image, sitk.sitkFloat32, HU_WINDOW[0], HU_WINDOW[1])


def _resample_to_working_grid(image: sitk.Image) -> sitk.Image:
    """Resample to voxels of at least ``WORKING_SPACING_MM``, smoothing first against aliasing."""
    spacing = np.array(image.GetSpacing())
    working_spacing = np.maximum(spacing, WORKING_SPACING_MM)
    if np.allclose(working_spacing, spacing):
        return image

    # A Gaussian of half the new spacing removes most detail finer than the new voxels.
    smoothed = sitk.SmoothingRecursiveGaussian(image, (working_spacing / 2.0).tolist())
    size = np.maximum(np.round(np.array(image.GetSize()) * spacing / working_spacing), 1).astype(int)
    # Keep the physical extent: the first new voxel centre moves by half the change in voxel size.
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((working_spacing - spacing) / 2.0)
    return sitk.Resample(
        smoothed,
        size.tolist(),
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        working_spacing.tolist(),
        image.GetDirection(),
        float(HU_WINDOW[0]),
        sitk.sitkFloat32,
    )


def _crop_to_body(image: sitk.Image) -> sitk.Image:
    body = sitk.BinaryThreshold(image, BODY_THRESHOLD_HU, 1e9, 1, 0)
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(body)
    if not statistics.HasLabel(1):
        return image

    x, y, z, size_x, size_y, size_z = statistics.GetBoundingBox(1)
    margin = [int(np.ceil(BODY_MARGIN_MM / spacing)) for spacing in image.GetSpacing()]
    low = [max(start - pad, 0) for start, pad in zip((x, y, z), margin)]
    high = [
        min(start + size + pad, limit)
        for start, size, pad, limit in zip((x, y, z), (size_x, size_y, size_z), margin, image.GetSize())
    ]
    return sitk.RegionOfInterest(image, [b - a for a, b in zip(low, high)], low)


def _new_method(stage: _Stage, fixed: sitk.Image) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(stage.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(stage.smoothing_sigmas_mm))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()

    voxels = np.prod(fixed.GetSize())
    percentages = [min(1.0, stage.samples * factor**3 / voxels) for factor in stage.shrink_factors]
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(percentages, SAMPLING_SEED)
    return method


def _execute(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, stage_name: str) -> float:
    """Run one stage and return its final metric value (lower is better)."""
    started = time.perf_counter()
    method.Execute(fixed, moving)
    logger.debug(
        "registration %s: metric %.4f, %.2f s, %s",
        stage_name,
        method.GetMetricValue(),
        time.perf_counter() - started,
        method.GetOptimizerStopConditionDescription(),
    )
    return method.GetMetricValue()


def _set_gradient_descent(method: sitk.ImageRegistrationMethod, stage: _Stage, max_step_mm: float) -> None:
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=max_step_mm,
        minStep=MIN_STEP_MM,
        numberOfIterations=stage.iterations,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()


def _register_rigid(fixed: sitk.Image, moving: sitk.Image) -> tuple[sitk.Euler3DTransform, float]:
    """Run the rigid stage from two starts and return the result with the lower metric.

    The centres of mass of the windowed images, shifted to be non-negative, are close
    to each other when both images show the same part of the body. When one image
    shows less of it (a narrower field of view), they are not: a follow-up cut to 100
    of 160 columns started 75 mm off and stayed there. Scans of one patient often
    share the scanner's coordinates, so the second start is the identity.
    """
    low = HU_WINDOW[0]
    moments = sitk.CenteredTransformInitializer(
        fixed - low,
        moving - low,
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    identity = sitk.Euler3DTransform()
    identity.SetCenter(moments.GetCenter())

    results = []
    for name, start in (("rigid from centres of mass", moments), ("rigid from identity", identity)):
        rigid = sitk.Euler3DTransform(start)
        method = _new_method(RIGID_STAGE, fixed)
        _set_gradient_descent(method, RIGID_STAGE, RIGID_MAX_STEP_MM)
        method.SetInitialTransform(rigid, inPlace=True)
        try:
            results.append((_execute(method, fixed, moving, name), name, rigid))
        except RuntimeError as error:
            logger.warning("registration: %s failed: %s", name, itk_error_reason(error))
    if not results:
        raise RegistrationError("the follow-up and the previous image have too little in common to be registered")

    metric, name, rigid = min(results, key=lambda result: result[0])
    logger.debug("registration: kept the %s, metric %.4f", name, metric)
    return rigid, metric


def _register_affine(
    fixed: sitk.Image, moving: sitk.Image, rigid: sitk.Euler3DTransform, rigid_metric: float
) -> sitk.AffineTransform:
    """Refine the rigid result to an affine; keep the rigid one when the affine fits worse."""
    affine = _affine_from_rigid(rigid)
    method = _new_method(AFFINE_STAGE, fixed)
    _set_gradient_descent(method, AFFINE_STAGE, AFFINE_MAX_STEP_MM)
    method.SetInitialTransform(affine, inPlace=True)
    try:
        affine_metric = _execute(method, fixed, moving, "affine")
    except RuntimeError as error:
        logger.warning("registration: affine stage failed, keeping the rigid transform: %s", itk_error_reason(error))
        return _affine_from_rigid(rigid)

    # Both stages share pyramid, sampling and seed, so their final metrics compare
    # the same sample points.
    if affine_metric > rigid_metric:
        logger.warning(
            "registration: affine metric %.4f is worse than rigid %.4f; keeping the rigid transform",
            affine_metric,
            rigid_metric,
        )
        return _affine_from_rigid(rigid)
    return affine


def _affine_from_rigid(rigid: sitk.Euler3DTransform) -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    return affine


def _register_bspline(fixed: sitk.Image, moving: sitk.Image, affine: sitk.AffineTransform) -> sitk.BSplineTransform:
    extent_mm = [size * spacing for size, spacing in zip(fixed.GetSize(), fixed.GetSpacing())]
    mesh_size = [min(max(1, round(extent / CONTROL_POINT_SPACING_MM)), MAX_MESH_CELLS) for extent in extent_mm]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh_size, order=3)

    method = _new_method(DEFORMABLE_STAGE, fixed)
    method.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5,
        numberOfIterations=DEFORMABLE_STAGE.iterations,
        maximumNumberOfCorrections=5,
        maximumNumberOfFunctionEvaluations=DEFORMABLE_STAGE.iterations,
        costFunctionConvergenceFactor=1e7,
    )
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline, inPlace=True)
    _execute(method, fixed, moving, "B-spline")
    return bspline


def _index_to_physical(image: sitk.Image) -> np.ndarray:
    """Return the 4x4 homogeneous matrix from a continuous index (x, y, z) to a physical point."""
    matrix = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _approximate_affine(transform: sitk.Transform, followup_image: sitk.Image) -> np.ndarray:
    """Fit a 4x4 affine matrix to ``transform`` at a lattice of points spanning the follow-up grid."""
    size = np.array(followup_image.GetSize())
    axes = [np.linspace(0, extent - 1, AFFINE_FIT_POINTS_PER_AXIS) for extent in size]
    index_xyz = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    points = _apply(_index_to_physical(followup_image), index_xyz)
    mapped = np.array([transform.TransformPoint(point.tolist()) for point in points])

    homogeneous = np.hstack([points, np.ones((len(points), 1))])
    solution = np.linalg.lstsq(homogeneous, mapped, rcond=None)[0]
    matrix = np.eye(4)
    matrix[:3, :] = solution.T
    return matrix


def _warp_lesion(
    mask: np.ndarray,
    prev_image: sitk.Image,
    followup_image: sitk.Image,
    transform: sitk.Transform,
    approximation: np.ndarray,
) -> tuple[np.ndarray, tuple[slice, slice, slice]] | None:
    """Resample one lesion mask onto the part of the follow-up grid where it lands.

    Returns (interpolated mask values, the [z, y, x] slices of the follow-up they
    cover), or None when the lesion lands outside the follow-up. The region comes from
    the affine approximation of ``transform`` plus a margin. The deformation may move
    a lesion further than the margin allows. So when the warped mask is empty or
    reaches the region's edge inside the image, the margin doubles and the lesion is
    warped again, up to the whole follow-up grid. A lesion outside the field of view
    therefore costs one resampling of the whole grid.
    """
    low_zyx, high_zyx = _bounding_box(mask)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low_zyx, high_zyx))
    mask_image = sitk.GetImageFromArray(mask[crop].astype(np.float32))
    mask_image.SetOrigin(prev_image.TransformIndexToPhysicalPoint([int(v) for v in low_zyx[::-1]]))
    mask_image.SetSpacing(prev_image.GetSpacing())
    mask_image.SetDirection(prev_image.GetDirection())

    landing_low, landing_high = _landing_box(low_zyx, high_zyx, prev_image, followup_image, approximation)
    shape = np.array(followup_image.GetSize()[::-1])
    margin = np.ceil(WARP_MARGIN_MM / np.array(followup_image.GetSpacing()[::-1])).astype(int)
    while True:
        region_low = np.clip(landing_low - margin, 0, shape)
        region_high = np.clip(landing_high + margin, 0, shape)
        covers_image = np.all(region_low == 0) and np.all(region_high == shape)
        if np.any(region_high <= region_low):
            margin *= 2
            continue
        value = _resample_region(mask_image, followup_image, transform, region_low, region_high)
        found = value.max() >= 0.5
        if covers_image or (found and not _touches_inner_faces(value, region_low, region_high, shape)):
            region = tuple(slice(int(a), int(b)) for a, b in zip(region_low, region_high))
            return (value, region) if found else None
        margin *= 2


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the half-open bounding box (low, high) of a non-empty mask, [z, y, x], padded by one voxel."""
    indexes = np.argwhere(mask)
    low = np.maximum(indexes.min(axis=0) - 1, 0)
    high = np.minimum(indexes.max(axis=0) + 2, mask.shape)
    return low, high


def _landing_box(
    low_zyx: np.ndarray,
    high_zyx: np.ndarray,
    prev_image: sitk.Image,
    followup_image: sitk.Image,
    approximation: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Map the corners of a previous box [z, y, x] to a follow-up box [z, y, x], not clipped."""
    # Voxel faces lie half a voxel before a voxel centre index.
    corners_xyz = np.array(list(itertools.product(*zip(low_zyx[::-1], high_zyx[::-1]))), dtype=np.float64) - 0.5
    points = _apply(_index_to_physical(prev_image), corners_xyz)
    to_followup_index = np.linalg.inv(_index_to_physical(followup_image)) @ np.linalg.inv(approximation)
    followup_xyz = _apply(to_followup_index, points)
    low = np.floor(followup_xyz.min(axis=0))[::-1].astype(int)
    high = np.ceil(followup_xyz.max(axis=0))[::-1].astype(int) + 1
    return low, high


def _resample_region(
    mask_image: sitk.Image,
    followup_image: sitk.Image,
    transform: sitk.Transform,
    region_low: np.ndarray,
    region_high: np.ndarray,
) -> np.ndarray:
    origin = followup_image.TransformIndexToPhysicalPoint([int(v) for v in region_low[::-1]])
    warped = sitk.Resample(
        mask_image,
        [int(v) for v in (region_high - region_low)[::-1]],
        transform,
        sitk.sitkLinear,
        origin,
        followup_image.GetSpacing(),
        followup_image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(warped)


def _touches_inner_faces(value: np.ndarray, low: np.ndarray, high: np.ndarray, shape: np.ndarray) -> bool:
    """Return whether the mask reaches a face of the region that is not also a face of the image."""
    inside = value >= 0.5
    for axis in range(3):
        first = np.take(inside, 0, axis=axis)
        last = np.take(inside, -1, axis=axis)
        if (low[axis] > 0 and first.any()) or (high[axis] < shape[axis] and last.any()):
            return True
    return False
