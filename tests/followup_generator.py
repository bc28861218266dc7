"""Synthetic follow-up CTs with known motion and known lesion changes, built from a real CT.

A follow-up is made in two steps:

1. Lesion changes on the baseline grid. A lesion grows by painting a shell of
   ``distance_mm`` around it with the HU of its core. It shrinks by painting its outer
   shell of ``distance_mm`` with the HU of the tissue around it, and it is removed by
   painting all of it (and a thin rim) that way. Painted voxels get the smoothed HU of the
   nearest source voxel plus fresh noise of the source's noise level, so that the
   old lesion outline does not stay behind as an edge.
2. Motion. The changed baseline is resampled onto the follow-up grid through a known
   transform that maps follow-up physical points to baseline physical points: a
   small B-spline deformation followed by a rigid motion. The follow-up grid may
   have other voxel sizes and a smaller field of view, and gets scanner-like noise.

The true follow-up label map is the changed baseline label map resampled through the
same transform with nearest-neighbour interpolation. Volumes are in ml and distances
in mm; label maps are numpy arrays [z, y, x] as ``SimpleITK.GetArrayFromImage``
returns them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ChangeKind = Literal["keep", "grow", "shrink", "remove"]

# Painted HU values follow the source tissue smoothed with this Gaussian, so a painted
# region takes the local tissue level without copying single noisy voxels.
LEVEL_SMOOTHING_MM = 3.0
# Noise is measured as the robust spread of the image minus this finer smoothing.
NOISE_SMOOTHING_MM = 1.0
# The tissue that replaces a lesion is sampled this far outside the lesion (inner,
# outer edge), beyond the partial-volume rim of the lesion border.
SURROUNDING_SHELL_MM = (2.0, 8.0)
# A grown lesion's shell takes the HU of the lesion core, the voxels at least this
# deep inside it, because border voxels are partly the tissue around the lesion.
LESION_CORE_MM = 2.0
# A removed lesion's rim up to this distance outside its mask is repainted too, so
# that its partial-volume outline does not stay visible.
REMOVAL_RIM_MM = 1.5
# Background of resampling: air.
AIR_HU = -1000.0


@dataclass(frozen=True)
class LesionChange:
    """What happens to one lesion between baseline and follow-up."""

    kind: ChangeKind
    distance_mm: float = 0.0


@dataclass(frozen=True)
class Motion:
    """Patient motion and acquisition differences of the follow-up.

    Angles are in degrees about the x, y and z axes through the baseline's centre,
    translations in mm, and ``deformation_mm`` is the standard deviation of the
    B-spline coefficients on a 3 x 3 x 3 mesh over the baseline. ``spacing`` None keeps
    the baseline's voxel size, and ``crop_mm`` narrows the field of view on every side.
    """

    rotation_degrees: tuple[float, float, float] = (2.0, -1.5, 3.0)
    translation_mm: tuple[float, float, float] = (4.0, -3.0, 2.0)
    deformation_mm: float = 1.5
    spacing: tuple[float, float, float] | None = None
    crop_mm: tuple[float, float, float] = (10.0, 10.0, 6.0)
    noise_hu: float = 8.0


@dataclass
class SyntheticFollowUp:
    """A follow-up CT, its true label map, and the true transform and volumes."""

    image: sitk.Image
    labels: np.ndarray
    # Maps follow-up physical points to baseline physical points.
    transform: sitk.Transform
    baseline_volume_ml: dict[int, float]
    followup_volume_ml: dict[int, float] = field(default_factory=dict)

    def volume_change_ml(self, lesion_id: int) -> float:
        return self.followup_volume_ml.get(lesion_id, 0.0) - self.baseline_volume_ml[lesion_id]


def make_followup(
    image: sitk.Image,
    labels: np.ndarray,
    changes: Mapping[int, LesionChange],
    motion: Motion = Motion(),
    seed: int = 0,
) -> SyntheticFollowUp:
    """Build a follow-up of ``image`` in which each lesion of ``labels`` changes as ``changes`` sets.

    Lesions without an entry in ``changes`` are kept.
    """
    rng = np.random.default_rng(seed)
    spacing_zyx = np.array(image.GetSpacing()[::-1])
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    changed_array, changed_labels = apply_lesion_changes(array, labels, changes, spacing_zyx, rng)

    changed_image = sitk.GetImageFromArray(changed_array)
    changed_image.CopyInformation(image)
    transform = true_transform(image, motion, rng)
    grid = followup_grid(image, motion)

    followup = sitk.Resample(changed_image, grid, transform, sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    followup_array = sitk.GetArrayFromImage(followup) + rng.normal(0.0, motion.noise_hu, grid.GetSize()[::-1])
    followup_image = sitk.GetImageFromArray(followup_array.astype(np.float32))
    followup_image.CopyInformation(grid)

    labels_image = sitk.GetImageFromArray(changed_labels)
    labels_image.CopyInformation(image)
    followup_labels = sitk.GetArrayFromImage(sitk.Resample(labels_image, grid, transform, sitk.sitkNearestNeighbor, 0))

    return SyntheticFollowUp(
        image=followup_image,
        labels=followup_labels,
        transform=transform,
        baseline_volume_ml=volumes_ml(labels, image.GetSpacing()),
        followup_volume_ml=volumes_ml(followup_labels, grid.GetSpacing()),
    )


def volumes_ml(labels: np.ndarray, spacing_xyz) -> dict[int, float]:
    """Return {lesion id: volume in ml} of every lesion in ``labels``."""
    counts = np.bincount(labels.ravel())
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    return {lesion_id: float(count * voxel_ml) for lesion_id, count in enumerate(counts) if lesion_id and count}


def apply_lesion_changes(
    array: np.ndarray,
    labels: np.ndarray,
    changes: Mapping[int, LesionChange],
    spacing_zyx: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Return copies of the HU array and label map [z, y, x] with each lesion changed."""
    array = array.copy()
    labels = labels.copy()
    for lesion_id, change in changes.items():
        lesion = labels == lesion_id
        if not lesion.any():
            raise ValueError(f"lesion {lesion_id} is not in the label map")
        if change.kind == "keep":
            continue
        if change.kind in ("grow", "shrink") and change.distance_mm <= 0:
            message = f"lesion {lesion_id}: {change.kind} needs a positive distance_mm, got {change.distance_mm}"
            raise ValueError(message)

        outside_mm = ndimage.distance_transform_edt(~lesion, sampling=spacing_zyx)
        if change.kind == "grow":
            region = (outside_mm > 0) & (outside_mm <= change.distance_mm) & (labels == 0)
            _paint(array, region, _core(lesion, spacing_zyx), spacing_zyx, rng)
            labels[region] = lesion_id
        elif change.kind == "shrink":
            inside_mm = ndimage.distance_transform_edt(lesion, sampling=spacing_zyx)
            region = lesion & (inside_mm <= change.distance_mm)
            _paint(array, region, _surroundings(outside_mm, labels), spacing_zyx, rng)
            labels[region] = 0
        elif change.kind == "remove":
            region = (outside_mm <= REMOVAL_RIM_MM) & ((labels == 0) | lesion)
            _paint(array, region, _surroundings(outside_mm, labels), spacing_zyx, rng)
            labels[lesion] = 0
        else:
            raise ValueError(f"lesion {lesion_id}: unknown change {change.kind!r}; use keep, grow, shrink or remove")
    return array, labels


def _core(lesion: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    core = ndimage.distance_transform_edt(lesion, sampling=spacing_zyx) >= LESION_CORE_MM
    return core if core.any() else lesion


def _surroundings(outside_mm: np.ndarray, labels: np.ndarray) -> np.ndarray:
    inner, outer = SURROUNDING_SHELL_MM
    return (outside_mm >= inner) & (outside_mm <= outer) & (labels == 0)


def _paint(
    array: np.ndarray, region: np.ndarray, source: np.ndarray, spacing_zyx: np.ndarray, rng: np.random.Generator
) -> None:
    """Fill ``region`` with the local HU level of the nearest ``source`` voxel plus noise of the source's level."""
    if not region.any():
        return
    level = _masked_smoothing(array, source, LEVEL_SMOOTHING_MM / spacing_zyx)
    _, nearest = ndimage.distance_transform_edt(~source, sampling=spacing_zyx, return_indices=True)
    nearest_level = level[tuple(index[region] for index in nearest)]

    residual = array - ndimage.gaussian_filter(array, NOISE_SMOOTHING_MM / spacing_zyx)
    values = residual[source]
    noise_sd = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    array[region] = nearest_level + rng.normal(0.0, noise_sd, int(region.sum()))


def _masked_smoothing(array: np.ndarray, mask: np.ndarray, sigma_voxels: np.ndarray) -> np.ndarray:
    """Gaussian smoothing that only averages voxels of ``mask`` (normalized convolution)."""
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma_voxels)
    total = ndimage.gaussian_filter(np.where(mask, array, 0.0).astype(np.float32), sigma_voxels)
    return total / np.maximum(weight, 1e-6)


def true_transform(image: sitk.Image, motion: Motion, rng: np.random.Generator) -> sitk.Transform:
    """Return the transform from follow-up to baseline physical points: deformation, then rigid motion."""
    size = np.array(image.GetSize())
    centre = image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2.0).tolist())
    rigid = sitk.Euler3DTransform(centre, *np.deg2rad(motion.rotation_degrees), motion.translation_mm)

    deformation = sitk.BSplineTransformInitializer(image, [3, 3, 3], order=3)
    coefficients = rng.normal(0.0, motion.deformation_mm, len(deformation.GetParameters()))
    deformation.SetParameters(coefficients.tolist())
    # ITK applies the transform added last first.
    return sitk.CompositeTransform([rigid, deformation])


def followup_grid(image: sitk.Image, motion: Motion) -> sitk.Image:
    """Return an empty image with the follow-up's geometry: the baseline's field of view
    narrowed by ``crop_mm`` on every side, sampled at ``motion.spacing``."""
    spacing = np.array(motion.spacing or image.GetSpacing())
    old_spacing = np.array(image.GetSpacing())
    crop = np.array(motion.crop_mm)
    extent = np.array(image.GetSize()) * old_spacing - 2 * crop
    size = np.floor(extent / spacing).astype(int)

    direction = np.array(image.GetDirection()).reshape(3, 3)
    first_corner = np.array(image.GetOrigin()) - direction @ (old_spacing / 2)
    origin = first_corner + direction @ (crop + spacing / 2)

    grid = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(image.GetDirection())
    return grid
