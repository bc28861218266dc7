"""Find the image series in an upload of DICOM files and read one as a volume.

``read_dicom_series`` turns the files of one series into a float32 SimpleITK
image in the units of the modality LUT (Hounsfield units for CT: Rescale
Slope and Intercept are applied). The image is built from pydicom arrays, so
its geometry comes straight from the headers:

* origin: Image Position (Patient) of the first slice along the slice normal;
* spacing: x is the column spacing (``PixelSpacing[1]``), y the row spacing
  (``PixelSpacing[0]``), z the distance between slice positions;
* direction: row cosine, column cosine and their cross product (the normal).

Slices are sorted by the projection of their position onto the normal, never
by file name or Instance Number. Single-frame series and enhanced multi-frame
images (positions in the per-frame functional groups) take the same path.

Rules for uploads that are not one clean stack, each reported in
``DicomVolume.warnings`` or raised as ``InputError``:

* A file that is not DICOM raises ``not_dicom`` naming it. DICOMDIR index
  files, operating-system metadata (``.DS_Store``, ``._*``) and DICOM objects
  that are not image slices (RTSTRUCT, SEG, SR, presentation states, secondary
  captures such as dose reports, series made only of LOCALIZER images) are
  ignored with a warning.
* Several image series and no ``series_uid`` raise ``multiple_series``, listing
  each series. An unknown ``series_uid`` raises ``series_not_found``.
* Inside the series, LOCALIZER images and a few images in another orientation
  (at most 3, or 10 % of the series) are dropped with a warning. More images
  in other orientations, mixed matrix sizes or mixed pixel spacings raise
  ``mixed_geometry``. Two different images at one position raise
  ``duplicate_position``; a second copy of the same SOP instance is dropped.
* Irregular slice spacing is resampled with a warning. A gap is irregular when
  it differs from the median gap by more than 1 %, the same tolerance as
  highdicom's default. The output grid has the median spacing, and missing
  slices are interpolated linearly between their neighbours. Stacks that would
  need more than twice as many slices as they contain raise
  ``irregular_spacing``.
* Slice origins shifted within the image plane (gantry tilt) are resampled
  with a warning onto the plane grid of the first slice, by linear
  interpolation. Interpolated and shifted slices map to no source frame in
  ``DicomVolume.source_frames``.
* An image of the series without Pixel Data raises ``missing_pixel_data``;
  pixel data that no installed decoder can read raises
  ``unreadable_pixel_data``.

Patient names and IDs never appear in logs or messages.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    MediaStorageDirectoryStorage,
)
from scipy import ndimage

from lesions.archives import is_os_metadata_file
from lesions.errors import InputError

logger = logging.getLogger(__name__)

# Relative tolerance on slice gaps and in-plane shifts, as a fraction of the
# slice spacing or the pixel spacing.
SPACING_RTOL = 0.01
# Tolerance on direction cosines for "same orientation" and "perpendicular":
# about 0.6 degrees.
ORIENTATION_ATOL = 0.01
# Two slices closer than this along the normal are at the same position (mm).
DUPLICATE_POSITION_MM = 0.01
# Other-orientation images dropped with a warning instead of an error.
MAX_DROPPED_FRACTION = 0.1
MAX_DROPPED_IMAGES = 3
# A resampled stack may have at most this many times the slices it holds.
MAX_RESAMPLE_GROWTH = 2.0

# Modalities of DICOM objects that are not slices of an image volume.
NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "SR", "KO", "PR",
     "REG", "RWV", "FID", "DOC", "PLAN", "AU", "ECG", "HD"}
)
# Secondary Capture Image Storage (single-frame dose reports and screenshots).
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

_LOSSY_SYNTAXES = {JPEGBaseline8Bit, JPEGExtended12Bit}
_NAME_LIST_LIMIT = 10


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in an upload."""

    series_uid: str
    modality: str
    description: str
    image_count: int
    uid_generated: bool = False

    def describe(self) -> str:
        """Return 'UID (modality, "description", N images)' for messages."""
        description = f'"{self.description}"' if self.description else "no description"
        return f"{self.series_uid} ({self.modality or 'no modality'}, {description}, {self.image_count} images)"

    def as_dict(self) -> dict[str, Any]:
        """Return the info as a JSON-ready dict."""
        return {
            "series_uid": self.series_uid,
            "modality": self.modality,
            "description": self.description,
            "image_count": self.image_count,
            "uid_generated": self.uid_generated,
        }


@dataclass(frozen=True)
class SourceFrame:
    """The source image frame that lies exactly on one slice of the volume."""

    dataset_index: int  # index into DicomVolume.source_datasets
    frame_number: int | None  # 1-based frame of a multi-frame image; None for single-frame


@dataclass(frozen=True)
class VolumeSummary:
    """Facts about the series and the volume read from it, free of patient data."""

    series: SeriesInfo
    manufacturer: str
    transfer_syntaxes: tuple[str, ...]
    multiframe: bool
    images_used: int
    images_excluded: int
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    resampled: bool

    def as_dict(self) -> dict[str, Any]:
        """Return the summary as a JSON-ready dict."""
        return {
            **self.series.as_dict(),
            "manufacturer": self.manufacturer,
            "transfer_syntaxes": list(self.transfer_syntaxes),
            "multiframe": self.multiframe,
            "images_used": self.images_used,
            "images_excluded": self.images_excluded,
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "resampled": self.resampled,
        }


@dataclass
class DicomVolume:
    """A series read as a volume, with what a DICOM SEG writer needs to reference it.

    ``source_datasets`` are the headers (no Pixel Data) of the instances that
    went into the volume, sorted along the slice normal for single-frame
    series. Missing Study, Series, SOP Instance or Frame of Reference UIDs are
    replaced in these copies by generated ones, and a warning reports it.
    ``source_frames[z]`` names the frame that slice ``z`` of ``image`` was
    copied from, or is None where the slice was interpolated or shifted.
    """

    image: sitk.Image
    warnings: list[str]
    source_datasets: list[Dataset]
    source_paths: list[Path]
    source_frames: list[SourceFrame | None]
    summary: VolumeSummary

    @property
    def resampled(self) -> bool:
        """True when some slice of the image matches no source frame exactly."""
        return any(frame is None for frame in self.source_frames)


def list_dicom_series(files: list[Path], *, field: str = "image") -> list[SeriesInfo]:
    """Return the image series in ``files``, largest first.

    Raises ``InputError`` for non-DICOM files and for uploads without any
    image series, as ``read_dicom_series`` does.
    """
    scan = _scan_files(files, field)
    return [group.info for group in scan.series]


def read_dicom_series(
    files: list[Path],
    series_uid: str | None = None,
    *,
    field: str = "image",
    series_field: str = "series_uid",
) -> DicomVolume:
    """Read one image series from ``files`` into a float32 volume with exact geometry.

    ``series_uid`` selects a series when the upload contains several. Errors about
    the files name ``field``; errors about the series choice name
    ``series_field``. See the module docstring for how irregular input is
    handled.
    """
    scan = _scan_files(files, field)
    group = _choose_series(scan.series, series_uid, series_field)
    warnings = list(scan.warnings)

    records, excluded = _select_frames(group, warnings, field)
    geometry = _plan_geometry(records, group, warnings, field)
    slices = _load_slices(group, geometry.records, field)
    volume_array, source_frames = _assemble(slices, geometry)

    _warn_lossy(group, geometry.records, warnings)
    warnings.extend(group.uid_warnings())
    volume = _make_volume(group, geometry, _to_sitk(volume_array, geometry), source_frames, excluded, warnings)
    logger.info(
        "read DICOM series: %d images, size %s, %d warnings",
        volume.summary.images_used, volume.summary.size, len(warnings),
    )
    return volume


def _make_volume(
    group: _SeriesGroup,
    geometry: _Geometry,
    image: sitk.Image,
    source_frames: list[SourceFrame | None],
    excluded: int,
    warnings: list[str],
) -> DicomVolume:
    """Attach source references and the summary; renumber source frames to index the used datasets."""
    used = _used_instances(geometry.records)
    new_index = {instance_index: position for position, instance_index in enumerate(used)}
    source_frames = [
        None if frame is None else SourceFrame(new_index[frame.dataset_index], frame.frame_number)
        for frame in source_frames
    ]
    summary = VolumeSummary(
        series=group.info,
        manufacturer=str(group.instances[0].header.get("Manufacturer", "") or ""),
        transfer_syntaxes=tuple(sorted({UID(group.instances[i].transfer_syntax).name for i in used})),
        multiframe=any(record.frame_number is not None for record in geometry.records),
        images_used=len(geometry.records),
        images_excluded=excluded,
        size=tuple(int(v) for v in image.GetSize()),
        spacing=tuple(float(v) for v in image.GetSpacing()),
        origin=tuple(float(v) for v in image.GetOrigin()),
        direction=tuple(float(v) for v in image.GetDirection()),
        resampled=any(frame is None for frame in source_frames),
    )
    return DicomVolume(
        image=image,
        warnings=warnings,
        source_datasets=[group.instances[i].header for i in used],
        source_paths=[group.instances[i].path for i in used],
        source_frames=source_frames,
        summary=summary,
    )


# --------------------------------------------------------------------------
# Scanning: which files are DICOM, which series they belong to


@dataclass
class _Instance:
    path: Path
    header: Dataset  # read with stop_before_pixels, UIDs repaired
    transfer_syntax: str


@dataclass
class _SeriesGroup:
    info: SeriesInfo
    instances: list[_Instance]
    generated_uids: Counter = field(default_factory=Counter)

    def uid_warnings(self) -> list[str]:
        if not self.generated_uids:
            return []
        missing = ", ".join(f"{name} ({count} files)" for name, count in sorted(self.generated_uids.items()))
        return [
            f"The series lacks {missing}. Generated UIDs were used instead (series "
            f"{self.info.series_uid}), so a DICOM SEG written for it references UIDs that no "
            "archive holds. Re-export the series with its original UIDs to avoid this."
        ]


@dataclass
class _Scan:
    series: list[_SeriesGroup]
    warnings: list[str]


def _scan_files(files: list[Path], field: str) -> _Scan:
    if not files:
        raise InputError(field, "the upload contains no files. Upload the DICOM files of one series.", code="no_files")

    not_dicom: list[str] = []
    damaged: list[str] = []
    ignored: Counter = Counter()
    by_series: dict[str, list[_Instance]] = {}
    generated: dict[str, bool] = {}

    for path in files:
        if is_os_metadata_file(path.name):
            continue
        if path.name.upper() == "DICOMDIR":
            ignored["DICOMDIR"] += 1
            continue

        header, problem = _read_header(path)
        if problem == "not_dicom":
            not_dicom.append(path.name)
            continue
        if problem == "damaged":
            damaged.append(path.name)
            continue

        kind = _non_image_kind(header)
        if kind is not None:
            ignored[kind] += 1
            continue
        if "Rows" not in header or "Columns" not in header:
            damaged.append(path.name)
            continue

        series_uid, uid_generated = _series_key(header)
        generated[series_uid] = uid_generated
        by_series.setdefault(series_uid, []).append(_Instance(path, header, _transfer_syntax(header)))

    if not_dicom:
        raise InputError(
            field,
            f"{len(not_dicom)} of {len(files)} files are not DICOM: {_name_list(not_dicom)}. "
            "Upload only the DICOM files of the series (a DICOMDIR file is accepted and ignored).",
            code="not_dicom",
        )
    if damaged:
        raise InputError(
            field,
            f"{len(damaged)} DICOM files cannot be parsed, probably because they are truncated or damaged: "
            f"{_name_list(damaged)}. Export the series again and re-upload it.",
            code="damaged_dicom",
        )

    groups: list[_SeriesGroup] = []
    for series_uid, instances in by_series.items():
        if all(_is_localizer(instance.header) for instance in instances):
            ignored["localizer series"] += 1
            continue
        groups.append(_make_group(series_uid, instances, generated[series_uid]))
    groups.sort(key=lambda group: -group.info.image_count)

    warnings: list[str] = []
    if ignored:
        found = ", ".join(f"{count} {kind}" for kind, count in sorted(ignored.items()))
        warnings.append(f"Ignored DICOM objects that are not slices of an image volume: {found}.")

    if not groups:
        found = ", ".join(f"{count} {kind}" for kind, count in sorted(ignored.items())) or "nothing"
        raise InputError(
            field,
            f"the upload contains no image series; it holds {found}. Upload the image series (for example the CT).",
            code="no_image_series",
        )
    return _Scan(groups, warnings)


def _read_header(path: Path) -> tuple[Dataset | None, str | None]:
    """Read a header without pixel data; return (header, None) or (None, problem)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True), None
    except InvalidDicomError:
        pass
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged input
        logger.info("DICOM header parse failed: %s", type(exc).__name__)
        return None, "damaged"

    # Some exports omit the 128-byte preamble and "DICM" marker, so the file
    # starts with a group 0002 or 0008 element. Accept such a file only if a
    # forced parse then finds a standard SOP Class UID.
    with open(path, "rb") as handle:
        leading = handle.read(2)
    if leading not in (b"\x02\x00", b"\x08\x00"):
        return None, "not_dicom"
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        sop_class = str(header.get("SOPClassUID", "") or "")
    except Exception:  # noqa: BLE001 - a forced parse of arbitrary bytes can fail anywhere
        return None, "not_dicom"
    if not sop_class.startswith("1.2.840.10008."):
        return None, "not_dicom"
    return header, None


def _transfer_syntax(dataset: Dataset) -> str:
    """Return the Transfer Syntax UID, or the one pydicom detected for a file without file meta."""
    file_meta = getattr(dataset, "file_meta", None)
    declared = str(file_meta.get("TransferSyntaxUID", "") or "") if file_meta is not None else ""
    if declared:
        return declared
    implicit_vr, little_endian = dataset.original_encoding
    if implicit_vr:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def _non_image_kind(header: Dataset) -> str | None:
    """Name the kind of a DICOM object that is not a volume slice, or return None."""
    media_class = str(header.file_meta.get("MediaStorageSOPClassUID", "")) if hasattr(header, "file_meta") else ""
    sop_class = str(header.get("SOPClassUID", "") or "") or media_class
    if sop_class == MediaStorageDirectoryStorage or media_class == MediaStorageDirectoryStorage:
        return "DICOMDIR"
    modality = str(header.get("Modality", "") or "").upper()
    if modality in NON_IMAGE_MODALITIES:
        return modality
    if sop_class == _SECONDARY_CAPTURE:
        return "secondary capture"
    if "Rows" not in header or "Columns" not in header:
        if "Image Storage" in UID(sop_class).name:
            return None  # an image without image attributes: _scan_files reports it as damaged
        return modality or "non-image object"
    return None


def _is_localizer(header: Dataset) -> bool:
    image_type = header.get("ImageType", []) or []
    if isinstance(image_type, str):
        image_type = [image_type]
    return any(str(value).upper() == "LOCALIZER" for value in image_type)


def _series_key(header: Dataset) -> tuple[str, bool]:
    series_uid = str(header.get("SeriesInstanceUID", "") or "").strip()
    if series_uid:
        return series_uid, False
    # Without a Series Instance UID, group by attributes that all images of a
    # series share, and derive a stable UID from them so the caller can select it.
    parts = [
        str(header.get(keyword, "") or "")
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "Modality", "SeriesNumber", "SeriesDescription")
    ]
    return _derived_uid("series", *parts), True


def _derived_uid(*parts: str) -> str:
    """Return a UID that depends only on ``parts`` (a name-based UUID under the 2.25 root)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, chr(31).join(parts)).int}"


def _make_group(series_uid: str, instances: list[_Instance], uid_generated: bool) -> _SeriesGroup:
    first = instances[0].header
    frames = sum(_frame_count(instance.header) for instance in instances)
    info = SeriesInfo(
        series_uid=series_uid,
        modality=str(first.get("Modality", "") or ""),
        description=str(first.get("SeriesDescription", "") or ""),
        image_count=frames,
        uid_generated=uid_generated,
    )
    group = _SeriesGroup(info, instances)
    _repair_uids(group)
    return group


def _repair_uids(group: _SeriesGroup) -> None:
    """Fill empty UIDs in the headers so that a SEG can reference them.

    SOP Class and SOP Instance UIDs come from the file meta information when it
    has them. Other missing UIDs are derived from the series key and counted in
    ``group.generated_uids``.
    """
    series_uid = group.info.series_uid
    first = group.instances[0].header
    shared = {
        "SeriesInstanceUID": series_uid,
        "StudyInstanceUID": _uid_of(first, "StudyInstanceUID") or _derived_uid("study", series_uid),
        "FrameOfReferenceUID": _uid_of(first, "FrameOfReferenceUID")
        or _derived_uid("frame-of-reference", series_uid),
    }
    for instance in group.instances:
        header = instance.header
        for keyword, value in shared.items():
            if not _uid_of(header, keyword):
                setattr(header, keyword, value)
                group.generated_uids[keyword] += 1

        file_meta = getattr(header, "file_meta", Dataset())
        for keyword, meta_keyword in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            if _uid_of(header, keyword):
                continue
            value = _uid_of(file_meta, meta_keyword)
            if not value and keyword == "SOPInstanceUID":
                position = str(header.get("ImagePositionPatient", ""))
                value = _derived_uid("instance", series_uid, instance.path.name, position)
                group.generated_uids[keyword] += 1
            if value:
                setattr(header, keyword, value)


def _uid_of(dataset: Dataset, keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip()


def _choose_series(groups: list[_SeriesGroup], series_uid: str | None, series_field: str) -> _SeriesGroup:
    listing = "; ".join(group.info.describe() for group in groups)
    if series_uid:
        for group in groups:
            if group.info.series_uid == series_uid:
                return group
        raise InputError(
            series_field,
            f"the upload contains no image series with UID {series_uid}. It contains: {listing}. "
            "Pass one of these UIDs.",
            code="series_not_found",
        )
    if len(groups) > 1:
        raise InputError(
            series_field,
            f"the upload contains {len(groups)} image series: {listing}. "
            f"Pass '{series_field}' to choose one.",
            code="multiple_series",
            status=422,
        )
    return groups[0]


def _name_list(names: list[str]) -> str:
    listed = ", ".join(sorted(names)[:_NAME_LIST_LIMIT])
    if len(names) > _NAME_LIST_LIMIT:
        listed += f" and {len(names) - _NAME_LIST_LIMIT} more"
    return listed


# --------------------------------------------------------------------------
# Frames: one record per 2D image, from single-frame files or functional groups


@dataclass
class _FrameRecord:
    instance_index: int
    frame_number: int | None  # 1-based for multi-frame images
    position: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns) as in PixelSpacing
    rows: int
    columns: int
    localizer: bool
    slice_spacing_hint: float | None  # SpacingBetweenSlices or SliceThickness


def _frame_count(header: Dataset) -> int:
    try:
        return max(int(header.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _frame_records(instance_index: int, instance: _Instance, field: str) -> list[_FrameRecord]:
    header = instance.header
    if int(header.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError(
            field,
            f"'{instance.path.name}' is a colour image ({header.get('PhotometricInterpretation', '')}); "
            "only greyscale images such as CT can be segmented.",
            code="unsupported_image",
        )

    if "PerFrameFunctionalGroupsSequence" in header:
        return _functional_group_records(instance_index, instance, field)
    if _frame_count(header) > 1:
        raise InputError(
            field,
            f"'{instance.path.name}' is a multi-frame image without per-frame plane positions "
            "(no Per-Frame Functional Groups), so its slice geometry is unknown. Upload it as "
            "single-frame images or as an enhanced multi-frame image.",
            code="unsupported_image",
        )

    label = f"'{instance.path.name}'"
    cosines = _vector(header, "ImageOrientationPatient", 6, label, field)
    return [
        _FrameRecord(
            instance_index=instance_index,
            frame_number=None,
            position=_vector(header, "ImagePositionPatient", 3, label, field),
            row_cosine=cosines[:3],
            column_cosine=cosines[3:],
            pixel_spacing=tuple(_vector(header, "PixelSpacing", 2, label, field)),
            rows=int(header.Rows),
            columns=int(header.Columns),
            localizer=_is_localizer(header),
            slice_spacing_hint=_slice_spacing_hint(header),
        )
    ]


def _functional_group_records(instance_index: int, instance: _Instance, field: str) -> list[_FrameRecord]:
    header = instance.header
    shared = header.get("SharedFunctionalGroupsSequence", [Dataset()])
    shared = shared[0] if len(shared) else Dataset()
    per_frame = header.PerFrameFunctionalGroupsSequence
    records = []
    for index, frame_groups in enumerate(per_frame):
        label = f"frame {index + 1} of '{instance.path.name}'"
        position = _functional_group_item(frame_groups, shared, "PlanePositionSequence", label, field)
        orientation = _functional_group_item(frame_groups, shared, "PlaneOrientationSequence", label, field)
        measures = _functional_group_item(frame_groups, shared, "PixelMeasuresSequence", label, field)
        cosines = _vector(orientation, "ImageOrientationPatient", 6, label, field)
        records.append(
            _FrameRecord(
                instance_index=instance_index,
                frame_number=index + 1,
                position=_vector(position, "ImagePositionPatient", 3, label, field),
                row_cosine=cosines[:3],
                column_cosine=cosines[3:],
                pixel_spacing=tuple(_vector(measures, "PixelSpacing", 2, label, field)),
                rows=int(header.Rows),
                columns=int(header.Columns),
                localizer=_is_localizer(header),
                slice_spacing_hint=_slice_spacing_hint(measures),
            )
        )
    return records


def _functional_group_item(frame_groups: Dataset, shared: Dataset, keyword: str, label: str, field: str) -> Dataset:
    """Return the first item of a functional group macro, per-frame first, then shared."""
    for source in (frame_groups, shared):
        if keyword in source and len(source[keyword].value):
            return source[keyword].value[0]
    raise InputError(
        field,
        f"{label} has no {keyword} in its functional groups, so its slice geometry is unknown. "
        "Export the series again.",
        code="missing_geometry",
    )


def _vector(dataset: Dataset, keyword: str, length: int, label: str, field: str) -> np.ndarray:
    value = dataset.get(keyword)
    try:
        vector = np.array([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        vector = None
    if vector is None or vector.shape != (length,) or not np.all(np.isfinite(vector)):
        raise InputError(
            field,
            f"{label} has a missing or invalid {keyword} ({value!r}), so its geometry in the "
            "patient is unknown. Export the series again with complete geometry attributes.",
            code="missing_geometry",
        )
    return vector


def _slice_spacing_hint(dataset: Dataset) -> float | None:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(dataset.get(keyword) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return value
    return None


def _select_frames(group: _SeriesGroup, warnings: list[str], field: str) -> tuple[list[_FrameRecord], int]:
    """Return the frames of the one stack in the series and how many were dropped."""
    instances = _unique_instances(group, warnings)
    records = [
        record
        for index in instances
        for record in _frame_records(index, group.instances[index], field)
    ]
    total = len(records)

    localizers = [record for record in records if record.localizer]
    records = [record for record in records if not record.localizer]
    if localizers:
        warnings.append(f"Dropped {len(localizers)} LOCALIZER images from the series.")

    records = _keep_main_orientation(records, warnings, field)
    _check_uniform(records, "matrix size", lambda r: (r.columns, r.rows), lambda v: f"{v[0]}x{v[1]}", field)
    _check_uniform(
        records,
        "pixel spacing",
        lambda r: tuple(round(v, 3) for v in r.pixel_spacing),
        lambda v: f"{v[1]:g} x {v[0]:g} mm",
        field,
    )
    return records, total - len(records)


def _unique_instances(group: _SeriesGroup, warnings: list[str]) -> list[int]:
    seen: set[str] = set()
    unique: list[int] = []
    for index, instance in enumerate(group.instances):
        uid = str(instance.header.SOPInstanceUID)
        if uid in seen:
            continue
        seen.add(uid)
        unique.append(index)
    duplicates = len(group.instances) - len(unique)
    if duplicates:
        warnings.append(f"Ignored {duplicates} files that repeat the SOP Instance UID of another file.")
    return unique


def _keep_main_orientation(records: list[_FrameRecord], warnings: list[str], field: str) -> list[_FrameRecord]:
    clusters: list[list[_FrameRecord]] = []
    for record in records:
        for cluster in clusters:
            reference = cluster[0]
            if (
                np.allclose(record.row_cosine, reference.row_cosine, atol=ORIENTATION_ATOL)
                and np.allclose(record.column_cosine, reference.column_cosine, atol=ORIENTATION_ATOL)
            ):
                cluster.append(record)
                break
        else:
            clusters.append([record])
    if not clusters:
        raise InputError(
            field,
            "the series contains only LOCALIZER images, which cannot be read as a volume. Upload the axial series.",
            code="mixed_geometry",
        )

    clusters.sort(key=len, reverse=True)
    main, others = clusters[0], [record for cluster in clusters[1:] for record in cluster]
    allowed = max(MAX_DROPPED_IMAGES, int(MAX_DROPPED_FRACTION * len(main)))
    if not others:
        return main

    found = ", ".join(f"{len(cluster)} {_orientation_name(cluster[0])}" for cluster in clusters)
    if len(others) > allowed or len(clusters[1]) == len(main):
        raise InputError(
            field,
            f"the series mixes images in {len(clusters)} orientations ({found}). "
            "Upload a series whose images share one orientation, or pass the UID of such a series.",
            code="mixed_geometry",
        )
    warnings.append(
        f"Dropped {len(others)} images whose orientation differs from the rest of the series "
        f"(found {found}); they are probably localizers."
    )
    return main


def _orientation_name(record: _FrameRecord) -> str:
    normal = np.cross(record.row_cosine, record.column_cosine)
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _check_uniform(records: list[_FrameRecord], attribute: str, key, describe, field: str) -> None:
    """Raise mixed_geometry when ``key`` takes more than one value over the records."""
    counts = Counter(key(record) for record in records)
    if len(counts) <= 1:
        return
    found = ", ".join(f"{count} images of {describe(value)}" for value, count in counts.most_common())
    raise InputError(
        field,
        f"the images of the series differ in {attribute}: {found}. "
        f"Upload a series whose images share one {attribute}.",
        code="mixed_geometry",
    )


# --------------------------------------------------------------------------
# Geometry: sort along the normal, check spacing and in-plane alignment


@dataclass
class _Geometry:
    origin: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    normal: np.ndarray
    spacing: tuple[float, float, float]  # x (columns), y (rows), z (slices)
    records: list[_FrameRecord]  # sorted along the normal
    distances: np.ndarray  # slice distances along the normal, sorted, relative to the first
    offsets: np.ndarray  # in-plane offset of each sorted slice (x, y) in pixels
    targets: np.ndarray  # distances of the output slices, relative to the first
    shifted: bool  # True when some slice needs an in-plane shift


def _plan_geometry(records: list[_FrameRecord], group: _SeriesGroup, warnings: list[str], field: str) -> _Geometry:
    row, column, normal = _orthonormal_axes(records[0], field)
    row_spacing, column_spacing = records[0].pixel_spacing
    if row_spacing <= 0 or column_spacing <= 0:
        raise InputError(
            field,
            f"the series has a non-positive PixelSpacing ({row_spacing}, {column_spacing}). Export the series again.",
            code="missing_geometry",
        )

    records = sorted(records, key=lambda record: float(record.position @ normal))
    positions = np.array([record.position for record in records])
    projections = positions @ normal
    distances = projections - projections[0]
    origin = positions[0]

    _check_duplicates(distances, records, group, field)

    in_plane = positions - origin - np.outer(distances, normal)
    offsets = np.stack([in_plane @ row / column_spacing, in_plane @ column / row_spacing], axis=1)
    shifted = bool(np.any(np.abs(offsets) > SPACING_RTOL))

    slice_spacing, targets = _plan_slices(distances, float(projections[0]), records, warnings, field)
    if shifted:
        tilt = np.degrees(np.arctan2(np.linalg.norm(in_plane[-1]), distances[-1])) if distances[-1] > 0 else 0.0
        warnings.append(
            "The slice origins are shifted within the image plane from slice to slice (gantry tilt of "
            f"about {tilt:.1f} degrees, or a moving field of view; largest shift "
            f"{np.abs(offsets).max():.2f} pixels). The volume was resampled onto the plane grid of the "
            "first slice by linear interpolation; areas shifted out of view are filled with the minimum value."
        )

    return _Geometry(
        origin=origin,
        row_cosine=row,
        column_cosine=column,
        normal=normal,
        spacing=(column_spacing, row_spacing, slice_spacing),
        records=records,
        distances=distances,
        offsets=offsets,
        targets=targets,
        shifted=shifted,
    )


def _orthonormal_axes(record: _FrameRecord, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row = record.row_cosine / np.linalg.norm(record.row_cosine)
    column = record.column_cosine / np.linalg.norm(record.column_cosine)
    if abs(float(row @ column)) > ORIENTATION_ATOL:
        raise InputError(
            field,
            f"ImageOrientationPatient {list(record.row_cosine) + list(record.column_cosine)} has row and column "
            "directions that are not perpendicular. Export the series again.",
            code="missing_geometry",
        )
    column = column - (column @ row) * row
    column /= np.linalg.norm(column)
    return row, column, np.cross(row, column)


def _check_duplicates(distances: np.ndarray, records: list[_FrameRecord], group: _SeriesGroup, field: str) -> None:
    clashes = np.nonzero(np.diff(distances) < DUPLICATE_POSITION_MM)[0]
    if clashes.size == 0:
        return
    where = ", ".join(f"{v:.2f}" for v in records[int(clashes[0])].position)
    raise InputError(
        field,
        f"{clashes.size + 1} or more images of series {group.info.series_uid} lie at the same position as "
        f"another image (the first at ({where}) mm). The series probably holds several volumes (phases, "
        "echoes or repeated acquisitions). Upload a series with one image per position.",
        code="duplicate_position",
    )


def _plan_slices(
    distances: np.ndarray, first_projection: float, records: list[_FrameRecord], warnings: list[str], field: str
) -> tuple[float, np.ndarray]:
    """Return the slice spacing and the output slice distances relative to the first slice."""
    count = len(distances)
    if count == 1:
        hint = records[0].slice_spacing_hint
        spacing = hint if hint else 1.0
        warnings.append(
            "The series has a single image, so the volume has one slice; its thickness was taken from "
            + ("SpacingBetweenSlices or SliceThickness." if hint else "no attribute and set to 1 mm.")
        )
        return spacing, np.zeros(1)

    gaps = np.diff(distances)
    median = float(np.median(gaps))
    if np.all(np.abs(gaps - median) <= SPACING_RTOL * median):
        spacing = float(distances[-1] / (count - 1))
        return spacing, distances.copy()

    extent = float(distances[-1])
    target_count = int(round(extent / median)) + 1
    if target_count > MAX_RESAMPLE_GROWTH * count:
        raise InputError(
            field,
            f"the slice positions are too irregular to resample: {count} slices span {extent:.1f} mm with "
            f"gaps from {gaps.min():.2f} to {gaps.max():.2f} mm (median {median:.2f} mm). Upload a complete "
            "series with regular slice spacing.",
            code="irregular_spacing",
        )
    spacing = extent / (target_count - 1)
    targets = np.arange(target_count) * spacing
    irregular = np.nonzero(np.abs(gaps - median) > SPACING_RTOL * median)[0]
    examples = ", ".join(
        f"{gaps[i]:.2f} mm between {first_projection + distances[i]:.2f} and {first_projection + distances[i + 1]:.2f}"
        for i in irregular[:5]
    )
    warnings.append(
        f"The slice spacing is irregular: expected {median:.2f} mm, found {examples}"
        f"{' and more' if irregular.size > 5 else ''} (positions in mm along the slice normal). "
        "A slice may be missing. The volume was resampled "
        f"onto a regular grid of {target_count} slices {spacing:.3f} mm apart by linear interpolation "
        "between neighbouring slices."
    )
    return spacing, targets


# --------------------------------------------------------------------------
# Pixels: decode, apply the modality LUT, resample where needed


def _load_slices(group: _SeriesGroup, records: list[_FrameRecord], field: str) -> dict[tuple[int, int | None], np.ndarray]:
    """Decode the pixel data of every record into modality units, keyed by (instance index, frame number).

    Peak memory is about twice the float32 volume, because ``_assemble`` copies
    these slices into one array.
    """
    records_by_instance: dict[int, list[_FrameRecord]] = {}
    for record in records:
        records_by_instance.setdefault(record.instance_index, []).append(record)

    missing: list[str] = []
    slices: dict[tuple[int, int | None], np.ndarray] = {}
    for instance_index, instance_records in records_by_instance.items():
        instance = group.instances[instance_index]
        dataset = _read_full(instance, field)
        if not any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            missing.append(instance.path.name)
            continue
        pixels = _decode(dataset, instance, field)
        for record in instance_records:
            if record.frame_number is None:
                frame = pixels if pixels.ndim == 2 else pixels[0]
            else:
                frame = pixels[record.frame_number - 1] if pixels.ndim == 3 else pixels
            slices[(instance_index, record.frame_number)] = _modality_values(frame, dataset, record.frame_number)

    if missing:
        raise InputError(
            field,
            f"{len(missing)} images of series {group.info.series_uid} have no Pixel Data: {_name_list(missing)}. "
            "Export the series again with its pixel data.",
            code="missing_pixel_data",
        )
    return slices


def _read_full(instance: _Instance, field: str) -> Dataset:
    try:
        dataset = pydicom.dcmread(instance.path, force=True)
    except Exception as exc:  # noqa: BLE001 - the header read worked, so this is damaged pixel data
        raise InputError(
            field,
            f"'{instance.path.name}' cannot be read ({type(exc).__name__}). Export the series again.",
            code="damaged_dicom",
        ) from exc

    # pydicom decodes pixel data by the file meta Transfer Syntax UID, which
    # files without a preamble and file meta lack.
    if "TransferSyntaxUID" not in dataset.file_meta:
        dataset.file_meta.TransferSyntaxUID = instance.transfer_syntax
    return dataset


def _decode(dataset: Dataset, instance: _Instance, field: str) -> np.ndarray:
    try:
        return dataset.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise many types
        syntax = UID(instance.transfer_syntax).name if instance.transfer_syntax else "unknown transfer syntax"
        logger.info("pixel data decode failed (%s): %s", syntax, type(exc).__name__)
        raise InputError(
            field,
            f"the pixel data of '{instance.path.name}' ({syntax}) cannot be decoded: {exc}. "
            "Export the series uncompressed (Explicit VR Little Endian) and re-upload it.",
            code="unreadable_pixel_data",
        ) from exc


def _modality_values(frame: np.ndarray, dataset: Dataset, frame_number: int | None) -> np.ndarray:
    """Apply Rescale Slope and Intercept (or a Modality LUT) of one frame."""
    if frame_number is None and "ModalityLUTSequence" in dataset:
        return np.asarray(apply_modality_lut(frame, dataset), dtype=np.float32)

    slope, intercept = 1.0, 0.0
    transformation = _frame_transformation(dataset, frame_number)
    source = transformation if transformation is not None else dataset
    if "RescaleSlope" in source or "RescaleIntercept" in source:
        slope = float(source.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    return (frame.astype(np.float64) * slope + intercept).astype(np.float32)


def _frame_transformation(dataset: Dataset, frame_number: int | None) -> Dataset | None:
    if frame_number is None:
        return None
    groups = []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) >= frame_number:
        groups.append(per_frame[frame_number - 1])
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared):
        groups.append(shared[0])
    for item in groups:
        sequence = item.get("PixelValueTransformationSequence")
        if sequence is not None and len(sequence):
            return sequence[0]
    return None


def _assemble(
    slices: dict[tuple[int, int | None], np.ndarray],
    geometry: _Geometry,
) -> tuple[np.ndarray, list[SourceFrame | None]]:
    """Stack the slices in order and resample onto the target grid where needed."""
    sorted_records = geometry.records
    stack = [slices[(record.instance_index, record.frame_number)] for record in sorted_records]
    fill = float(min(float(s.min()) for s in stack))

    if geometry.shifted:
        stack = [
            _shift_slice(array, offset, fill) if np.any(np.abs(offset) > SPACING_RTOL) else array
            for array, offset in zip(stack, geometry.offsets)
        ]

    output = np.empty((len(geometry.targets),) + stack[0].shape, dtype=np.float32)
    frames: list[SourceFrame | None] = []
    tolerance = SPACING_RTOL * geometry.spacing[2]
    for z, target in enumerate(geometry.targets):
        upper = int(np.searchsorted(geometry.distances, target - tolerance))
        upper = min(upper, len(stack) - 1)
        if abs(geometry.distances[upper] - target) <= tolerance:
            output[z] = stack[upper]
            exact = not geometry.shifted or not np.any(np.abs(geometry.offsets[upper]) > SPACING_RTOL)
            record = sorted_records[upper]
            frames.append(SourceFrame(record.instance_index, record.frame_number) if exact else None)
            continue
        lower = upper - 1
        weight = (target - geometry.distances[lower]) / (geometry.distances[upper] - geometry.distances[lower])
        output[z] = (1.0 - weight) * stack[lower] + weight * stack[upper]
        frames.append(None)
    return output, frames


def _shift_slice(array: np.ndarray, offset: np.ndarray, fill: float) -> np.ndarray:
    # Output voxel (x, y) of the first slice's grid lies at (x - ox, y - oy) of
    # this slice, and ndimage.shift computes output[i] = input[i - shift].
    column_offset, row_offset = float(offset[0]), float(offset[1])
    return ndimage.shift(array, (row_offset, column_offset), order=1, mode="grid-constant", cval=fill).astype(np.float32)


def _to_sitk(volume: np.ndarray, geometry: _Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(volume, isVector=False)
    image.SetSpacing(tuple(float(v) for v in geometry.spacing))
    image.SetOrigin(tuple(float(v) for v in geometry.origin))
    axes = np.stack([geometry.row_cosine, geometry.column_cosine, geometry.normal], axis=1)
    image.SetDirection(tuple(float(v) for v in axes.flatten()))
    return image


# --------------------------------------------------------------------------
# References for the SEG writer, and closing warnings


def _used_instances(records: list[_FrameRecord]) -> list[int]:
    """Return the instance indexes used by ``records``, in order of first use along the normal."""
    seen: dict[int, None] = {}
    for record in records:
        seen.setdefault(record.instance_index, None)
    return list(seen)


def _warn_lossy(group: _SeriesGroup, records: list[_FrameRecord], warnings: list[str]) -> None:
    lossy = [
        i for i in _used_instances(records)
        if group.instances[i].transfer_syntax in _LOSSY_SYNTAXES
        or str(group.instances[i].header.get("LossyImageCompression", "") or "") == "01"
    ]
    if lossy:
        warnings.append(
            f"{len(lossy)} images were stored with lossy compression, so their values differ slightly "
            "from the original scan."
        )
