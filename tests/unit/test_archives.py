"""Safe extraction of uploaded zip archives."""

from __future__ import annotations

import io
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from lesions.archives import ArchiveLimits, extract_upload, is_os_metadata_file
from lesions.dicom_series import read_dicom_series
from lesions.errors import InputError
from tests import dicom_variants as variants


def make_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def patch_central_directory(path: Path, offset: int, fmt: str, value: int) -> None:
    """Overwrite one field of the first central directory entry (offset from its signature)."""
    data = bytearray(path.read_bytes())
    entry = data.index(b"PK\x01\x02")
    struct.pack_into(fmt, data, entry + offset, value)
    path.write_bytes(bytes(data))


def extract_error(paths: list[Path], dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> InputError:
    with pytest.raises(InputError) as caught:
        extract_upload(paths, dest, limits)
    return caught.value


# --------------------------------------------------------------------------
# Accepted uploads


def test_zip_extracted_with_folders(tmp_path):
    upload = make_zip(tmp_path / "series.zip", {"study/a.dcm": b"A" * 10, "study/sub/b.dcm": b"B" * 20})

    files = extract_upload([upload], tmp_path / "out")

    assert [path.name for path in files] == ["a.dcm", "b.dcm"]
    assert files[0].read_bytes() == b"A" * 10
    assert files[1].read_bytes() == b"B" * 20
    assert all((tmp_path / "out") in path.parents for path in files)


def test_plain_files_pass_through_in_order(tmp_path):
    first = tmp_path / "one.dcm"
    first.write_bytes(b"1")
    last = tmp_path / "two.dcm"
    last.write_bytes(b"2")
    upload = make_zip(tmp_path / "middle.zip", {"m.dcm": b"m"})

    files = extract_upload([first, upload, last], tmp_path / "out")

    assert files[0] == first
    assert files[1].name == "m.dcm"
    assert files[2] == last


def test_os_metadata_members_skipped(tmp_path):
    upload = make_zip(
        tmp_path / "mac.zip",
        {"s/a.dcm": b"a", "__MACOSX/s/._a.dcm": b"x", "s/._a.dcm": b"x", "s/.DS_Store": b"x", "s/Thumbs.db": b"x"},
    )

    files = extract_upload([upload], tmp_path / "out")

    assert [path.name for path in files] == ["a.dcm"]


def test_zip_detected_without_suffix(tmp_path):
    upload = make_zip(tmp_path / "upload.bin", {"a.dcm": b"a"})

    files = extract_upload([upload], tmp_path / "out")

    assert [path.name for path in files] == ["a.dcm"]


def test_two_zips_with_same_member_names_kept_apart(tmp_path):
    first = make_zip(tmp_path / "first.zip", {"a.dcm": b"1"})
    second = make_zip(tmp_path / "second.zip", {"a.dcm": b"2"})

    files = extract_upload([first, second], tmp_path / "out")

    assert [path.read_bytes() for path in files] == [b"1", b"2"]


def test_zipped_real_series_reads(tmp_path):
    source = variants.real_series("ibsi_sts_019/dicom_ct")
    upload = tmp_path / "export.zip"
    with zipfile.ZipFile(upload, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in source:
            archive.write(path, f"EXPORT/{path.parent.name}/{path.name}")

    volume = read_dicom_series(extract_upload([upload], tmp_path / "out"))

    assert volume.image.GetSize() == (136, 134, 47)
    assert any("RTSTRUCT" in warning for warning in volume.warnings)


def test_os_metadata_names():
    assert is_os_metadata_file("__MACOSX/a/._b.dcm")
    assert is_os_metadata_file("._b.dcm")
    assert is_os_metadata_file("x/.DS_Store")
    assert not is_os_metadata_file("x/IM0001")


# --------------------------------------------------------------------------
# Unsafe archives


@pytest.mark.parametrize(
    "name",
    ["../evil.dcm", "a/../../evil.dcm", "/tmp/evil.dcm", "C:/evil.dcm", "..\\evil.dcm", "a\\..\\..\\evil.dcm"],
)
def test_escaping_path_rejected(name, tmp_path):
    upload = make_zip(tmp_path / "slip.zip", {name: b"x"})

    error = extract_error([upload], tmp_path / "deep" / "out")

    assert error.code == "unsafe_archive"
    assert error.field == "image"
    assert "slip.zip" in error.message
    assert not (tmp_path / "evil.dcm").exists()
    assert not (tmp_path / "deep" / "evil.dcm").exists()


def test_symlink_member_rejected(tmp_path):
    upload = tmp_path / "link.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        info = zipfile.ZipInfo("series/link.dcm")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")

    error = extract_error([upload], tmp_path / "out")

    assert error.code == "unsafe_archive"
    assert "symbolic link" in error.message


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("inner.zip", b"anything"),
        ("inner.tar.gz", b"anything"),
        ("renamed.dcm", b"PK\x03\x04" + b"\x00" * 40),
        ("renamed2.dcm", b"\x1f\x8b\x08" + b"\x00" * 40),
    ],
)
def test_nested_archive_rejected(name, data, tmp_path):
    upload = make_zip(tmp_path / "outer.zip", {"a.dcm": b"a", name: data})

    error = extract_error([upload], tmp_path / "out")

    assert error.code == "unsafe_archive"
    assert "nested archive" in error.message
    assert name in error.message


def test_high_ratio_member_rejected(tmp_path):
    upload = make_zip(tmp_path / "bomb.zip", {"zeros.dcm": bytes(8 * 1024 * 1024)})

    error = extract_error([upload], tmp_path / "out")

    assert error.code == "unsafe_archive"
    assert "times" in error.message
    assert "zip bomb" in error.message


def test_small_compressible_member_allowed(tmp_path):
    upload = make_zip(tmp_path / "mask.zip", {"empty_mask.dcm": bytes(512 * 1024)})

    files = extract_upload([upload], tmp_path / "out")

    assert files[0].stat().st_size == 512 * 1024


def test_total_size_over_limit_rejected(tmp_path):
    upload = make_zip(tmp_path / "big.zip", {"a.dcm": bytes(3000)}, compression=zipfile.ZIP_STORED)

    error = extract_error([upload], tmp_path / "out", ArchiveLimits(max_total_bytes=2000))

    assert error.code == "unsafe_archive"
    assert "3000 bytes" in error.message
    assert "limit of 2000 bytes" in error.message


def test_total_size_counts_across_zips(tmp_path):
    first = make_zip(tmp_path / "first.zip", {"a.dcm": bytes(1500)}, compression=zipfile.ZIP_STORED)
    second = make_zip(tmp_path / "second.zip", {"b.dcm": bytes(1500)}, compression=zipfile.ZIP_STORED)

    error = extract_error([first, second], tmp_path / "out", ArchiveLimits(max_total_bytes=2000))

    assert error.code == "unsafe_archive"
    assert "second.zip" in error.message


def test_member_count_over_limit_rejected(tmp_path):
    upload = make_zip(tmp_path / "many.zip", {f"{i}.dcm": b"x" for i in range(5)})

    error = extract_error([upload], tmp_path / "out", ArchiveLimits(max_members=3))

    assert error.code == "unsafe_archive"
    assert "5 archive members" in error.message


def test_encrypted_member_rejected(tmp_path):
    upload = make_zip(tmp_path / "secret.zip", {"a.dcm": b"a"})
    patch_central_directory(upload, 8, "<H", 0x1)

    error = extract_error([upload], tmp_path / "out")

    assert error.code == "unsafe_archive"
    assert "encrypted" in error.message


def test_understated_size_rejected(tmp_path):
    upload = make_zip(tmp_path / "liar.zip", {"a.dcm": b"abc" * 2000})
    patch_central_directory(upload, 24, "<I", 100)

    error = extract_error([upload], tmp_path / "out")

    assert error.code == "invalid_archive"
    assert "a.dcm" in error.message
    assert not (tmp_path / "out" / "000_liar.zip" / "a.dcm").exists()


# --------------------------------------------------------------------------
# Damaged or unsupported uploads


def test_damaged_zip_rejected(tmp_path):
    upload = tmp_path / "broken.zip"
    upload.write_bytes(b"PK\x03\x04 this is not really a zip archive")

    error = extract_error([upload], tmp_path / "out")

    assert error.code == "invalid_archive"
    assert "broken.zip" in error.message


def test_empty_zip_rejected(tmp_path):
    upload = make_zip(tmp_path / "empty.zip", {})

    error = extract_error([upload], tmp_path / "out")

    assert error.code == "invalid_archive"
    assert "no files" in error.message


def test_duplicate_member_names_rejected(tmp_path):
    upload = tmp_path / "twice.zip"
    with zipfile.ZipFile(upload, "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("a.dcm", b"1")
        archive.writestr("a.dcm", b"2")

    error = extract_error([upload], tmp_path / "out")

    assert error.code == "invalid_archive"
    assert "more than once" in error.message


def test_tar_gz_upload_rejected(tmp_path):
    upload = tmp_path / "series.tar.gz"
    with tarfile.open(upload, "w:gz") as archive:
        info = tarfile.TarInfo("a.dcm")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"a"))

    error = extract_error([upload], tmp_path / "out")

    assert error.code == "unsupported_archive"
    assert "gzip" in error.message
    assert ".zip" in error.message
