"""Write lesion label maps as DICOM Segmentation (SEG) objects with highdicom.

``write_dicom_seg`` stores one BINARY segment per lesion (category
"Morphologically abnormal structure", type "Neoplasm", both SNOMED CT). The
SEG gets new Series and SOP Instance UIDs and carries over the patient and
study attributes of the source series; highdicom copies them.

How frames reference the source images depends on how the volume was read:

* Every slice copied from a source frame (the usual case): each SEG frame
  references its source image, or its frame of an enhanced multi-frame image,
  through the Derivation Image Sequence.
* Volume resampled (missing slice, irregular spacing, gantry tilt), or a series
  spread over several multi-frame files: SEG frames carry their own plane
  positions on the volume grid. highdicom still references, for every frame,
  a source frame in the same plane when there is one for each (after a
  gantry-tilt correction, with Spatial Locations Preserved NO). Otherwise
  the SEG references only the source series and instances as a whole.

A lesion whose mask is empty keeps its segment (so segment ``i`` is always
``lesion_ids[i - 1]``) but gets no frames. ``WrittenSeg.empty_lesions`` lists
such lesions.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from lesions.dicom_series import DicomVolume

logger = logging.getLogger(__name__)

MANUFACTURER = "TumorTrack"
# Highest segment number a BINARY SEG can hold (Segment Number is US).
MAX_SEGMENTS = 65535


@dataclass(frozen=True)
class WrittenSeg:
    """Identifiers of a written SEG and how lesions map to its segments."""

    path: Path
    series_instance_uid: str
    sop_instance_uid: str
    segment_numbers: dict[int, int]  # lesion id -> segment number
    empty_lesions: list[int]
    frame_references: bool  # True when every frame has a Derivation Image Sequence reference


def write_dicom_seg(
    labels: np.ndarray,
    volume: DicomVolume,
    lesion_ids: list[int],
    path: Path,
    *,
    series_description: str = "TumorTrack lesions",
    series_number: int = 1000,
    algorithm_name: str = "TumorTrack",
    algorithm_version: str | None = None,
    algorithm_type: str = "SEMIAUTOMATIC",
    uids: tuple[str, str] | None = None,
) -> WrittenSeg:
    """Write ``labels`` ([z, y, x] on ``volume.image``) as a DICOM SEG at ``path``.

    Each id in ``lesion_ids`` becomes segment number ``index + 1``, labelled
    "Lesion <id>". Voxels with labels not in ``lesion_ids`` are not written.
    Raises ValueError when ``labels`` does not match the volume's size or the
    ids are not distinct positive integers.
    """
    _check_arguments(labels, volume, lesion_ids)
    segment_numbers = {int(lesion_id): index + 1 for index, lesion_id in enumerate(lesion_ids)}
    segment_map = _segment_map(labels, segment_numbers)
    present = set(np.unique(segment_map).tolist()) - {0}
    empty_lesions = [lesion_id for lesion_id, number in segment_numbers.items() if number not in present]

    version = algorithm_version or _package_version()
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"Lesion {lesion_id}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=algorithm_type,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=algorithm_name,
                family=codes.cid7162.ArtificialIntelligence,
                version=version,
            ),
            tracking_id=f"Lesion {lesion_id}",
            tracking_uid=hd.UID(),
        )
        for lesion_id, number in segment_numbers.items()
    ]

    layout = _frame_layout(volume, segment_map)
    series_uid, sop_uid = uids or (hd.UID(), hd.UID())
    # highdicom and pydicom warn about odd values copied from the source
    # headers, and some of those warnings quote the patient name. Record them
    # and log only their number.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = hd.seg.Segmentation(
            source_images=layout.source_images,
            pixel_array=layout.pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=algorithm_name,
            software_versions=version,
            device_serial_number="0",
            series_description=series_description,
            content_label="LESIONS",
            content_description=series_description,
            plane_positions=layout.plane_positions,
            plane_orientation=layout.plane_orientation,
            pixel_measures=layout.pixel_measures,
            further_source_images=layout.further_source_images,
            omit_empty_frames=True,
        )
        seg.save_as(path, enforce_file_format=True)
    if caught:
        logger.info("writing the DICOM SEG raised %d library warnings about source attributes", len(caught))

    frame_references = all(
        len(item.get("DerivationImageSequence", [])) > 0 for item in seg.PerFrameFunctionalGroupsSequence
    )
    logger.info(
        "wrote DICOM SEG: %d segments (%d empty), %d frames, frame references %s",
        len(descriptions), len(empty_lesions), int(seg.NumberOfFrames), frame_references,
    )
    return WrittenSeg(
        path=path,
        series_instance_uid=str(series_uid),
        sop_instance_uid=str(sop_uid),
        segment_numbers=segment_numbers,
        empty_lesions=empty_lesions,
        frame_references=frame_references,
    )


def derived_seg_uids(job_id: str, artifact: str) -> tuple[str, str]:
    """Return Series and SOP Instance UIDs derived from a job id, the same on every attempt.

    A retried job then writes, and stores to a PACS, the same instance again
    instead of a second copy with new UIDs.
    """
    series = generate_uid(prefix=None, entropy_srcs=[job_id, artifact, "series"])
    instance = generate_uid(prefix=None, entropy_srcs=[job_id, artifact, "instance"])
    return str(series), str(instance)


def _check_arguments(labels: np.ndarray, volume: DicomVolume, lesion_ids: list[int]) -> None:
    expected = tuple(reversed(volume.image.GetSize()))
    if labels.shape != expected:
        raise ValueError(f"labels have shape {labels.shape}, but the volume is {expected} as [z, y, x]")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise ValueError(f"labels must be an integer array, not {labels.dtype}")
    if not lesion_ids:
        raise ValueError("lesion_ids is empty; a DICOM SEG needs at least one segment")
    if len(set(lesion_ids)) != len(lesion_ids) or any(int(i) <= 0 for i in lesion_ids):
        raise ValueError(f"lesion_ids must be distinct positive integers, got {lesion_ids}")
    if len(lesion_ids) > MAX_SEGMENTS:
        raise ValueError(f"a DICOM SEG can contain at most {MAX_SEGMENTS} segments, got {len(lesion_ids)} lesions")


def _segment_map(labels: np.ndarray, segment_numbers: dict[int, int]) -> np.ndarray:
    """Return a uint16 array of segment numbers (0 = background) for the listed lesions."""
    values, inverse = np.unique(labels, return_inverse=True)
    lookup = np.array([segment_numbers.get(int(value), 0) for value in values], dtype=np.uint16)
    return lookup[inverse].reshape(labels.shape)


@dataclass
class _FrameLayout:
    source_images: list[Dataset]
    pixel_array: np.ndarray
    plane_positions: list[hd.PlanePositionSequence] | None = None
    plane_orientation: hd.PlaneOrientationSequence | None = None
    pixel_measures: hd.PixelMeasuresSequence | None = None
    further_source_images: list[Dataset] | None = None


def _frame_layout(volume: DicomVolume, segment_map: np.ndarray) -> _FrameLayout:
    """Arrange the segment map so that highdicom can match frames to source frames."""
    frames = volume.source_frames
    datasets = _prepared_sources(volume.source_datasets)

    if not volume.resampled and all(frame.frame_number is None for frame in frames):
        # highdicom pairs pixel_array[i] with source_images[i].
        return _FrameLayout(
            source_images=[datasets[frame.dataset_index] for frame in frames],
            pixel_array=segment_map,
        )

    if not volume.resampled and len(datasets) == 1:
        # highdicom pairs pixel_array[i] with frame i + 1 of the one multi-frame image.
        source = datasets[0]
        pixel_array = np.zeros((int(source.NumberOfFrames),) + segment_map.shape[1:], dtype=segment_map.dtype)
        for z, frame in enumerate(frames):
            pixel_array[frame.frame_number - 1] = segment_map[z]
        return _FrameLayout(source_images=[source], pixel_array=pixel_array)

    return _explicit_layout(volume.image, datasets, segment_map)


def _explicit_layout(image: sitk.Image, datasets: list[Dataset], segment_map: np.ndarray) -> _FrameLayout:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    column_spacing, row_spacing, slice_spacing = image.GetSpacing()
    positions = [
        hd.PlanePositionSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            image_position=image.TransformIndexToPhysicalPoint((0, 0, z)),
        )
        for z in range(segment_map.shape[0])
    ]
    orientation = hd.PlaneOrientationSequence(
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        image_orientation=[*direction[:, 0], *direction[:, 1]],
    )
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=[row_spacing, column_spacing],
        slice_thickness=slice_spacing,
        spacing_between_slices=slice_spacing,
    )

    multiframe = any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets)
    source_images = datasets[:1] if multiframe else datasets
    further = datasets[1:] if multiframe and len(datasets) > 1 else None
    return _FrameLayout(
        source_images=source_images,
        pixel_array=segment_map,
        plane_positions=positions,
        plane_orientation=orientation,
        pixel_measures=measures,
        further_source_images=further,
    )


def _prepared_sources(datasets: list[Dataset]) -> list[Dataset]:
    """Return the source headers with the fixes highdicom needs, copying only the changed ones.

    highdicom requires identical ImageOrientationPatient values across
    single-frame sources (the reader already checked that they agree within
    tolerance) and rejects an empty Specific Character Set, which means the
    default repertoire and can be dropped.
    """
    orientation = list(datasets[0].get("ImageOrientationPatient", []))
    prepared = []
    for dataset in datasets:
        realign = "ImageOrientationPatient" in dataset and list(dataset.ImageOrientationPatient) != orientation
        empty_charset = "SpecificCharacterSet" in dataset and not dataset.SpecificCharacterSet
        if realign or empty_charset:
            dataset = copy.deepcopy(dataset)
            if realign:
                dataset.ImageOrientationPatient = orientation
            if empty_charset:
                del dataset.SpecificCharacterSet
        prepared.append(dataset)
    return prepared


def _package_version() -> str:
    try:
        return metadata.version("tumortrack")
    except metadata.PackageNotFoundError:
        return "unknown"
