"""Classical lesion segmentation from a box or a point on CT, without learned weights.

Both prompt kinds run the same steps on a crop around the prompt:

1. Shape prior. An ellipsoid gives every voxel a normalized radius ``r``: 0 at
   the prompt centre and 1 on the ellipsoid surface. For a box, this is the
   ellipsoid inscribed in the box. For a point, rays cast from the point stop
   where the smoothed HU values leave the range seen around the point, and an
   ellipsoid centred on the point is fitted to the ray lengths. The prior log-odds
   of "lesion" fall linearly with ``r`` (a logistic prior probability).
2. Intensity model. A histogram of the smoothed HU values near the centre
   (foreground) is compared with a histogram of those outside the ellipsoid
   (background). Their weighted log-likelihood ratio is added to the prior
   log-odds.
3. Clean-up. The posterior probability is smoothed and thresholded at 0.5. The
   mask is opened, reduced to the component that contains the prompt centre, and
   hole-filled. A box mask is clipped to its box.

All distances are in millimetres, so anisotropic voxels (for example
0.98 x 0.98 x 3.27 mm) need no resampling. Index space is used throughout, so
the direction matrix of the image does not matter.

Known weaknesses:

- Where a tumour has the same HU as the tissue around it, the intensity model
  cannot separate the two. Examples are a sarcoma inside muscle or a liver
  lesion without contrast. A box mask then stays close to the prior ellipsoid.
  Rays from a point run on into the muscle, so the point mask is often several
  times too large. Two IBSI soft-tissue sarcomas reach point Dice 0.31 and 0.44
  in ``tests/quality/test_classical_dice.py``.
- Heterogeneous tumours with necrotic or aerated parts (many lung tumours) stop
  rays early, so point masks of such tumours come out too small.
- The prior is an ellipsoid, so lobulated, elongated or curved lesions lose
  their thin parts, and a point prompt far from the lesion centre gives a
  poorly fitted ellipsoid.
- Point prompts find lesions of up to ``POINT_MAX_RADIUS_MM`` in radius.
- A lesion cut by the image border has a box that the border clips. The
  ellipsoid inscribed in that box is then too short along the clipped axis.
"""

from __future__ import annotations

import warnings

import cc3d
import numpy as np
from scipy import ndimage, special

# --- crop ---------------------------------------------------------------------
# Background samples need tissue beyond the box. A 10 mm margin covers the fat or
# muscle layer around most soft-tissue lesions without reaching distant organs.
BOX_CROP_MARGIN_MM = 10.0

# --- shape prior ----------------------------------------------------------------
# A box touches its lesion only at a few extreme points, and users draw boxes a
# little loose. So the lesion fills only the inner part of the inscribed ellipsoid,
# and the prior probability is 0.5 at 0.85 of its radius.
# NOTE: 0.85 suits boxes about 2 voxels larger than the lesion on each side
# (2 mm in-plane, 6.5 mm across 3.3 mm slices). Much looser boxes give masks that
# are too large, because intensity rarely corrects the prior on soft tissue.
BOX_PRIOR_HALF_RADIUS = 0.85
# The ellipsoid fitted to the rays already estimates the lesion surface itself.
POINT_PRIOR_HALF_RADIUS = 1.0
# Width of the logistic fall-off of the prior, in normalized radius (about 2 mm
# on a 25 mm lesion radius).
PRIOR_EDGE_WIDTH = 0.08

# --- intensity model --------------------------------------------------------------
# CT noise is 10-20 HU per voxel. A 1 mm Gaussian removes most of it and keeps
# lesion edges, which are several millimetres wide on CT anyway.
SMOOTHING_SIGMA_MM = 1.0
# HU range of the histograms, from air to dense bone. Values outside are clipped.
HISTOGRAM_RANGE_HU = (-1000.0, 1500.0)
HISTOGRAM_BIN_HU = 5.0
# Kernel width of the histogram density estimate, about twice the CT noise.
HISTOGRAM_KERNEL_HU = 25.0
# Density floor, as a fraction of a uniform density, which keeps the logarithm
# finite for HU values that one of the two samples lacks.
HISTOGRAM_FLOOR = 1e-3
# Foreground samples start inside this normalized radius, where nearly every
# voxel belongs to the lesion.
CORE_RADIUS = 0.5
# Background samples start beyond this normalized radius.
SHELL_RADIUS = 1.1
# Weight of the intensity log-likelihood ratio against the prior log-odds. It is
# below 1 because neighbouring voxels are correlated, so their evidence overlaps.
INTENSITY_WEIGHT = 0.7
# Clip on the per-voxel intensity log-likelihood ratio, so that no HU value alone
# can override a confident prior.
MAX_INTENSITY_LOG_RATIO = 4.0

# --- clean-up ---------------------------------------------------------------------
# Smoothing of the posterior probability, because lesion borders are smooth at the 2 mm scale.
POSTERIOR_SMOOTHING_MM = 1.5
# Opening radius, which removes strands thinner than about 4 mm in-plane, such as vessels.
OPENING_RADIUS_MM = 2.0

# --- point prompts ----------------------------------------------------------------
# Largest lesion radius searched from a point, for lesions up to 12 cm across.
POINT_MAX_RADIUS_MM = 60.0
# Smallest lesion radius returned for a point, because lesions under 5 mm across
# are at the resolution limit of CT.
POINT_MIN_RADIUS_MM = 2.5
# Radius of the sphere around the point whose HU values define "lesion-like".
SEED_RADIUS_MM = 4.0
# A ray sample is lesion-like within this many robust standard deviations of the
# seed median.
SEED_TOLERANCE_SIGMAS = 2.5
# Lower bound on the seed spread, so that a homogeneous seed still tolerates CT
# noise and tumour texture.
SEED_MIN_SIGMA_HU = 20.0
# A ray stops once it has stayed outside the lesion-like range for this distance,
# so that noise and small vessels inside the lesion do not stop it.
RAY_EXIT_LENGTH_MM = 3.0
# Sampling step along each ray, half an in-plane voxel of a typical CT.
RAY_STEP_MM = 0.5
# Directions cast from the point, spread evenly over the sphere.
RAY_COUNT = 256
# Each ray length is replaced by the median over this many nearest directions, so
# that a single ray that leaks along a vessel or stops at a calcification does not
# shape the ellipsoid.
RAY_NEIGHBOURS = 12
# Minimum number of rays with a known length for the ellipsoid fit. The ellipsoid
# has six unknowns, and a fit to rays from less than an octant of the sphere is unreliable.
MIN_FITTED_RAYS = RAY_COUNT // 8


def segment_box(
    volume: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    box_low_zyx: tuple[int, int, int],
    box_high_zyx: tuple[int, int, int],
) -> np.ndarray:
    """Segment the lesion in a half-open box [low, high) of ``volume`` [z, y, x].

    The box must lie inside the volume. Returns a bool mask on the volume's grid
    that is empty outside the box.
    """
    spacing = np.asarray(spacing_zyx, dtype=float)
    box_low = np.asarray(box_low_zyx, dtype=int)
    box_high = np.asarray(box_high_zyx, dtype=int)

    margin = np.ceil(BOX_CROP_MARGIN_MM / spacing).astype(int)
    crop_low = np.maximum(box_low - margin, 0)
    crop_high = np.minimum(box_high + margin, volume.shape)
    smoothed = _smooth(_crop(volume, crop_low, crop_high), spacing)

    centre = (box_low + box_high - 1) / 2.0 - crop_low
    semi_axes_mm = (box_high - box_low) / 2.0 * spacing
    radius = _ellipsoid_radius(smoothed.shape, spacing, centre, np.diag(1.0 / semi_axes_mm**2))

    in_box = np.zeros(smoothed.shape, dtype=bool)
    in_box[_slices(box_low - crop_low, box_high - crop_low)] = True
    crop_mask = _segment_with_prior(smoothed, spacing, radius, BOX_PRIOR_HALF_RADIUS, in_box)

    return _paste(crop_mask, volume.shape, crop_low)


def segment_point(
    volume: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    point_zyx: tuple[float, float, float],
) -> np.ndarray:
    """Segment the lesion around a point, a fractional voxel index (z, y, x) inside ``volume``.

    Returns a bool mask on the volume's grid. The mask is empty farther than
    ``POINT_MAX_RADIUS_MM`` plus one voxel from the point along any axis.
    """
    spacing = np.asarray(spacing_zyx, dtype=float)
    point = np.asarray(point_zyx, dtype=float)

    margin = np.ceil(POINT_MAX_RADIUS_MM / spacing).astype(int) + 1
    point_voxel = np.round(point).astype(int)
    crop_low = np.maximum(point_voxel - margin, 0)
    crop_high = np.minimum(point_voxel + margin + 1, volume.shape)
    smoothed = _smooth(_crop(volume, crop_low, crop_high), spacing)
    centre = point - crop_low

    directions = _sphere_directions(RAY_COUNT)
    ray_lengths = _cast_rays(smoothed, spacing, centre, directions)
    shape_matrix = _fit_centred_ellipsoid(directions, ray_lengths)
    radius = _ellipsoid_radius(smoothed.shape, spacing, centre, shape_matrix)

    crop_mask = _segment_with_prior(smoothed, spacing, radius, POINT_PRIOR_HALF_RADIUS, None)
    return _paste(crop_mask, volume.shape, crop_low)


def keep_main_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Keep the 26-connected components of ``mask`` with at least ``min_fraction`` of the largest one's voxels."""
    labels = cc3d.connected_components(mask, connectivity=26)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    if sizes.max() == 0:
        return np.zeros(mask.shape, dtype=bool)

    keep = sizes >= min_fraction * sizes.max()
    keep[0] = False
    return keep[labels]


def _segment_with_prior(
    smoothed: np.ndarray,
    spacing: np.ndarray,
    radius: np.ndarray,
    half_radius: float,
    allowed: np.ndarray | None,
) -> np.ndarray:
    """Combine the shape prior with the intensity model and return the cleaned crop mask.

    ``allowed`` (the box) limits the mask, and its outside counts as background.
    """
    prior_log_odds = (half_radius - radius) / PRIOR_EDGE_WIDTH

    foreground_samples = radius <= CORE_RADIUS
    background_samples = radius >= SHELL_RADIUS
    if allowed is not None:
        foreground_samples &= allowed
        background_samples |= ~allowed
    log_ratio = _intensity_log_ratio(smoothed, foreground_samples, background_samples)

    posterior = special.expit(prior_log_odds + INTENSITY_WEIGHT * log_ratio)
    posterior = ndimage.gaussian_filter(posterior, POSTERIOR_SMOOTHING_MM / spacing)
    mask = posterior > 0.5
    if allowed is not None:
        mask &= allowed
    return _clean_mask(mask, spacing, radius)


def _intensity_log_ratio(
    smoothed: np.ndarray, foreground_samples: np.ndarray, background_samples: np.ndarray
) -> np.ndarray:
    """Return log p(HU | lesion) - log p(HU | background) per voxel, from histograms of the two samples."""
    low, high = HISTOGRAM_RANGE_HU
    bins = int(round((high - low) / HISTOGRAM_BIN_HU))
    index = np.clip(((smoothed - low) / HISTOGRAM_BIN_HU).astype(np.int64), 0, bins - 1)

    foreground = _histogram_density(index[foreground_samples], bins)
    background = _histogram_density(index[background_samples], bins)
    log_ratio = np.log(foreground) - np.log(background)
    return np.clip(log_ratio[index], -MAX_INTENSITY_LOG_RATIO, MAX_INTENSITY_LOG_RATIO)


def _histogram_density(index: np.ndarray, bins: int) -> np.ndarray:
    histogram = np.bincount(index, minlength=bins).astype(np.float64)
    histogram = ndimage.gaussian_filter1d(histogram, HISTOGRAM_KERNEL_HU / HISTOGRAM_BIN_HU, mode="constant")
    histogram /= max(histogram.sum(), 1e-12)
    return np.maximum(histogram, HISTOGRAM_FLOOR / bins)


def _clean_mask(mask: np.ndarray, spacing: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Open the mask, keep the component at the prompt centre and fill its holes."""
    opened = ndimage.binary_opening(mask, structure=_ball(OPENING_RADIUS_MM, spacing))
    if opened.any():
        mask = opened

    labels = cc3d.connected_components(mask, connectivity=26)
    label = _central_label(labels, radius)
    if label == 0:
        # NOTE: reached only when the posterior leaves nothing near the prompt
        # centre. The core of the prior is a guess, not a segmentation.
        return radius <= CORE_RADIUS
    mask = labels == label

    mask = ndimage.binary_fill_holes(mask)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(mask, structure=in_plane)


def _central_label(labels: np.ndarray, radius: np.ndarray) -> int:
    """Return the label at the prompt centre, else the most common label in the core, else 0."""
    centre_index = np.unravel_index(int(np.argmin(radius)), radius.shape)
    if labels[centre_index]:
        return int(labels[centre_index])

    core_labels = labels[radius <= CORE_RADIUS]
    core_labels = core_labels[core_labels > 0]
    if core_labels.size == 0:
        return 0
    return int(np.bincount(core_labels).argmax())


def _cast_rays(
    smoothed: np.ndarray, spacing: np.ndarray, centre: np.ndarray, directions: np.ndarray
) -> np.ndarray:
    """Return, per direction, the distance in mm at which the ray leaves lesion-like HU values.

    The distance is NaN where the ray reaches the image border before it leaves the
    lesion, because the lesion may continue beyond the border.
    """
    low, high = _seed_range(smoothed, spacing, centre)

    steps = np.arange(0.0, POINT_MAX_RADIUS_MM + RAY_STEP_MM, RAY_STEP_MM)
    positions = centre[None, None, :] + steps[None, :, None] * directions[:, None, :] / spacing
    samples = ndimage.map_coordinates(
        smoothed, positions.reshape(-1, 3).T, order=1, mode="constant", cval=np.nan
    ).reshape(len(directions), len(steps))
    outside = ~((samples >= low) & (samples <= high))

    # A sample starts the exit when it and the next exit_steps - 1 samples are all outside.
    exit_steps = max(int(round(RAY_EXIT_LENGTH_MM / RAY_STEP_MM)), 1)
    outside_run = ndimage.uniform_filter1d(
        outside.astype(np.float64), exit_steps, axis=1, origin=-(exit_steps // 2), mode="nearest"
    )
    leaving = outside_run >= 1.0 - 1e-6
    leaving[:, -1] = True
    exit_index = np.argmax(leaving, axis=1)
    lengths = steps[exit_index]
    lengths[np.isnan(samples[np.arange(len(directions)), exit_index])] = np.nan

    lengths = _median_over_neighbours(lengths, directions)
    return np.clip(lengths, POINT_MIN_RADIUS_MM, POINT_MAX_RADIUS_MM)


def _seed_range(smoothed: np.ndarray, spacing: np.ndarray, centre: np.ndarray) -> tuple[float, float]:
    """Return the lesion-like HU range: seed median plus or minus a robust spread."""
    squared_mm = _squared_distance_mm(smoothed.shape, spacing, centre)
    seed = smoothed[squared_mm <= SEED_RADIUS_MM**2]
    if seed.size == 0:
        seed = smoothed[tuple(np.round(centre).astype(int))].reshape(1)

    median = float(np.median(seed))
    sigma = max(1.4826 * float(np.median(np.abs(seed - median))), SEED_MIN_SIGMA_HU)
    return median - SEED_TOLERANCE_SIGMAS * sigma, median + SEED_TOLERANCE_SIGMAS * sigma


def _median_over_neighbours(lengths: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Return the median length over each direction's nearest neighbours, ignoring NaN lengths."""
    nearest = np.argsort(-(directions @ directions.T), axis=1)[:, :RAY_NEIGHBOURS]
    with warnings.catch_warnings():
        # A direction whose neighbours all reached the image border gets NaN, without a warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(lengths[nearest], axis=1)


def _fit_centred_ellipsoid(directions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Fit the symmetric matrix A of the ellipsoid x^T A x = 1 (x in mm) to ray end points.

    A ray of unit direction u and length L ends on the ellipsoid when
    u^T A u = 1 / L^2, which is linear in the six entries of A. Fitting 1 / L^2
    gives leaked (long) rays little pull. Rays of NaN length, which reached the
    image border, are left out. The semi-axes are clipped to
    [POINT_MIN_RADIUS_MM, POINT_MAX_RADIUS_MM].
    """
    known = np.isfinite(lengths)
    if known.sum() < MIN_FITTED_RAYS:
        # NOTE: most rays reached the image border, as from a point in a corner or in a
        # volume of a few slices. The border then counts as the lesion edge, so the
        # ellipsoid is too small where the lesion continues beyond the image.
        known = np.ones(lengths.shape, dtype=bool)
        lengths = np.nan_to_num(lengths, nan=POINT_MIN_RADIUS_MM)
    directions = directions[known]
    lengths = lengths[known]

    z, y, x = directions.T
    design = np.stack([z * z, y * y, x * x, 2 * z * y, 2 * z * x, 2 * y * x], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, 1.0 / lengths**2, rcond=None)
    zz, yy, xx, zy, zx, yx = coefficients
    matrix = np.array([[zz, zy, zx], [zy, yy, yx], [zx, yx, xx]])

    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    eigenvalues = np.clip(eigenvalues, 1.0 / POINT_MAX_RADIUS_MM**2, 1.0 / POINT_MIN_RADIUS_MM**2)
    return (eigenvectors * eigenvalues) @ eigenvectors.T


def _ellipsoid_radius(
    shape: tuple[int, ...], spacing: np.ndarray, centre: np.ndarray, matrix: np.ndarray
) -> np.ndarray:
    """Return sqrt(x^T A x) per voxel, where x is the voxel's offset from ``centre`` in mm."""
    grids = np.ogrid[tuple(slice(0, size) for size in shape)]
    offsets = [(grid - c) * s for grid, c, s in zip(grids, centre, spacing)]
    squared = sum(matrix[i, j] * offsets[i] * offsets[j] for i in range(3) for j in range(3))
    return np.sqrt(np.maximum(squared, 0.0))


def _squared_distance_mm(shape: tuple[int, ...], spacing: np.ndarray, centre: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, size) for size in shape)]
    return sum(((grid - c) * s) ** 2 for grid, c, s in zip(grids, centre, spacing))


def _sphere_directions(count: int) -> np.ndarray:
    """Return ``count`` unit vectors (z, y, x) spread evenly over the sphere (Fibonacci lattice)."""
    index = np.arange(count) + 0.5
    polar = np.arccos(1.0 - 2.0 * index / count)
    azimuth = np.pi * (1.0 + 5**0.5) * index
    return np.stack([np.cos(polar), np.sin(polar) * np.sin(azimuth), np.sin(polar) * np.cos(azimuth)], axis=1)


def _smooth(crop: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(crop, SMOOTHING_SIGMA_MM / spacing)


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Return a structuring element that contains the voxels within ``radius_mm`` of its centre."""
    half = np.floor(radius_mm / spacing).astype(int)
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((grid * s) ** 2 for grid, s in zip(grids, spacing)) <= radius_mm**2 + 1e-9


def _crop(volume: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.asarray(volume[_slices(low, high)], dtype=np.float32)


def _paste(crop_mask: np.ndarray, shape: tuple[int, ...], low: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[_slices(low, low + np.asarray(crop_mask.shape))] = crop_mask
    return mask


def _slices(low: np.ndarray, high: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))
