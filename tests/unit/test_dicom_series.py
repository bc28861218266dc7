"""Reading DICOM series: real series, variants of a real series, and synthetic geometry."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lesions.dicom_series import list_dicom_series, read_dicom_series
from lesions.errors import InputError
from tests import dicom_variants as variants

# The real series carry SH values longer than 16 characters; pydicom warns when variants re-save them.
pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")

IBSI_CT = "ibsi_sts_019/dicom_ct/image"
IBSI_RTSTRUCT = "ibsi_sts_019/dicom_ct/mask"
NSCLC_CT = "nsclc_lung1_001_ct_gtv/ct_subset"
TOTALSEG_CT = "totalseg_ct_dicom/dicom"
LIVER_CT = "dcmqi_ct3slice_liver_seg/ct"


@pytest.fixture(scope="module")
def ibsi_files() -> list[Path]:
    return variants.real_series(IBSI_CT)


@pytest.fixture(scope="module")
def ibsi_volume(ibsi_files):
    return read_dicom_series(ibsi_files)


@pytest.fixture(scope="module")
def ibsi_array(ibsi_volume) -> np.ndarray:
    return sitk.GetArrayFromImage(ibsi_volume.image)


def assert_same_grid(image: sitk.Image, reference: sitk.Image, tolerance: float = 1e-4) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=tolerance)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=tolerance)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=tolerance)


def corner_points(image: sitk.Image) -> np.ndarray:
    """Return the physical points of the 8 corner voxels, sorted, to compare grids stored with flips."""
    size = image.GetSize()
    corners = [
        image.TransformIndexToPhysicalPoint((x, y, z))
        for x in (0, size[0] - 1)
        for y in (0, size[1] - 1)
        for z in (0, size[2] - 1)
    ]
    return np.array(sorted(corners))


# --------------------------------------------------------------------------
# Real series


def test_ibsi_matches_nifti_twin(ibsi_volume, ibsi_array):
    reference = sitk.ReadImage(str(variants.shared_file("ibsi_sts_019/ct_image.nii.gz")))

    # The NIfTI twin stores spacing and origin as float32, hence 1e-4 mm.
    assert_same_grid(ibsi_volume.image, reference)
    assert ibsi_volume.image.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(ibsi_array, sitk.GetArrayFromImage(reference))


def test_ibsi_summary(ibsi_volume):
    summary = ibsi_volume.summary

    assert summary.series.modality == "CT"
    assert summary.series.image_count == 47
    assert summary.images_used == 47
    assert summary.size == (136, 134, 47)
    assert summary.resampled is False
    assert ibsi_volume.warnings == []
    assert len(ibsi_volume.source_datasets) == 47
    assert all("PixelData" not in dataset for dataset in ibsi_volume.source_datasets)
    assert "PatientName" not in str(summary.as_dict())


def test_ibsi_source_order_follows_normal(ibsi_volume):
    positions = [float(ds.ImagePositionPatient[2]) for ds in ibsi_volume.source_datasets]

    assert positions == sorted(positions)
    for z, frame in enumerate(ibsi_volume.source_frames):
        dataset = ibsi_volume.source_datasets[frame.dataset_index]
        world_z = ibsi_volume.image.TransformIndexToPhysicalPoint((0, 0, z))[2]
        assert float(dataset.ImagePositionPatient[2]) == pytest.approx(world_z, abs=1e-3)


def test_ibsi_with_rtstruct_ignores_rtstruct(ibsi_files):
    volume = read_dicom_series(ibsi_files + variants.real_series(IBSI_RTSTRUCT))

    assert volume.image.GetSize() == (136, 134, 47)
    assert any("1 RTSTRUCT" in warning for warning in volume.warnings)


def test_nsclc_matches_converted_mask_grid():
    volume = read_dicom_series(variants.real_series(NSCLC_CT))
    mask = sitk.ReadImage(str(variants.shared_file("nsclc_lung1_001_ct_gtv/mask_gtv1_converted.nii.gz")))

    assert_same_grid(volume.image, mask)


def test_nsclc_values_match_converted_crop():
    volume = read_dicom_series(variants.real_series(NSCLC_CT))
    crop = sitk.ReadImage(str(variants.shared_file("nsclc_lung1_001_ct_gtv/image_crop_converted.nii.gz")))

    x, y, z = volume.image.TransformPhysicalPointToIndex(crop.GetOrigin())
    width, height, depth = crop.GetSize()
    region = sitk.GetArrayFromImage(volume.image)[z:z + depth, y:y + height, x:x + width]
    np.testing.assert_array_equal(region, sitk.GetArrayFromImage(crop))


def test_totalseg_jpeg2000_without_uids():
    volume = read_dicom_series(variants.real_series(TOTALSEG_CT))
    mask = sitk.ReadImage(str(variants.shared_file("totalseg_ct_dicom/mask_organs_multilabel.nii.gz")))

    # The mask stores the same grid with the y axis flipped.
    assert volume.image.GetSize() == mask.GetSize()
    np.testing.assert_allclose(corner_points(volume.image), corner_points(mask), atol=1e-3)
    assert "JPEG 2000 Image Compression (Lossless Only)" in volume.summary.transfer_syntaxes
    assert any("SeriesInstanceUID" in warning and "Generated UIDs" in warning for warning in volume.warnings)
    assert all(str(ds.SOPInstanceUID) for ds in volume.source_datasets)
    assert len({str(ds.SOPInstanceUID) for ds in volume.source_datasets}) == 20


def test_totalseg_generated_uid_is_stable():
    files = variants.real_series(TOTALSEG_CT)

    first = list_dicom_series(files)
    again = list_dicom_series(list(reversed(files)))

    assert len(first) == 1
    assert first[0].uid_generated is True
    assert first[0].series_uid == again[0].series_uid
    assert read_dicom_series(files, first[0].series_uid).summary.series.series_uid == first[0].series_uid


def test_liver_three_slices_match_nrrd():
    volume = read_dicom_series(variants.real_series(LIVER_CT))
    mask = sitk.ReadImage(str(variants.shared_file("dcmqi_ct3slice_liver_seg/liver_seg.nrrd")))

    assert_same_grid(volume.image, mask, tolerance=1e-3)


# --------------------------------------------------------------------------
# Variants of a real series: handled with a warning


def test_shuffled_names_read_identically(ibsi_files, ibsi_array, tmp_path):
    volume = read_dicom_series(variants.shuffled_names(ibsi_files, tmp_path))

    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image), ibsi_array)
    assert volume.warnings == []


def test_missing_slice_resampled_with_warning(ibsi_files, ibsi_volume, ibsi_array, tmp_path):
    volume = read_dicom_series(variants.remove_slice(ibsi_files, tmp_path, index=20))
    array = sitk.GetArrayFromImage(volume.image)

    assert_same_grid(volume.image, ibsi_volume.image)
    assert volume.resampled is True
    assert volume.source_frames[20] is None
    assert sum(frame is None for frame in volume.source_frames) == 1
    assert any("irregular" in warning and "missing" in warning for warning in volume.warnings)
    np.testing.assert_array_equal(array[:20], ibsi_array[:20])
    np.testing.assert_array_equal(array[21:], ibsi_array[21:])
    np.testing.assert_allclose(array[20], (ibsi_array[19] + ibsi_array[21]) / 2, atol=1e-3)


def test_too_irregular_positions_rejected(ibsi_files, tmp_path):
    # 6 slices with a 36-slice gap would need 43 slices on a regular grid.
    sparse_files = variants.keep_slices(ibsi_files, tmp_path, [0, 1, 2, 39, 40, 41])

    with pytest.raises(InputError) as caught:
        read_dicom_series(sparse_files)

    assert caught.value.code == "irregular_spacing"
    assert "too irregular" in caught.value.message


def test_gantry_tilt_resampled_with_warning(ibsi_files, ibsi_volume, ibsi_array, tmp_path):
    volume = read_dicom_series(variants.tilt(ibsi_files, tmp_path, rows_per_slice=1))
    array = sitk.GetArrayFromImage(volume.image)

    assert_same_grid(volume.image, ibsi_volume.image)
    assert any("gantry tilt" in warning for warning in volume.warnings)
    assert volume.source_frames[0] is not None
    assert all(frame is None for frame in volume.source_frames[1:])
    # Slice k moved k rows along +y, so row y of the output contains row y - k of the source.
    for k in (1, 5, 46):
        np.testing.assert_allclose(array[k, k:], ibsi_array[k, :-k], atol=1e-3)
        assert array[k, :k].max() == pytest.approx(ibsi_array.min())


@pytest.mark.parametrize("name", sorted(variants.SUPPORTED_SYNTAXES))
def test_compressed_syntax_decodes(name, ibsi_files, ibsi_array, tmp_path):
    syntax = variants.SUPPORTED_SYNTAXES[name]
    volume = read_dicom_series(variants.compressed(ibsi_files, tmp_path, syntax))
    array = sitk.GetArrayFromImage(volume.image)

    assert volume.summary.transfer_syntaxes == (syntax.name,)
    if name == "jpeg_baseline":
        # 8-bit storage with slope 10 plus JPEG loss: a few tens of HU at edges.
        assert np.abs(array - ibsi_array).mean() < 10
        assert any("lossy compression" in warning for warning in volume.warnings)
    else:
        np.testing.assert_array_equal(array, ibsi_array)
        assert volume.warnings == []


def test_localizer_dropped_with_warning(ibsi_files, ibsi_array, tmp_path):
    volume = read_dicom_series(variants.with_localizer(ibsi_files, tmp_path))

    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image), ibsi_array)
    assert volume.summary.images_excluded == 1
    assert any("LOCALIZER" in warning for warning in volume.warnings)


def test_unmarked_coronal_image_dropped_with_warning(ibsi_files, ibsi_array, tmp_path):
    volume = read_dicom_series(variants.with_localizer(ibsi_files, tmp_path, mark_localizer=False))

    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image), ibsi_array)
    assert any("47 axial, 1 coronal" in warning for warning in volume.warnings)


def test_dicomdir_export_reads_with_warning(ibsi_files, ibsi_array, tmp_path):
    files = variants.dicomdir_export(ibsi_files, tmp_path)

    volume = read_dicom_series(files)

    assert any(path.name == "DICOMDIR" for path in files)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image), ibsi_array)
    assert any("DICOMDIR" in warning for warning in volume.warnings)


def test_files_without_preamble_read(ibsi_files, ibsi_array, tmp_path):
    volume = read_dicom_series(variants.without_preamble(ibsi_files, tmp_path))

    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image), ibsi_array)
    assert volume.summary.transfer_syntaxes == ("Implicit VR Little Endian",)


def test_duplicate_file_ignored_with_warning(ibsi_files, ibsi_array, tmp_path):
    copies = variants.copy_files(ibsi_files[:2], tmp_path)

    volume = read_dicom_series(ibsi_files + copies)

    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image), ibsi_array)
    assert any("repeat the SOP Instance UID" in warning for warning in volume.warnings)


def test_enhanced_multiframe_reads_like_single_frames(ibsi_files, ibsi_volume, ibsi_array, tmp_path):
    volume = read_dicom_series([variants.enhanced_multiframe(ibsi_files, tmp_path)])

    assert_same_grid(volume.image, ibsi_volume.image, tolerance=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image), ibsi_array)
    assert volume.summary.multiframe is True
    assert len(volume.source_datasets) == 1
    frame_numbers = [frame.frame_number for frame in volume.source_frames]
    assert sorted(frame_numbers) == list(range(1, 48))
    assert frame_numbers != list(range(1, 48))


def test_two_series_selected_by_uid(ibsi_files, ibsi_array):
    files = ibsi_files + variants.real_series(NSCLC_CT)
    series = list_dicom_series(files)

    volume = read_dicom_series(files, series_uid=series[0].series_uid)

    assert [info.image_count for info in series] == [47, 25]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image), ibsi_array)


# --------------------------------------------------------------------------
# Variants of a real series: rejected with InputError


def test_two_series_without_uid_rejected(ibsi_files):
    files = ibsi_files + variants.real_series(NSCLC_CT)

    with pytest.raises(InputError) as caught:
        read_dicom_series(files)

    error = caught.value
    assert error.code == "multiple_series"
    assert error.status == 422
    assert error.field == "series_uid"
    assert "2 image series" in error.message
    assert '(CT, "IBSI_1_STS_019_CT_image", 47 images)' in error.message
    assert "(CT, no description, 25 images)" in error.message
    assert "series_uid" in error.message


def test_unknown_series_uid_rejected(ibsi_files):
    with pytest.raises(InputError) as caught:
        read_dicom_series(ibsi_files, series_uid="1.2.3.4")

    assert caught.value.code == "series_not_found"
    assert caught.value.field == "series_uid"
    assert "1.2.3.4" in caught.value.message


def test_non_dicom_file_named(ibsi_files, tmp_path):
    files = ibsi_files + [variants.non_dicom_file(tmp_path, "viewer_readme.txt")]

    with pytest.raises(InputError) as caught:
        read_dicom_series(files)

    assert caught.value.code == "not_dicom"
    assert caught.value.field == "image"
    assert "viewer_readme.txt" in caught.value.message
    assert "1 of 48 files" in caught.value.message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("viewer.exe", b"MZ" + bytes(range(256)) * 8),
        ("screenshot.png", b"\x89PNG\r\n\x1a\n" + bytes(200)),
        ("starts_like_dicom.bin", b"\x08\x00" + bytes(range(256)) * 4),
    ],
)
def test_binary_non_dicom_named(name, content, ibsi_files, tmp_path):
    stray = tmp_path / name
    stray.write_bytes(content)

    with pytest.raises(InputError) as caught:
        read_dicom_series(ibsi_files + [stray])

    assert caught.value.code == "not_dicom"
    assert name in caught.value.message


def test_os_metadata_files_ignored(ibsi_files, ibsi_array, tmp_path):
    junk = variants.non_dicom_file(tmp_path, ".DS_Store")

    volume = read_dicom_series(ibsi_files + [junk])

    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image), ibsi_array)


def test_file_without_pixel_data_named(ibsi_files, tmp_path):
    files = variants.without_pixel_data(ibsi_files, tmp_path, index=3)

    with pytest.raises(InputError) as caught:
        read_dicom_series(files)

    assert caught.value.code == "missing_pixel_data"
    assert files[3].name in caught.value.message


def test_mixed_matrix_sizes_rejected(ibsi_files, tmp_path):
    with pytest.raises(InputError) as caught:
        read_dicom_series(variants.with_other_size(ibsi_files, tmp_path))

    assert caught.value.code == "mixed_geometry"
    assert "46 images of 136x134, 1 images of 136x124" in caught.value.message


def test_two_images_at_one_position_rejected(ibsi_files, tmp_path):
    with pytest.raises(InputError) as caught:
        read_dicom_series(variants.duplicated_position(ibsi_files, tmp_path))

    assert caught.value.code == "duplicate_position"
    assert "same position" in caught.value.message


def test_rtstruct_only_rejected():
    with pytest.raises(InputError) as caught:
        read_dicom_series(variants.real_series(IBSI_RTSTRUCT))

    assert caught.value.code == "no_image_series"
    assert "1 RTSTRUCT" in caught.value.message


def test_empty_file_list_rejected():
    with pytest.raises(InputError) as caught:
        read_dicom_series([])

    assert caught.value.code == "no_files"


def test_truncated_header_rejected(ibsi_files, tmp_path):
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ibsi_files[0].read_bytes()[:700])

    with pytest.raises(InputError) as caught:
        read_dicom_series(ibsi_files[1:] + [truncated])

    assert caught.value.code == "damaged_dicom"
    assert "truncated.dcm" in caught.value.message


def test_truncated_pixel_data_rejected(ibsi_files, tmp_path):
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ibsi_files[0].read_bytes()[:30000])

    with pytest.raises(InputError) as caught:
        read_dicom_series(ibsi_files[1:] + [truncated])

    assert caught.value.code == "unreadable_pixel_data"
    assert "truncated.dcm" in caught.value.message
    assert "Implicit VR Little Endian" in caught.value.message


# --------------------------------------------------------------------------
# Synthetic series with random geometry


def _rotation(quaternion: tuple[float, float, float, float]) -> np.ndarray:
    w, x, y, z = np.array(quaternion) / np.linalg.norm(quaternion)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


quaternions = st.tuples(*[st.floats(-1, 1) for _ in range(4)]).filter(lambda q: np.linalg.norm(q) > 0.2)
flips = st.tuples(*[st.sampled_from([1.0, -1.0]) for _ in range(3)])
spacings = st.tuples(*[st.floats(0.3, 5.0) for _ in range(3)])
origins = st.tuples(*[st.floats(-500.0, 500.0) for _ in range(3)])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(quaternion=quaternions, flip=flips, spacing=spacings, origin=origins)
def test_random_geometry_round_trips(quaternion, flip, spacing, origin):
    direction = _rotation(quaternion) @ np.diag(flip)
    values = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7) - 100
    folder = Path(tempfile.mkdtemp(prefix="geometry-"))
    try:
        files = variants.synthetic_series(
            folder, values, spacing=spacing, origin=origin, direction=direction
        )
        volume = read_dicom_series(files)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    # The reader stacks slices along row x column. A series written against
    # that normal comes back with its z axis reversed: same voxels, new origin.
    expected_direction = direction.copy()
    expected_origin = np.array(origin, dtype=float)
    expected_values = values
    normal = np.cross(direction[:, 0], direction[:, 1])
    if float(normal @ direction[:, 2]) < 0:
        expected_origin = expected_origin + (values.shape[0] - 1) * spacing[2] * direction[:, 2]
        expected_direction[:, 2] = -direction[:, 2]
        expected_values = values[::-1]

    image = volume.image
    assert volume.warnings == []
    np.testing.assert_allclose(image.GetSpacing(), spacing, atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), expected_origin, atol=1e-4)
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), expected_direction, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected_values)


def test_synthetic_32_cube_geometry(tmp_path):
    direction = np.diag([1.0, -1.0, -1.0])
    values = np.random.default_rng(0).integers(-1000, 1000, size=(12, 32, 32), dtype=np.int16)
    files = variants.synthetic_series(
        tmp_path, values, spacing=(0.7, 0.8, 2.5), origin=(10.0, 20.0, 30.0), direction=direction
    )

    volume = read_dicom_series(files)

    # Row x column points along -z, the same way as the stacking, so nothing flips.
    np.testing.assert_allclose(volume.image.GetOrigin(), (10.0, 20.0, 30.0), atol=1e-6)
    np.testing.assert_allclose(volume.image.GetSpacing(), (0.7, 0.8, 2.5), atol=1e-6)
    np.testing.assert_allclose(volume.image.GetDirection(), direction.flatten(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image), values)
