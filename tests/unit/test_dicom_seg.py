"""Writing DICOM SEG from label maps and reading it back with highdicom."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from lesions.dicom_seg import write_dicom_seg
from lesions.dicom_series import DicomVolume, read_dicom_series
from tests import dicom_variants as variants

# The real series carry SH values longer than 16 characters; pydicom warns when variants re-save them.
pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")

IBSI_CT = "ibsi_sts_019/dicom_ct/image"


@pytest.fixture(scope="module")
def ibsi_files() -> list[Path]:
    return variants.real_series(IBSI_CT)


@pytest.fixture(scope="module")
def ibsi_volume(ibsi_files) -> DicomVolume:
    return read_dicom_series(ibsi_files)


def lesion_labels(volume: DicomVolume) -> np.ndarray:
    """Return labels [z, y, x]: lesion 3 over slices 10-13, lesion 7 on slice 30, nothing for lesion 5."""
    labels = np.zeros(tuple(reversed(volume.image.GetSize())), dtype=np.int32)
    labels[10:14, 50:60, 60:75] = 3
    labels[30, 5:9, 100:104] = 7
    labels[30, 20:22, 20:22] = 99  # not listed, so not written
    return labels


def frame_slice_index(volume: DicomVolume, frame_item) -> int:
    """Return the volume slice index z of a SEG frame, from its Image Position (Patient)."""
    position = [float(v) for v in frame_item.PlanePositionSequence[0].ImagePositionPatient]
    continuous = volume.image.TransformPhysicalPointToContinuousIndex(position)
    assert abs(continuous[0]) < 1e-3
    assert abs(continuous[1]) < 1e-3
    z = int(round(continuous[2]))
    assert abs(continuous[2] - z) < 1e-3
    return z


def assert_frames_match_labels(seg, volume: DicomVolume, labels: np.ndarray, lesion_by_segment: dict[int, int]):
    pixels = seg.pixel_array
    expected_frames = {
        (z, segment)
        for segment, lesion in lesion_by_segment.items()
        for z in range(labels.shape[0])
        if np.any(labels[z] == lesion)
    }
    seen = set()
    shared = seg.SharedFunctionalGroupsSequence[0]
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        # highdicom moves the segment identification to the shared groups when there is one segment.
        identification = item if "SegmentIdentificationSequence" in item else shared
        segment = int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        z = frame_slice_index(volume, item)
        seen.add((z, segment))
        np.testing.assert_array_equal(pixels[index].astype(bool), labels[z] == lesion_by_segment[segment])
    assert seen == expected_frames


# --------------------------------------------------------------------------
# Single-frame source series


@pytest.fixture(scope="module")
def ibsi_seg(ibsi_volume, tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "lesions.dcm"
    labels = lesion_labels(ibsi_volume)
    written = write_dicom_seg(labels, ibsi_volume, [3, 5, 7], path)
    return written, hd.seg.segread(path), labels


def test_seg_segments_described(ibsi_seg):
    written, seg, _ = ibsi_seg

    assert seg.SegmentationType == "BINARY"
    assert written.segment_numbers == {3: 1, 5: 2, 7: 3}
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Lesion 3", "Lesion 5", "Lesion 7"]
    for item in seg.SegmentSequence:
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        property_type = item.SegmentedPropertyTypeCodeSequence[0]
        assert category.CodeValue == codes.SCT.MorphologicallyAbnormalStructure.value
        assert property_type.CodeValue == codes.SCT.Neoplasm.value
        assert item.SegmentAlgorithmType == "SEMIAUTOMATIC"


def test_seg_carries_patient_and_study(ibsi_seg, ibsi_volume):
    written, seg, _ = ibsi_seg
    source = ibsi_volume.source_datasets[0]

    assert seg.PatientID == source.PatientID
    assert seg.PatientName == source.PatientName
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID == written.series_instance_uid
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SOPInstanceUID == written.sop_instance_uid
    assert seg.SeriesDescription == "TumorTrack lesions"


def test_seg_references_source_series(ibsi_seg, ibsi_volume):
    _, seg, _ = ibsi_seg
    referenced = seg.ReferencedSeriesSequence[0]

    assert len(seg.ReferencedSeriesSequence) == 1
    assert referenced.SeriesInstanceUID == ibsi_volume.source_datasets[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in ibsi_volume.source_datasets
    }


def test_seg_frames_reference_their_slices(ibsi_seg, ibsi_volume):
    written, seg, labels = ibsi_seg
    slice_of_uid = {
        ibsi_volume.source_datasets[frame.dataset_index].SOPInstanceUID: z
        for z, frame in enumerate(ibsi_volume.source_frames)
    }

    assert written.frame_references is True
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert slice_of_uid[source.ReferencedSOPInstanceUID] == frame_slice_index(ibsi_volume, item)
    assert_frames_match_labels(seg, ibsi_volume, labels, {1: 3, 2: 5, 3: 7})


def test_seg_empty_lesion_kept_without_frames(ibsi_seg, ibsi_volume):
    written, seg, labels = ibsi_seg
    uids = [ibsi_volume.source_datasets[frame.dataset_index].SOPInstanceUID for frame in ibsi_volume.source_frames]

    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3])

    assert written.empty_lesions == [5]
    assert masks.shape == labels.shape + (3,)
    assert not masks[..., 1].any()
    np.testing.assert_array_equal(masks[..., 0].astype(bool), labels == 3)
    np.testing.assert_array_equal(masks[..., 2].astype(bool), labels == 7)


def test_seg_all_lesions_empty(ibsi_volume, tmp_path):
    labels = np.zeros(tuple(reversed(ibsi_volume.image.GetSize())), dtype=np.uint8)

    written = write_dicom_seg(labels, ibsi_volume, [1], tmp_path / "empty.dcm")
    seg = hd.seg.segread(tmp_path / "empty.dcm")

    assert written.empty_lesions == [1]
    assert len(seg.SegmentSequence) == 1
    assert not seg.pixel_array.any()


def test_seg_liver_matches_dcmqi(tmp_path):
    volume = read_dicom_series(variants.real_series("dcmqi_ct3slice_liver_seg/ct"))
    reference = hd.seg.segread(variants.shared_file("dcmqi_ct3slice_liver_seg/liver.dcm"))
    uids = [volume.source_datasets[frame.dataset_index].SOPInstanceUID for frame in volume.source_frames]
    liver = reference.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], ignore_spatial_locations=True
    )[..., 0]
    nrrd = sitk.GetArrayFromImage(
        sitk.ReadImage(str(variants.shared_file("dcmqi_ct3slice_liver_seg/liver_seg.nrrd")))
    )

    write_dicom_seg(liver.astype(np.int32), volume, [1], tmp_path / "liver.dcm")
    ours = hd.seg.segread(tmp_path / "liver.dcm")
    mask = ours.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0]

    np.testing.assert_array_equal(liver > 0, nrrd > 0)
    np.testing.assert_array_equal(mask > 0, nrrd > 0)


def test_seg_for_series_with_generated_uids(tmp_path):
    volume = read_dicom_series(variants.real_series("totalseg_ct_dicom/dicom"))
    labels = np.zeros(tuple(reversed(volume.image.GetSize())), dtype=np.int16)
    labels[5:8, 200:240, 250:300] = 2

    written = write_dicom_seg(labels, volume, [2], tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")

    assert written.frame_references is True
    assert seg.StudyInstanceUID == volume.source_datasets[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.summary.series.series_uid
    assert_frames_match_labels(seg, volume, labels, {1: 2})


def test_seg_for_flipped_synthetic_series(tmp_path):
    values = np.random.default_rng(1).integers(-1000, 1000, size=(12, 32, 32), dtype=np.int16)
    direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # stacking against row x column
    files = variants.synthetic_series(
        tmp_path / "series", values, spacing=(0.9, 1.1, 2.0), origin=(-5.0, 7.0, 100.0), direction=direction
    )
    volume = read_dicom_series(files)
    labels = np.zeros((12, 32, 32), dtype=np.int32)
    labels[2:5, 3:9, 20:30] = 1
    labels[9, 10:20, 0:4] = 2

    written = write_dicom_seg(labels, volume, [1, 2], tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")

    assert written.frame_references is True
    assert_frames_match_labels(seg, volume, labels, {1: 1, 2: 2})


# --------------------------------------------------------------------------
# Enhanced multi-frame and resampled sources


def test_seg_for_enhanced_multiframe(ibsi_files, tmp_path):
    volume = read_dicom_series([variants.enhanced_multiframe(ibsi_files, tmp_path / "source")])
    labels = lesion_labels(volume)

    written = write_dicom_seg(labels, volume, [3, 7], tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")

    slice_of_frame = {frame.frame_number: z for z, frame in enumerate(volume.source_frames)}
    source_uid = volume.source_datasets[0].SOPInstanceUID
    assert written.frame_references is True
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == source_uid
        assert slice_of_frame[int(source.ReferencedFrameNumber)] == frame_slice_index(volume, item)
    assert_frames_match_labels(seg, volume, labels, {1: 3, 2: 7})


def test_seg_for_missing_slice_uses_volume_grid(ibsi_files, tmp_path):
    volume = read_dicom_series(variants.remove_slice(ibsi_files, tmp_path / "source", index=12))
    labels = lesion_labels(volume)

    written = write_dicom_seg(labels, volume, [3, 7], tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")

    assert volume.resampled is True
    assert written.frame_references is False
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.source_datasets[0].SeriesInstanceUID
    assert_frames_match_labels(seg, volume, labels, {1: 3, 2: 7})


def test_seg_for_tilted_series(ibsi_files, tmp_path):
    volume = read_dicom_series(variants.tilt(ibsi_files, tmp_path / "source"))
    labels = lesion_labels(volume)

    write_dicom_seg(labels, volume, [3, 7], tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")

    assert volume.resampled is True
    assert_frames_match_labels(seg, volume, labels, {1: 3, 2: 7})


# --------------------------------------------------------------------------
# Caller errors


def test_seg_rejects_wrong_shape(ibsi_volume, tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_dicom_seg(np.zeros((3, 4, 5), dtype=np.int32), ibsi_volume, [1], tmp_path / "x.dcm")


def test_seg_rejects_repeated_lesion_ids(ibsi_volume, tmp_path):
    labels = np.zeros(tuple(reversed(ibsi_volume.image.GetSize())), dtype=np.int32)

    with pytest.raises(ValueError, match="distinct positive"):
        write_dicom_seg(labels, ibsi_volume, [2, 2], tmp_path / "x.dcm")


def test_seg_rejects_no_lesions(ibsi_volume, tmp_path):
    labels = np.zeros(tuple(reversed(ibsi_volume.image.GetSize())), dtype=np.int32)

    with pytest.raises(ValueError, match="at least one segment"):
        write_dicom_seg(labels, ibsi_volume, [], tmp_path / "x.dcm")
