"""Builders of DICOM test variants: a real series changed in one way, or a synthetic series.

Each builder writes new files under ``dest`` and returns their paths; the
source files are never modified. Builders that need an optional encoder raise
``pytest.skip`` through ``require_encoder`` when it is missing here.
"""

from __future__ import annotations

import copy
import io
import os
import random
import shutil
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

# --------------------------------------------------------------------------
# Shared test data


REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Return the real-data folder: data/ under $TUMORTRACK_SHARED_DIR, or under ../shared next to the repo."""
    override = os.environ.get("TUMORTRACK_SHARED_DIR")
    root = Path(override) if override else REPO_ROOT.parent / "shared"
    return root / "data" if (root / "data").is_dir() else root


def real_series(relative: str) -> list[Path]:
    """Return the .dcm files under one folder of the shared data, or skip the test."""
    folder = shared_data_dir() / relative
    if not folder.is_dir():
        pytest.skip(
            f"real DICOM data {relative} is absent under {shared_data_dir()}; "
            "set TUMORTRACK_SHARED_DIR to the folder that holds the shared data"
        )
    return sorted(folder.rglob("*.dcm"))


def shared_file(relative: str) -> Path:
    """Return one file of the shared data, or skip the test."""
    path = shared_data_dir() / relative
    if not path.is_file():
        pytest.skip(f"real data file {relative} is absent under {shared_data_dir()}")
    return path


# --------------------------------------------------------------------------
# Helpers


def read_all(files: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in files]


def sorted_along_normal(datasets: list[Dataset]) -> list[Dataset]:
    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))))


def write_all(datasets: list[Dataset], dest: Path, names: list[str] | None = None) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, dataset in enumerate(datasets):
        name = names[index] if names else f"{index:04d}.dcm"
        path = dest / name
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ds_values(values) -> list[str]:
    return [format_number_as_ds(float(v)) for v in values]


def require_encoder(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        pytest.skip(f"the encoder module '{module}' is not installed here, so this syntax cannot be encoded")


def _new_instance_uids(dataset: Dataset) -> None:
    uid = generate_uid()
    dataset.SOPInstanceUID = uid
    dataset.file_meta.MediaStorageSOPInstanceUID = uid


# --------------------------------------------------------------------------
# Variants of a real series


def copy_files(files: list[Path], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(path, dest / f"{index:04d}_{path.name}")) for index, path in enumerate(files)]


def shuffled_names(files: list[Path], dest: Path, seed: int = 7) -> list[Path]:
    """Copy the files under random names, in a shuffled order, with Instance Numbers reversed."""
    rng = random.Random(seed)
    datasets = sorted_along_normal(read_all(files))
    for index, dataset in enumerate(datasets):
        dataset.InstanceNumber = len(datasets) - index
    rng.shuffle(datasets)
    names = [f"{uuid.UUID(int=rng.getrandbits(128)).hex}.dcm" for _ in datasets]
    return write_all(datasets, dest, names)


def remove_slice(files: list[Path], dest: Path, index: int) -> list[Path]:
    """Copy the series without the slice at ``index`` along the slice normal."""
    datasets = sorted_along_normal(read_all(files))
    del datasets[index]
    return write_all(datasets, dest)


def keep_slices(files: list[Path], dest: Path, indexes: list[int]) -> list[Path]:
    """Copy only the slices at ``indexes`` along the slice normal."""
    datasets = sorted_along_normal(read_all(files))
    return write_all([datasets[i] for i in indexes], dest)


def tilt(files: list[Path], dest: Path, rows_per_slice: int = 1) -> list[Path]:
    """Shift slice k by ``k * rows_per_slice`` rows along the column direction, as gantry tilt does.

    The orientation stays axial, as on scanners that store tilted series with
    an untilted Image Orientation (Patient).
    """
    datasets = sorted_along_normal(read_all(files))
    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    column = orientation[3:]
    row_spacing = float(datasets[0].PixelSpacing[0])
    slice_spacing = abs(
        float(np.dot(np.cross(orientation[:3], column),
                     np.subtract(datasets[1].ImagePositionPatient, datasets[0].ImagePositionPatient)))
    )
    for k, dataset in enumerate(datasets):
        position = np.array(dataset.ImagePositionPatient, dtype=float) + k * rows_per_slice * row_spacing * column
        dataset.ImagePositionPatient = ds_values(position)
        dataset.GantryDetectorTilt = format_number_as_ds(
            float(np.degrees(np.arctan2(rows_per_slice * row_spacing, slice_spacing)))
        )
    return write_all(datasets, dest)


def compressed(files: list[Path], dest: Path, syntax: str) -> list[Path]:
    """Copy the series re-encoded in ``syntax``.

    RLE and deflate use pydicom itself, JPEG-LS uses pyjpegls, JPEG 2000 uses
    pylibjpeg-openjpeg, JPEG lossless uses python-gdcm, and JPEG baseline
    (8-bit, lossy) uses Pillow after mapping the values to 8 bits with a
    Rescale Slope of 10.
    """
    if syntax == JPEGLosslessSV1:
        return _gdcm_compressed(files, dest)
    datasets = read_all(files)
    for dataset in datasets:
        if syntax == DeflatedExplicitVRLittleEndian:
            dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        elif syntax == JPEGBaseline8Bit:
            _to_jpeg_baseline(dataset)
        else:
            if syntax == JPEGLSLossless:
                require_encoder("jpeg_ls")
            if syntax == JPEG2000Lossless:
                require_encoder("openjpeg")
            dataset.compress(syntax)
    return write_all(datasets, dest)


def _to_jpeg_baseline(dataset: Dataset) -> None:
    from PIL import Image

    values = dataset.pixel_array.astype(np.float64) * float(dataset.get("RescaleSlope", 1)) + float(
        dataset.get("RescaleIntercept", 0)
    )
    stored = np.clip(np.round((values + 1024.0) / 10.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(stored, mode="L").save(buffer, format="JPEG", quality=95)

    dataset.BitsAllocated = 8
    dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.RescaleSlope = 10
    dataset.RescaleIntercept = -1024
    dataset.LossyImageCompression = "01"
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue"):
        if keyword in dataset:
            delattr(dataset, keyword)
    dataset.PixelData = encapsulate([buffer.getvalue()])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def _gdcm_compressed(files: list[Path], dest: Path) -> list[Path]:
    require_encoder("gdcm")
    import gdcm

    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, source in enumerate(files):
        reader = gdcm.ImageReader()
        reader.SetFileName(str(source))
        assert reader.Read(), f"gdcm cannot read {source}"
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        assert change.Change(), f"gdcm cannot encode {source} as JPEG lossless"
        writer = gdcm.ImageWriter()
        target = dest / f"{index:04d}.dcm"
        writer.SetFileName(str(target))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        assert writer.Write(), f"gdcm cannot write {target}"
        paths.append(target)
    return paths


def with_localizer(files: list[Path], dest: Path, *, mark_localizer: bool = True) -> list[Path]:
    """Copy the series and add a coronal image of another size to the same series."""
    datasets = read_all(files)
    localizer = copy.deepcopy(datasets[0])
    _new_instance_uids(localizer)
    localizer.ImageOrientationPatient = ds_values([1, 0, 0, 0, 0, -1])
    localizer.Rows, localizer.Columns = 40, 64
    localizer.PixelData = np.full((40, 64), 100, dtype=np.int16 if localizer.PixelRepresentation else np.uint16).tobytes()
    localizer.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if mark_localizer:
        localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return write_all(datasets + [localizer], dest)


def with_other_size(files: list[Path], dest: Path) -> list[Path]:
    """Copy the series with one axial slice cropped to fewer rows."""
    datasets = read_all(files)
    cropped = datasets[len(datasets) // 2]
    pixels = cropped.pixel_array[:-10]
    cropped.Rows = pixels.shape[0]
    cropped.PixelData = pixels.tobytes()
    return write_all(datasets, dest)


def without_pixel_data(files: list[Path], dest: Path, index: int = 3) -> list[Path]:
    """Copy the series with the Pixel Data element deleted from one file."""
    datasets = read_all(files)
    del datasets[index].PixelData
    return write_all(datasets, dest)


def duplicated_position(files: list[Path], dest: Path) -> list[Path]:
    """Copy the series plus a second image (new SOP Instance UID) at the position of slice 0."""
    datasets = read_all(files)
    twin = copy.deepcopy(datasets[0])
    _new_instance_uids(twin)
    return write_all(datasets + [twin], dest)


def without_preamble(files: list[Path], dest: Path) -> list[Path]:
    """Copy the series as raw datasets: no 128-byte preamble, no "DICM" marker, no file meta."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, source in enumerate(files):
        dataset = pydicom.dcmread(source)
        transfer_syntax = dataset.file_meta.TransferSyntaxUID
        dataset.preamble = None
        dataset.file_meta = FileMetaDataset()
        path = dest / f"{index:04d}.raw"
        dataset.save_as(
            path,
            implicit_vr=transfer_syntax.is_implicit_VR,
            little_endian=transfer_syntax.is_little_endian,
            enforce_file_format=False,
        )
        paths.append(path)
    return paths


def non_dicom_file(dest: Path, name: str = "notes.txt") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / name
    path.write_text("Exported by the hospital viewer. Not a DICOM file.\n")
    return path


def dicomdir_export(files: list[Path], dest: Path) -> list[Path]:
    """Write the series as a media file-set with a DICOMDIR, as a CD export has."""
    from pydicom.fileset import FileSet

    file_set = FileSet()
    for path in files:
        file_set.add(pydicom.dcmread(path))
    file_set.write(dest)
    return sorted(p for p in dest.rglob("*") if p.is_file())


def enhanced_multiframe(files: list[Path], dest: Path, *, seed: int = 3) -> Path:
    """Merge a single-frame CT series into one Enhanced CT image with frames in shuffled order.

    Positions go into the per-frame Plane Position Sequence. Orientation,
    pixel spacing and the rescale (stored value + 1024, intercept -1024) go
    into the shared functional groups, so the reader must take them from there.
    """
    datasets = sorted_along_normal(read_all(files))
    order = list(range(len(datasets)))
    random.Random(seed).shuffle(order)
    first = datasets[0]

    enhanced = Dataset()
    for keyword in (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
        "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID",
        "Manufacturer", "SeriesDescription",
    ):
        if keyword in first:
            setattr(enhanced, keyword, first.data_element(keyword).value)
    enhanced.SOPClassUID = EnhancedCTImageStorage
    enhanced.SOPInstanceUID = generate_uid()
    enhanced.SeriesInstanceUID = generate_uid()
    enhanced.Modality = "CT"
    enhanced.SeriesNumber = 501
    enhanced.InstanceNumber = 1
    enhanced.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    enhanced.ContentDate = first.get("StudyDate", "20240101")
    enhanced.ContentTime = "120000"
    enhanced.PositionReferenceIndicator = ""
    enhanced.SamplesPerPixel = 1
    enhanced.PhotometricInterpretation = "MONOCHROME2"
    enhanced.Rows, enhanced.Columns = first.Rows, first.Columns
    enhanced.BitsAllocated, enhanced.BitsStored, enhanced.HighBit = 16, 16, 15
    enhanced.PixelRepresentation = 0
    enhanced.NumberOfFrames = len(datasets)

    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    shared.PlaneOrientationSequence = [orientation]
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    measures.SliceThickness = first.get("SliceThickness", "1")
    shared.PixelMeasuresSequence = [measures]
    transformation = Dataset()
    transformation.RescaleSlope = "1"
    transformation.RescaleIntercept = "-1024"
    transformation.RescaleType = "HU"
    shared.PixelValueTransformationSequence = [transformation]
    enhanced.SharedFunctionalGroupsSequence = [shared]

    frames = []
    per_frame = []
    for frame_index, source_index in enumerate(order):
        source = datasets[source_index]
        hounsfield = source.pixel_array.astype(np.float64) * float(source.get("RescaleSlope", 1)) + float(
            source.get("RescaleIntercept", 0)
        )
        frames.append(np.clip(np.round(hounsfield + 1024), 0, 65535).astype(np.uint16))
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = source.ImagePositionPatient
        item.PlanePositionSequence = [position]
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = source_index + 1
        content.DimensionIndexValues = [source_index + 1]
        item.FrameContentSequence = [content]
        per_frame.append(item)
    enhanced.PerFrameFunctionalGroupsSequence = per_frame
    enhanced.PixelData = np.stack(frames).tobytes()

    enhanced.file_meta = FileMetaDataset()
    enhanced.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    enhanced.file_meta.MediaStorageSOPInstanceUID = enhanced.SOPInstanceUID
    enhanced.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "enhanced_ct.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------
# Synthetic series with a chosen geometry


def synthetic_series(
    dest: Path,
    hounsfield: np.ndarray,
    *,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: np.ndarray,
    series_uid: str | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write a [z, y, x] int16 array as single-frame CT files with the given ITK-style geometry.

    Column 0 of ``direction`` is the row direction (x), column 1 the column
    direction (y) and column 2 the stacking direction of slice z, which may
    point against the normal of the row and column directions (a flip). File
    names are random, so their order carries no slice order.
    """
    dest.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(direction, dtype=float)
    row, column, stacking = direction[:, 0], direction[:, 1], direction[:, 2]
    study_uid, series_uid = generate_uid(), series_uid or generate_uid()
    frame_of_reference = generate_uid()
    rng = random.Random(seed)
    paths = []
    for z, plane in enumerate(hounsfield):
        dataset = Dataset()
        dataset.PatientName = "Synthetic^Phantom"
        dataset.PatientID = "SYNTH-0001"
        dataset.PatientBirthDate = ""
        dataset.PatientSex = "O"
        dataset.StudyInstanceUID = study_uid
        dataset.StudyDate = "20240101"
        dataset.StudyTime = "120000"
        dataset.StudyID = "1"
        dataset.AccessionNumber = ""
        dataset.ReferringPhysicianName = ""
        dataset.SeriesInstanceUID = series_uid
        dataset.SeriesNumber = 1
        dataset.SeriesDescription = "synthetic"
        dataset.Modality = "CT"
        dataset.Manufacturer = "TumorTrack tests"
        dataset.FrameOfReferenceUID = frame_of_reference
        dataset.PositionReferenceIndicator = ""
        dataset.SOPClassUID = CTImageStorage
        dataset.SOPInstanceUID = generate_uid()
        dataset.InstanceNumber = z + 1
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        dataset.ImagePositionPatient = ds_values(np.asarray(origin) + z * spacing[2] * stacking)
        dataset.ImageOrientationPatient = ds_values([*row, *column])
        dataset.PixelSpacing = ds_values([spacing[1], spacing[0]])
        dataset.SliceThickness = format_number_as_ds(float(spacing[2]))
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.Rows, dataset.Columns = plane.shape
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
        dataset.PixelRepresentation = 1
        dataset.RescaleSlope = "1"
        dataset.RescaleIntercept = "0"
        dataset.RescaleType = "HU"
        dataset.PixelData = plane.astype(np.int16).tobytes()
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = dest / f"{uuid.UUID(int=rng.getrandbits(128)).hex}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


SUPPORTED_SYNTAXES = {
    "rle": RLELossless,
    "deflate": DeflatedExplicitVRLittleEndian,
    "jpeg_ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg_lossless": JPEGLosslessSV1,
    "jpeg_baseline": JPEGBaseline8Bit,
}
