"""One uploaded image, whatever its form: a single volume file, or a DICOM
series as a zip or as many files.

The gateway calls ``check_volume_file`` or ``check_dicom_upload`` to validate
an upload and learn its geometry before a job is queued. The worker calls
``load_image_input`` to read the same files, so both sides see the same
volume. ``options`` is the small dict stored in the job record that names the
files of the image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from lesions.archives import extract_upload
from lesions.dicom_series import DicomVolume, read_dicom_series
from lesions.errors import InputError
from lesions.geometry import ImageGeometry
from lesions.image_io import read_volume, read_volume_header


@dataclass
class CheckedImage:
    """Result of the gateway's check of an upload: image options, geometry and warnings."""

    options: dict
    geometry: ImageGeometry | None  # None for an image by DICOMweb reference, which only a worker retrieves
    warnings: list[str] = field(default_factory=list)


@dataclass
class LoadedImage:
    """Image read by the worker: the volume, warnings for the job, and the DICOM source if any."""

    image: sitk.Image
    warnings: list[str]
    dicom: DicomVolume | None = None


def check_volume_file(path: Path, field_name: str) -> CheckedImage:
    geometry = read_volume_header(path, field_name)
    return CheckedImage(options={"kind": "volume", "file": path.name}, geometry=geometry)


def check_dicom_upload(uploaded: list[Path], folder: Path, stem: str, series_uid: str | None, field_name: str) -> CheckedImage:
    """Unpack the uploaded DICOM files or zips under ``folder`` and read the series once.

    NOTE: this reads the pixel data in the gateway, about three times the
    float32 volume at peak. It does so because resampling warnings and the
    exact geometry must be known before the job is queued. A header-only
    check would keep the gateway lighter.
    """
    files = extract_upload(uploaded, folder / f"{stem}_dicom", field=field_name)
    volume = read_dicom_series(files, series_uid, field=field_name)
    listing = folder / f"{stem}_dicom_files.json"
    listing.write_text(json.dumps([str(path.relative_to(folder)) for path in files]))
    options = {"kind": "dicom", "file_list": listing.name, "series_uid": volume.summary.series.series_uid}
    return CheckedImage(options=options, geometry=ImageGeometry.of(volume.image), warnings=list(volume.warnings))


def load_image_input(folder: Path, options: dict, field_name: str) -> LoadedImage:
    if options["kind"] == "volume":
        return LoadedImage(image=read_volume(folder / options["file"], field_name), warnings=[])

    files = [folder / name for name in json.loads((folder / options["file_list"]).read_text())]
    volume = read_dicom_series(files, options["series_uid"], field=field_name)
    return LoadedImage(image=volume.image, warnings=list(volume.warnings), dicom=volume)


def missing_image_error(field_name: str) -> InputError:
    return InputError(field_name, "is missing: attach a .nii/.nii.gz/.nrrd/.mha volume, a .zip of a DICOM series, or the series' DICOM files", code="missing_field")
