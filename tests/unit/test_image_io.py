import numpy as np
import pytest
import SimpleITK as sitk

from lesions.errors import InputError
from lesions.image_io import read_volume, read_volume_header, volume_suffix, write_label_map
from tests.conftest import write_image


def test_volume_keeps_geometry(small_ct):
    image = read_volume(small_ct)
    header = read_volume_header(small_ct)

    assert image.GetPixelID() == sitk.sitkFloat32
    assert header.size == (40, 30, 20)
    assert header.spacing == pytest.approx((0.8, 0.8, 2.0))
    assert header.origin == pytest.approx((-10.0, 5.0, 30.0))


def test_label_map_written_in_exact_geometry(tmp_path):
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    source = write_image(tmp_path / "ct.nii.gz", np.zeros((6, 7, 8), np.float32), spacing=(0.7, 0.9, 3.0), origin=(5.5, -3.25, 12.0), direction=direction)
    image = read_volume(source)
    labels = np.zeros((6, 7, 8), np.uint16)
    labels[2, 3, 4] = 7

    write_label_map(labels, image, tmp_path / "mask.nii.gz")
    mask = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))

    assert mask.GetSize() == image.GetSize()
    assert mask.GetSpacing() == pytest.approx(image.GetSpacing(), abs=1e-6)
    assert mask.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-6)
    assert mask.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-6)
    assert sitk.GetArrayFromImage(mask)[2, 3, 4] == 7


def test_singleton_fourth_axis_is_dropped(tmp_path):
    path = write_image(tmp_path / "four_d.nii.gz", np.zeros((1, 5, 6, 7), np.float32), spacing=(1, 1, 1, 1), origin=(0, 0, 0, 0))

    assert read_volume(path).GetSize() == (7, 6, 5)
    assert read_volume_header(path).size == (7, 6, 5)


def test_multi_volume_4d_rejected(tmp_path):
    path = write_image(tmp_path / "four_d.nii.gz", np.zeros((3, 5, 6, 7), np.float32), spacing=(1, 1, 1, 1), origin=(0, 0, 0, 0))

    with pytest.raises(InputError, match="4D image with 3 volumes"):
        read_volume_header(path)
    with pytest.raises(InputError, match="4D image with 3 volumes"):
        read_volume(path)


def test_2d_image_rejected(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.float32)), str(path))

    with pytest.raises(InputError, match="2D image") as raised:
        read_volume_header(path)
    assert raised.value.field == "image"


def test_truncated_gzip_rejected(small_ct, tmp_path):
    truncated = tmp_path / "truncated.nii.gz"
    data = small_ct.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    with pytest.raises(InputError, match="truncated") as raised:
        read_volume_header(truncated)
    assert raised.value.code == "unreadable_image"


def test_text_file_rejected(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image")

    with pytest.raises(InputError, match="could not be read") as raised:
        read_volume_header(path)
    assert raised.value.code == "unreadable_image"


@pytest.mark.parametrize("name, suffix", [("ct.nii.gz", ".nii.gz"), ("CT.NII", ".nii"), ("a.nrrd", ".nrrd"), ("b.mha", ".mha"), ("c.png", None), ("d.gz", None)])
def test_volume_suffix(name, suffix):
    assert volume_suffix(name) == suffix
