"""Image geometry and the voxel/world conversions every prompt goes through.

Conventions: index order is ITK's (x, y, z), and world coordinates are LPS
millimetres. An integer index addresses a voxel centre, so a voxel spans
index - 0.5 to index + 0.5 along each axis. ``physical = origin + direction @
(spacing * index)``, which is what ``TransformContinuousIndexToPhysicalPoint``
computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from lesions.errors import InputError

# A label map must lie on its image's grid. Header values may differ by rounding only.
GEOMETRY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ImageGeometry:
    """Size, spacing, origin and direction of a 3D image, in ITK conventions."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major; columns are the axis directions

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader) -> "ImageGeometry":
        return cls(
            size=tuple(int(v) for v in image.GetSize()[:3]),
            spacing=tuple(float(v) for v in image.GetSpacing()[:3]),
            origin=tuple(float(v) for v in image.GetOrigin()[:3]),
            direction=_direction_3d(image.GetDirection()),
        )

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def to_physical(self, index_xyz) -> np.ndarray:
        """Map a continuous index (x, y, z) to an LPS point in mm."""
        index = np.asarray(index_xyz, dtype=float)
        return np.asarray(self.origin) + self.direction_matrix @ (np.asarray(self.spacing) * index)

    def to_continuous_index(self, point_lps) -> np.ndarray:
        """Map an LPS point in mm to a continuous index (x, y, z)."""
        offset = np.asarray(point_lps, dtype=float) - np.asarray(self.origin)
        return np.linalg.solve(self.direction_matrix, offset) / np.asarray(self.spacing)

    def contains_index(self, index_xyz) -> bool:
        """Return whether a continuous index lies inside the extent of some voxel."""
        index = np.asarray(index_xyz, dtype=float)
        return bool(np.all(index >= -0.5) and np.all(index <= np.asarray(self.size) - 0.5))

    def as_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}


def check_same_grid(labels: ImageGeometry, image: ImageGeometry, field: str, image_name: str) -> None:
    """Raise InputError (geometry_mismatch) unless the label map ``labels`` lies on the grid of ``image``."""
    same = (
        labels.size == image.size
        and np.allclose(labels.spacing, image.spacing, rtol=GEOMETRY_TOLERANCE, atol=GEOMETRY_TOLERANCE)
        and np.allclose(labels.origin, image.origin, atol=GEOMETRY_TOLERANCE * max(image.spacing) * 10)
        and np.allclose(labels.direction, image.direction, atol=GEOMETRY_TOLERANCE)
    )
    if not same:
        message = (
            f"is not on the {image_name}'s grid: mask size {list(labels.size)} spacing {np.round(labels.spacing, 4).tolist()} "
            f"origin {np.round(labels.origin, 3).tolist()}, {image_name} size {list(image.size)} "
            f"spacing {np.round(image.spacing, 4).tolist()} origin {np.round(image.origin, 3).tolist()}"
        )
        raise InputError(field, message, code="geometry_mismatch")


def _direction_3d(direction: tuple[float, ...]) -> tuple[float, ...]:
    if len(direction) == 9:
        return tuple(float(v) for v in direction)
    # A 4D direction is 16 values; its upper-left 3x3 block is the spatial part.
    matrix = np.asarray(direction, dtype=float).reshape(4, 4)[:3, :3]
    return tuple(float(v) for v in matrix.ravel())
