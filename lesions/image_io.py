"""Read and write volumes in the formats the API accepts (NIfTI, NRRD, MetaImage).

SimpleITK does the reading, so geometry (spacing, origin, direction in the
ITK/DICOM LPS frame) is kept exactly as the file states it. NIfTI files are
stored RAS on disk and ITK converts them to LPS on read and back on write, so a
mask written here overlays its image in 3D Slicer, ITK-SNAP and OHIF.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lesions.errors import InputError
from lesions.geometry import ImageGeometry

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def volume_suffix(filename: str) -> str | None:
    """Return the accepted suffix of ``filename``, or None when it is not a volume format."""
    lowered = filename.lower()
    for suffix in VOLUME_SUFFIXES:
        if lowered.endswith(suffix):
            return suffix
    return None


def read_volume(path: Path, field: str = "image") -> sitk.Image:
    """Read a 3D scalar volume as float32, rejecting what cannot be segmented.

    A 4D image whose fourth axis has length 1 is reduced to 3D; any other 4D
    image, a 2D image or a vector image is an InputError naming ``field``.
    """
    image = _read_with_itk(path, field)

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(field, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector image); a scalar CT volume is required")

    image = _drop_singleton_fourth_axis(image, field)

    if image.GetDimension() != 3:
        raise InputError(field, f"is a {image.GetDimension()}D image of size {list(image.GetSize())}; a 3D volume is required")

    if min(image.GetSize()) < 2:
        raise InputError(field, f"has size {list(image.GetSize())} (x, y, z); every axis needs at least 2 voxels for 3D segmentation")

    return sitk.Cast(image, sitk.sitkFloat32)


# Label maps are written as UInt16, so lesion ids must fit in it.
MAX_LABEL = 65535


def read_volume_header(path: Path, field: str = "image") -> ImageGeometry:
    """Check a volume file without reading its voxels and return its geometry.

    The gateway calls this so that a bad upload is rejected at once; the worker
    reads the voxels later with ``read_volume``.
    """
    _check_gzip_complete(path, field)

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(field, f"could not be read as a NIfTI, NRRD or MetaImage volume ({_itk_reason(error, path)})", code="unreadable_image") from error

    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1:
        raise InputError(field, f"has {reader.GetNumberOfComponents()} components per voxel (RGB or vector image); a scalar CT volume is required")
    if len(size) == 4 and size[3] != 1:
        raise InputError(field, f"is a 4D image with {size[3]} volumes (size {list(size)}); upload a single 3D volume")
    if len(size) not in (3, 4):
        raise InputError(field, f"is a {len(size)}D image of size {list(size)}; a 3D volume is required")
    if min(size[:3]) < 2:
        raise InputError(field, f"has size {list(size[:3])} (x, y, z); every axis needs at least 2 voxels for 3D segmentation")

    return ImageGeometry.of(reader)


def read_label_volume(path: Path, field: str) -> sitk.Image:
    """Read a label volume (a prior mask) with at least one lesion, keeping its labels as UInt16."""
    image = _read_with_itk(path, field)
    image = _drop_singleton_fourth_axis(image, field)
    if image.GetDimension() != 3:
        raise InputError(field, f"is a {image.GetDimension()}D image; a 3D label volume is required")

    array = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)) or array.min() < 0:
        raise InputError(field, "must contain non-negative integer labels only")
    if array.max() > MAX_LABEL:
        raise InputError(field, f"contains label {array.max():.0f}, but lesion ids run from 1 to {MAX_LABEL}")
    if array.max() == 0:
        raise InputError(field, "contains no lesion (every voxel is 0)")
    return sitk.Cast(image, sitk.sitkUInt16)


def write_label_map(labels: np.ndarray, reference: sitk.Image, path: Path) -> None:
    """Write ``labels`` [z, y, x] as an image with the exact geometry of ``reference``."""
    image = sitk.GetImageFromArray(labels.astype(np.uint16, copy=False))
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(path), useCompression=True)


def _read_with_itk(path: Path, field: str) -> sitk.Image:
    _check_gzip_complete(path, field)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(field, f"could not be read as a NIfTI, NRRD or MetaImage volume ({_itk_reason(error, path)})", code="unreadable_image") from error


def itk_error_reason(error: RuntimeError) -> str:
    """Return the reason of an ITK error: its last line, after the source path and line."""
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else "unknown reason"


def _itk_reason(error: RuntimeError, path: Path) -> str:
    # The server's own file path is no business of the client's.
    return itk_error_reason(error).replace(str(path), "the file").replace(path.name, "the file")[:200]


def _check_gzip_complete(path: Path, field: str) -> None:
    # ITK reads a truncated .nii.gz without complaint when the header survives
    # and fills the missing voxels with zeros, so the stream is checked first.
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            return
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(field, f"is a truncated or corrupt gzip file ({error}); upload the complete file", code="unreadable_image") from error


def _drop_singleton_fourth_axis(image: sitk.Image, field: str) -> sitk.Image:
    if image.GetDimension() != 4:
        return image
    size = image.GetSize()
    if size[3] != 1:
        raise InputError(field, f"is a 4D image with {size[3]} volumes (size {list(size)}); upload a single 3D volume")
    return sitk.Extract(image, [size[0], size[1], size[2], 0], [0, 0, 0, 0])
