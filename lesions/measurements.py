"""Lesion measurements from an instance label map: volume, RECIST axes, 3D diameter,
centroid and intensity statistics.

Conventions:

- ``labels`` is a numpy array [z, y, x] on the image's grid, as
  ``SimpleITK.GetArrayFromImage`` returns it. A label value is a lesion id and 0 is
  background.
- Voxel indexes are in ITK order (x, y, z) and continuous, with integers at voxel
  centres, as in ``lesions.prompt_types``. Bounding boxes are half-open.
- "Axial" means the image's slice plane, where index z is constant, whatever the
  direction matrix. The long axis is the longest in-plane diameter over all slices
  (RECIST 1.1). The short axis is the longest chord perpendicular to the long axis in
  the same slice.
- Diameters are measured between voxel faces, not voxel centres. Each lesion voxel
  contributes the centres of its faces that border background. These are the points
  where a marching cubes surface at level 0.5 of the binary mask crosses the lines
  between lesion and background voxel centres. A sphere of radius r then
  measures 2r within one voxel size, while centre-to-centre distances would measure
  about one voxel short on average.
- Both axes are chords of the convex hull of the cross-section's face centres, and the
  3D diameter is the maximum distance between vertices of the 3D convex hull of all
  boundary face centres.
- Index offsets become millimetres through direction @ diag(spacing), so a flipped or
  oblique direction gives the same lengths as the identity.
- Units: mm and ml. World coordinates are ITK's LPS. Intensities are in image units,
  which are Hounsfield units for CT. The standard deviation is the population one
  (ddof=0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy.spatial import ConvexHull
from scipy.spatial.distance import cdist

IndexPoint = tuple[float, float, float]
IndexPair = tuple[IndexPoint, IndexPoint]

# Rows of the pairwise distance matrix computed at once when searching the farthest
# pair of hull vertices. The temporary matrix has at most 1024 x (vertex count) floats.
_DISTANCE_BLOCK_ROWS = 1024

# Slack on the edge fraction when cutting a polygon, so that a cut through a vertex
# still meets both edges at that vertex despite rounding.
_EDGE_FRACTION_SLACK = 1e-9

_MM3_PER_ML = 1000.0


@dataclass(frozen=True)
class LesionMeasurement:
    """Measurements of one lesion. Every field after ``voxel_count`` is None when the
    label map has no voxel with this lesion id."""

    lesion_id: int
    prompt: str
    voxel_count: int
    volume_ml: float | None = None
    long_axis_mm: float | None = None
    short_axis_mm: float | None = None
    # Index z of the slice that contains both axes.
    long_axis_slice: int | None = None
    long_axis_endpoints_vox: IndexPair | None = None
    short_axis_endpoints_vox: IndexPair | None = None
    max_diameter_3d_mm: float | None = None
    centroid_world_mm: IndexPoint | None = None
    intensity_mean_hu: float | None = None
    intensity_std_hu: float | None = None
    intensity_min_hu: float | None = None
    intensity_max_hu: float | None = None
    bbox_min_vox: tuple[int, int, int] | None = None
    bbox_max_vox: tuple[int, int, int] | None = None

    @property
    def found(self) -> bool:
        """Whether the label map contains this lesion."""
        return self.voxel_count > 0


@dataclass(frozen=True)
class _AxialAxes:
    long_axis_mm: float
    short_axis_mm: float
    slice_index: int
    long_axis_endpoints_vox: IndexPair
    short_axis_endpoints_vox: IndexPair


def measure_lesions(
    image: sitk.Image,
    labels: np.ndarray,
    prompts: dict[int, str] | None = None,
) -> list[LesionMeasurement]:
    """Measure every lesion of ``labels`` and every lesion id of ``prompts``, sorted by id.

    ``prompts`` maps lesion id to the description of the prompt it came from. An id in
    ``prompts`` with no voxel in ``labels`` gets ``voxel_count`` 0 and None elsewhere.
    Raises ValueError when the image is not a 3D scalar image, or when ``labels`` is not
    an integer array of the image's shape [z, y, x] or contains negative values. Also
    raises ValueError when a prompt id is not a positive integer or a prompt
    description is not a string.
    """
    prompts = dict(prompts or {})
    _validate_inputs(image, labels, prompts)
    prompts = {int(lesion_id): description for lesion_id, description in prompts.items()}

    voxels_by_id = _voxel_indexes_by_label(labels)
    index_to_mm = _index_to_mm_matrix(image)
    intensities = sitk.GetArrayViewFromImage(image)

    measurements = []
    for lesion_id in sorted(set(voxels_by_id) | set(prompts)):
        prompt = prompts.get(lesion_id, "")
        zyx = voxels_by_id.get(lesion_id)
        if zyx is None:
            measurements.append(LesionMeasurement(lesion_id=lesion_id, prompt=prompt, voxel_count=0))
        else:
            measurements.append(_measure_lesion(lesion_id, prompt, zyx, image, intensities, index_to_mm))
    return measurements


def _validate_inputs(image: sitk.Image, labels: np.ndarray, prompts: dict[int, str]) -> None:
    if image.GetDimension() != 3:
        raise ValueError(f"image must be 3D, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"image must have one component per pixel, got {image.GetNumberOfComponentsPerPixel()}"
        )
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        dtype = getattr(labels, "dtype", type(labels).__name__)
        raise ValueError(f"labels must be an integer numpy array, got {dtype}")
    expected_shape = tuple(reversed(image.GetSize()))
    if labels.shape != expected_shape:
        raise ValueError(f"labels shape {labels.shape} does not match the image's [z, y, x] shape {expected_shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must not be negative, got minimum {labels.min()}")
    for lesion_id in prompts:
        if isinstance(lesion_id, bool) or not isinstance(lesion_id, (int, np.integer)) or lesion_id <= 0:
            raise ValueError(f"prompt lesion ids must be positive integers, got {lesion_id!r}")
        if not isinstance(prompts[lesion_id], str):
            raise ValueError(f"prompt of lesion {lesion_id} must be a string, got {type(prompts[lesion_id]).__name__}")


def _voxel_indexes_by_label(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Return {lesion id: int array (3, count) of the lesion's z, y, x indexes}."""
    flat = labels.ravel()
    positions = np.flatnonzero(flat)
    values = flat[positions]
    order = np.argsort(values, kind="stable")
    positions, values = positions[order], values[order]

    ids, starts = np.unique(values, return_index=True)
    groups = np.split(positions, starts[1:])
    return {int(lesion_id): np.array(np.unravel_index(group, labels.shape)) for lesion_id, group in zip(ids, groups)}


def _index_to_mm_matrix(image: sitk.Image) -> np.ndarray:
    """Return the 3x3 matrix that maps an index offset (x, y, z) to a physical offset in mm."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    return direction @ np.diag(image.GetSpacing())


def _measure_lesion(
    lesion_id: int,
    prompt: str,
    zyx: np.ndarray,
    image: sitk.Image,
    intensities: np.ndarray,
    index_to_mm: np.ndarray,
) -> LesionMeasurement:
    low = zyx.min(axis=1)
    high = zyx.max(axis=1) + 1
    mask = np.zeros(high - low, dtype=bool)
    mask[tuple(zyx - low[:, None])] = True

    axes = _measure_axial_axes(mask, low, index_to_mm)
    values = intensities[tuple(zyx)].astype(np.float64)
    centroid_index = [float(value) for value in zyx.mean(axis=1)[::-1]]
    voxel_count = zyx.shape[1]

    return LesionMeasurement(
        lesion_id=lesion_id,
        prompt=prompt,
        voxel_count=voxel_count,
        volume_ml=float(voxel_count * abs(np.linalg.det(index_to_mm)) / _MM3_PER_ML),
        long_axis_mm=axes.long_axis_mm,
        short_axis_mm=axes.short_axis_mm,
        long_axis_slice=axes.slice_index,
        long_axis_endpoints_vox=axes.long_axis_endpoints_vox,
        short_axis_endpoints_vox=axes.short_axis_endpoints_vox,
        max_diameter_3d_mm=_max_diameter_3d(mask, low, index_to_mm),
        centroid_world_mm=tuple(image.TransformContinuousIndexToPhysicalPoint(centroid_index)),
        intensity_mean_hu=float(values.mean()),
        intensity_std_hu=float(values.std()),
        intensity_min_hu=float(values.min()),
        intensity_max_hu=float(values.max()),
        bbox_min_vox=tuple(int(value) for value in low[::-1]),
        bbox_max_vox=tuple(int(value) for value in high[::-1]),
    )


def _boundary_face_centres(mask: np.ndarray) -> np.ndarray:
    """Return the centres of the voxel faces between ``mask`` and background, as
    continuous indexes (count, ndim) in the array's own axis order."""
    padded = np.pad(mask, 1)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    faces = []
    for axis in range(mask.ndim):
        for step in (-1, 1):
            neighbour = np.roll(padded, -step, axis=axis)[inner]
            centres = np.argwhere(mask & ~neighbour).astype(np.float64)
            centres[:, axis] += step / 2
            faces.append(centres)
    return np.concatenate(faces)


def _farthest_pair(points: np.ndarray) -> tuple[int, int, float]:
    """Return (i, j, distance) of the two points farthest apart."""
    best = (0, 0, 0.0)
    for start in range(0, len(points), _DISTANCE_BLOCK_ROWS):
        squared = cdist(points[start : start + _DISTANCE_BLOCK_ROWS], points, "sqeuclidean")
        row, column = np.unravel_index(int(np.argmax(squared)), squared.shape)
        if squared[row, column] > best[2] ** 2:
            best = (start + int(row), int(column), float(np.sqrt(squared[row, column])))
    return best


def _max_diameter_3d(mask: np.ndarray, low_zyx: np.ndarray, index_to_mm: np.ndarray) -> float:
    points_xyz = _boundary_face_centres(mask)[:, ::-1] + low_zyx[::-1]
    points_mm = points_xyz @ index_to_mm.T
    hull = ConvexHull(points_mm)
    return _farthest_pair(points_mm[hull.vertices])[2]


def _measure_axial_axes(mask: np.ndarray, low_zyx: np.ndarray, index_to_mm: np.ndarray) -> _AxialAxes:
    """Find the slice with the longest in-plane diameter and measure both axes there.

    Of slices with equal long axes, the one with the lowest index z wins.
    """
    # R from the QR decomposition of the two in-plane index-to-mm columns maps an index
    # offset (x, y) to 2D millimetre coordinates in the slice plane, because
    # |R d| = |index_to_mm d| for every in-plane offset d.
    plane_from_index = np.linalg.qr(index_to_mm[:, :2])[1]

    best = None
    for offset in range(mask.shape[0]):
        if not mask[offset].any():
            continue
        polygon_vox = _cross_section_hull(mask[offset]) + low_zyx[:0:-1]
        polygon_mm = polygon_vox @ plane_from_index.T
        i, j, length = _farthest_pair(polygon_mm)
        if best is None or length > best[0]:
            best = (length, offset, polygon_vox, polygon_mm, i, j)

    length, offset, polygon_vox, polygon_mm, i, j = best
    slice_index = int(low_zyx[0]) + offset
    direction = (polygon_mm[j] - polygon_mm[i]) / length
    short_length, short_end1, short_end2 = _longest_perpendicular_chord(polygon_mm, polygon_vox, direction)

    return _AxialAxes(
        long_axis_mm=length,
        short_axis_mm=short_length,
        slice_index=slice_index,
        long_axis_endpoints_vox=(_with_z(polygon_vox[i], slice_index), _with_z(polygon_vox[j], slice_index)),
        short_axis_endpoints_vox=(_with_z(short_end1, slice_index), _with_z(short_end2, slice_index)),
    )


def _cross_section_hull(mask_2d: np.ndarray) -> np.ndarray:
    """Return the convex hull vertices of one slice's boundary faces, counterclockwise,
    as continuous indexes (x, y) relative to the slice crop."""
    # NOTE: both axes are chords of this hull, so on a concave or split cross-section
    # an axis can cross background, and a short-axis end can lie outside the lesion.
    points_xy = _boundary_face_centres(mask_2d)[:, ::-1]
    return points_xy[ConvexHull(points_xy).vertices]


def _with_z(point_xy: np.ndarray, z: int) -> IndexPoint:
    return (float(point_xy[0]), float(point_xy[1]), float(z))


def _longest_perpendicular_chord(
    polygon_mm: np.ndarray, polygon_vox: np.ndarray, direction: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Return (length, end 1, end 2) of the longest chord of a convex polygon that is
    perpendicular to the unit vector ``direction``. The ends are in index (x, y)."""
    normal = np.array([-direction[1], direction[0]])
    along = polygon_mm @ direction
    across = polygon_mm @ normal
    following = np.roll(np.arange(len(polygon_mm)), -1)

    # Cut the polygon perpendicular to ``direction`` at each vertex. The chord length
    # is concave and piecewise linear in the cut position, with breakpoints at
    # vertices, so its maximum is at one of these cuts. fraction[c, e] is where cut c
    # meets edge e, from 0 at the edge's first vertex to 1 at its second.
    edge_span = along[following] - along
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = (along[:, None] - along[None, :]) / edge_span[None, :]
    meets = np.isfinite(fraction) & (fraction >= -_EDGE_FRACTION_SLACK) & (fraction <= 1 + _EDGE_FRACTION_SLACK)
    fraction = np.clip(np.nan_to_num(fraction), 0.0, 1.0)
    position = across[None, :] + fraction * (across[following] - across)[None, :]

    upper = np.where(meets, position, -np.inf).max(axis=1)
    lower = np.where(meets, position, np.inf).min(axis=1)
    cut = int(np.argmax(upper - lower))
    upper_edge = int(np.argmax(np.where(meets[cut], position[cut], -np.inf)))
    lower_edge = int(np.argmin(np.where(meets[cut], position[cut], np.inf)))

    def end_on_edge(edge: int) -> np.ndarray:
        start, stop = polygon_vox[edge], polygon_vox[following[edge]]
        return start + fraction[cut, edge] * (stop - start)

    return float(upper[cut] - lower[cut]), end_on_edge(lower_edge), end_on_edge(upper_edge)
