"""Real CT cases with lesion masks, and box and point prompts built from those masks.

The cases live in the shared data folder next to the repository (``../shared/data``)
or under ``$TUMORTRACK_SHARED_DIR/data``. Do not copy them into the repository.
Each 26-connected mask component of at least ``MIN_LESION_VOXELS`` voxels is one lesion.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from lesions.prompt_types import LesionPrompt

# (case folder, image file, mask file) for every CT case that has a lesion mask.
CT_LESION_CASES = (
    ("ibsi_sts_001", "ct_image.nii.gz", "ct_mask.nii.gz"),
    ("ibsi_sts_002", "ct_image.nii.gz", "ct_mask.nii.gz"),
    ("ibsi_sts_008", "ct_image.nii.gz", "ct_mask.nii.gz"),
    ("ibsi_sts_012", "ct_image.nii.gz", "ct_mask.nii.gz"),
    ("ibsi_sts_019", "ct_image.nii.gz", "ct_mask.nii.gz"),
    ("ibsi_ct_radiomics_phantom", "image.nii.gz", "mask.nii.gz"),
    ("nsclc_lung1_001_ct_gtv", "image_crop_converted.nii.gz", "mask_gtv1_crop_converted.nii.gz"),
    ("deeplesion_000015_01_01_103-115", "image.nii.gz", "mask_converted.nii.gz"),
)

# Components smaller than a 3x3x3 block are annotation specks, not lesions.
MIN_LESION_VOXELS = 27

# Voxels added on every side of a lesion's bounding box to make its box prompt.
BOX_PADDING_VOXELS = 2


@dataclass
class LesionCase:
    """One CT image and the ground-truth mask of each of its lesions, [z, y, x]."""

    name: str
    image: sitk.Image
    lesion_masks: list[np.ndarray]


def shared_data_dir() -> Path:
    """Return the shared data folder, which may not exist."""
    shared = os.environ.get("TUMORTRACK_SHARED_DIR")
    if shared:
        return Path(shared) / "data"
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_ct_lesion_cases(data_dir: Path) -> list[LesionCase]:
    """Read every case of ``CT_LESION_CASES`` from ``data_dir`` and split its mask into lesions."""
    cases = []
    for name, image_file, mask_file in CT_LESION_CASES:
        image = sitk.ReadImage(str(data_dir / name / image_file), sitk.sitkFloat32)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / name / mask_file))) > 0
        cases.append(LesionCase(name, image, split_lesions(mask)))
    return cases


def split_lesions(mask: np.ndarray) -> list[np.ndarray]:
    """Return one boolean array per 26-connected component of at least ``MIN_LESION_VOXELS``."""
    labels = cc3d.connected_components(mask, connectivity=26)
    sizes = np.bincount(labels.ravel())
    return [labels == label for label in range(1, len(sizes)) if sizes[label] >= MIN_LESION_VOXELS]


def box_prompt(lesion_id: int, lesion_mask: np.ndarray) -> LesionPrompt:
    """Build a box prompt from the lesion's bounding box plus ``BOX_PADDING_VOXELS`` per side, clipped to the image."""
    zyx_indexes = np.nonzero(lesion_mask)
    low = [max(int(axis.min()) - BOX_PADDING_VOXELS, 0) for axis in zyx_indexes]
    high = [
        min(int(axis.max()) + 1 + BOX_PADDING_VOXELS, size)
        for axis, size in zip(zyx_indexes, lesion_mask.shape)
    ]
    return LesionPrompt(
        lesion_id=lesion_id,
        kind="box",
        box_min=tuple(low[::-1]),
        box_max=tuple(high[::-1]),
        source="box voxel",
    )


def point_prompt(lesion_id: int, lesion_mask: np.ndarray, spacing_xyz: tuple[float, ...]) -> LesionPrompt:
    """Build a point prompt at the lesion voxel farthest (in mm) from the lesion's border."""
    distance = ndimage.distance_transform_edt(lesion_mask, sampling=spacing_xyz[::-1])
    z, y, x = np.unravel_index(int(np.argmax(distance)), lesion_mask.shape)
    return LesionPrompt(lesion_id=lesion_id, kind="point", point=(float(x), float(y), float(z)), source="point voxel")


def inscribed_ellipsoid(shape: tuple[int, int, int], prompt: LesionPrompt) -> np.ndarray:
    """Draw the ellipsoid inscribed in a box prompt, without looking at any image.

    The ellipsoid is centred on the box, and its semi-axes are half the box size, so
    it touches the outer faces of the box's edge voxels. A voxel is inside when its
    centre is.
    """
    mask = np.zeros(shape, dtype=bool)
    box = prompt.zyx_slices()
    sizes = [axis.stop - axis.start for axis in box]
    grids = np.ogrid[tuple(slice(0, size) for size in sizes)]
    radius_squared = sum(((grid + 0.5 - size / 2) / (size / 2)) ** 2 for grid, size in zip(grids, sizes))
    mask[box] = radius_squared <= 1.0
    return mask


def dice(predicted: np.ndarray, reference: np.ndarray) -> float:
    """Return the Dice overlap of two boolean arrays, 1.0 when both are empty."""
    total = int(predicted.sum()) + int(reference.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(predicted, reference).sum()) / total
