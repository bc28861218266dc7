"""Safe extraction of uploaded zip archives.

Hospitals often upload a DICOM series as one zip file. ``extract_upload``
unpacks every ``.zip`` of an upload into a destination folder and passes other
files through unchanged. It rejects archives that could write outside that
folder or exhaust the disk: members with absolute paths or ``..`` components,
symbolic links, nested archives, encrypted members, and zip bombs found by
member count, total uncompressed size or compression ratio.

Operating-system metadata that zip tools add (``__MACOSX/``, ``._*``
AppleDouble files, ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``) is skipped,
because it is never part of the series and would otherwise be reported as
non-DICOM content.
"""

from __future__ import annotations

import logging
import lzma
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lesions.errors import InputError

logger = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2

_CHUNK_BYTES = 1 * MIB

# Leading bytes of archive and compression formats that are rejected inside a
# zip (nested archives) and, outside one, reported as unsupported uploads.
_ARCHIVE_SIGNATURES: dict[bytes, str] = {
    b"PK\x03\x04": "zip",
    b"PK\x05\x06": "zip",
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"7z\xbc\xaf\x27\x1c": "7z",
    b"Rar!\x1a\x07": "rar",
    b"(\xb5/\xfd": "zstd",
}
_ARCHIVE_SUFFIXES = (
    ".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".tbz2", ".txz",
)
# A tar file carries "ustar" at offset 257 of its first header block.
_TAR_MAGIC_OFFSET = 257
_TAR_MAGIC = b"ustar"

_OS_METADATA_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits that an uploaded archive must stay within.

    The limits apply to the whole upload, so two zips of 3 GiB each exceed a
    4 GiB ``max_total_bytes``. ``max_ratio`` applies to each member larger than
    ``ratio_min_bytes`` and to the whole archive once it unpacks to more than
    that, because small files (an empty mask, a short header) can compress
    far better than 200:1 without being a threat.
    """

    max_total_bytes: int = 4 * GIB
    max_ratio: float = 200.0
    max_members: int = 20_000
    ratio_min_bytes: int = 1 * MIB


def is_os_metadata_file(name: str) -> bool:
    """Return True for file-system metadata that zip tools and file managers add."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if any(part == "__MACOSX" for part in parts):
        return True
    if not parts:
        return False
    base = parts[-1]
    return base.startswith("._") or base.lower() in _OS_METADATA_NAMES


def extract_upload(
    paths: list[Path],
    dest: Path,
    limits: ArchiveLimits = ArchiveLimits(),
    *,
    field: str = "image",
) -> list[Path]:
    """Extract each zip in ``paths`` under ``dest`` and return all resulting files.

    Plain files are returned as given, in upload order; the files of each zip
    follow in archive order at the position of that zip. Each zip is unpacked
    into its own subfolder of ``dest``, so members of different zips never
    collide. Raises ``InputError`` (on ``field``) with code ``unsafe_archive``
    for an archive that breaks a safety rule or a limit, ``invalid_archive``
    for a damaged or empty zip, and ``unsupported_archive`` for tar, gzip, 7z,
    rar and similar uploads.
    """
    dest.mkdir(parents=True, exist_ok=True)
    budget = _UploadBudget(limits)
    result: list[Path] = []

    for index, path in enumerate(paths):
        if _is_zip(path):
            target = dest / f"{index:03d}_{_safe_folder_name(path.name)}"
            result.extend(_extract_zip(path, target, budget, field))
            continue

        archive_format = _archive_format(path)
        if archive_format is not None:
            raise InputError(
                field,
                f"'{path.name}' is a {archive_format} archive, which is not supported. "
                "Upload the DICOM files as one .zip archive or as individual files.",
                code="unsupported_archive",
            )
        result.append(path)

    return result


class _UploadBudget:
    """Running totals of one upload, checked against its ArchiveLimits."""

    def __init__(self, limits: ArchiveLimits):
        self.limits = limits
        self.members = 0
        self.bytes_written = 0


def _is_zip(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    return _leading_bytes(path, 4) == b"PK\x03\x04" and zipfile.is_zipfile(path)


def _archive_format(path: Path) -> str | None:
    head = _leading_bytes(path, _TAR_MAGIC_OFFSET + len(_TAR_MAGIC))
    found = _signature_format(head)
    if found is not None:
        return found
    if path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return path.suffix.lstrip(".").lower() or "compressed"
    return None


def _signature_format(head: bytes) -> str | None:
    for signature, name in _ARCHIVE_SIGNATURES.items():
        if head.startswith(signature):
            return name
    if head[_TAR_MAGIC_OFFSET:_TAR_MAGIC_OFFSET + len(_TAR_MAGIC)] == _TAR_MAGIC:
        return "tar"
    return None


def _leading_bytes(path: Path, count: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(count)


def _safe_folder_name(name: str) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return stem.strip(".") or "archive"


def _extract_zip(path: Path, target: Path, budget: _UploadBudget, field: str) -> list[Path]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(
            field,
            f"'{path.name}' is not a valid zip archive ({exc}). Create the archive again and re-upload it.",
            code="invalid_archive",
        ) from exc

    with archive:
        members = _checked_members(archive, path, budget, field)
        target.mkdir(parents=True, exist_ok=True)
        extracted: list[Path] = []
        for info, relative in members:
            if info.is_dir():
                (target / relative).mkdir(parents=True, exist_ok=True)
                continue
            extracted.append(_extract_member(archive, info, target / relative, path, budget, field))

    if not extracted:
        raise InputError(
            field,
            f"the zip archive '{path.name}' contains no files. Add the DICOM files of the series to the archive.",
            code="invalid_archive",
        )
    logger.info("extracted %d files from one zip archive", len(extracted))
    return extracted


def _checked_members(
    archive: zipfile.ZipFile, path: Path, budget: _UploadBudget, field: str
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Check every member against the safety rules before anything is written."""
    limits = budget.limits
    infos = archive.infolist()

    budget.members += len(infos)
    if budget.members > limits.max_members:
        raise _unsafe(
            field,
            f"the upload contains {budget.members} archive members, more than the limit of "
            f"{limits.max_members}. Split the upload or upload one series at a time.",
        )

    declared_total = budget.bytes_written + sum(info.file_size for info in infos)
    if declared_total > limits.max_total_bytes:
        raise _unsafe(
            field,
            f"the upload unpacks to {_format_bytes(declared_total)} with '{path.name}', more than the limit "
            f"of {_format_bytes(limits.max_total_bytes)} per upload. Upload one series at a time.",
        )

    archive_total = sum(info.file_size for info in infos)
    archive_bytes = max(path.stat().st_size, 1)
    if archive_total > limits.ratio_min_bytes and archive_total / archive_bytes > limits.max_ratio:
        raise _unsafe(
            field,
            f"'{path.name}' unpacks to {archive_total / archive_bytes:.0f} times its own size, more than "
            f"the limit of {limits.max_ratio:.0f}. Such archives are rejected as possible zip bombs.",
        )

    seen: set[PurePosixPath] = set()
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    for info in infos:
        if is_os_metadata_file(info.filename):
            continue
        relative = _checked_member_path(info, path, field)
        _check_member_type(info, path, field)
        _check_member_ratio(info, path, limits, field)

        if relative in seen:
            raise InputError(
                field,
                f"'{path.name}' contains the member '{info.filename}' more than once. "
                "Create the archive again without duplicate names.",
                code="invalid_archive",
            )
        seen.add(relative)
        members.append((info, relative))
    return members


def _checked_member_path(info: zipfile.ZipInfo, path: Path, field: str) -> PurePosixPath:
    # Zip tools on Windows sometimes write backslashes, so treat both as separators.
    name = info.filename.replace("\\", "/")
    drive_letter = len(name) >= 2 and name[1] == ":" and name[0].isalpha()
    if name.startswith("/") or drive_letter:
        raise _unsafe(
            field,
            f"'{path.name}' contains the absolute path '{info.filename}'. "
            "Create the archive with paths relative to its root folder.",
        )

    parts = [part for part in PurePosixPath(name).parts if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(
            field,
            f"'{path.name}' contains the member '{info.filename}', whose path leaves the archive "
            "folder through '..'. Create the archive with paths inside its root folder.",
        )
    if not parts:
        raise _unsafe(field, f"'{path.name}' contains a member with the empty name '{info.filename}'.")
    return PurePosixPath(*parts)


def _check_member_type(info: zipfile.ZipInfo, path: Path, field: str) -> None:
    # Unix zip tools store st_mode in the upper 16 bits of external_attr.
    # Many tools (Python's zipfile included) store only permission bits there,
    # so a member without file-type bits counts as a regular file.
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        kind = "a symbolic link" if file_type == stat.S_IFLNK else "a special file"
        raise _unsafe(
            field,
            f"'{path.name}' contains '{info.filename}', which is {kind}. "
            "Archives may contain only regular files and folders.",
        )

    if info.flag_bits & 0x1:
        raise _unsafe(
            field,
            f"'{path.name}' contains the encrypted member '{info.filename}'. "
            "Upload an archive without a password.",
        )

    if not info.is_dir() and info.filename.lower().endswith(_ARCHIVE_SUFFIXES):
        raise _nested(field, path, info.filename)


def _check_member_ratio(info: zipfile.ZipInfo, path: Path, limits: ArchiveLimits, field: str) -> None:
    if info.is_dir() or info.file_size <= limits.ratio_min_bytes:
        return
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > limits.max_ratio:
        raise _unsafe(
            field,
            f"the member '{info.filename}' of '{path.name}' unpacks to {ratio:.0f} times its "
            f"compressed size, more than the limit of {limits.max_ratio:.0f}. "
            "Such archives are rejected as possible zip bombs.",
        )


def _extract_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    destination: Path,
    path: Path,
    budget: _UploadBudget,
    field: str,
) -> Path:
    """Stream one member to disk, stopping as soon as it exceeds its declared size or the budget."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _open_member(archive, info, path, field) as source, open(destination, "wb") as sink:
            _copy_member(source, sink, info, path, budget, field)
    except InputError:
        destination.unlink(missing_ok=True)
        raise
    return destination


def _open_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, field: str):
    try:
        return archive.open(info)
    except _UNPACK_ERRORS as exc:
        raise _unreadable_member(field, path, info, exc) from exc


def _copy_member(source, sink, info: zipfile.ZipInfo, path: Path, budget: _UploadBudget, field: str) -> None:
    limits = budget.limits
    written = 0
    while True:
        try:
            chunk = source.read(_CHUNK_BYTES)
        except _UNPACK_ERRORS as exc:
            raise _unreadable_member(field, path, info, exc) from exc
        if not chunk:
            return

        if written == 0 and _signature_format(chunk[: _TAR_MAGIC_OFFSET + len(_TAR_MAGIC)]) is not None:
            raise _nested(field, path, info.filename)

        written += len(chunk)
        budget.bytes_written += len(chunk)
        if written > info.file_size:
            raise _unsafe(
                field,
                f"the member '{info.filename}' of '{path.name}' unpacks to more bytes than its "
                f"declared size of {info.file_size}. The archive is damaged or manipulated.",
            )
        if budget.bytes_written > limits.max_total_bytes:
            raise _unsafe(
                field,
                f"the upload unpacks to more than the limit of {_format_bytes(limits.max_total_bytes)}. "
                "Upload one series at a time.",
            )
        sink.write(chunk)


# Errors that zipfile and its decompressors raise for damaged or unsupported
# member data. OSError covers bz2's "Invalid data stream" and truncated files.
_UNPACK_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, EOFError, OSError)


def _unreadable_member(field: str, path: Path, info: zipfile.ZipInfo, exc: BaseException) -> InputError:
    return InputError(
        field,
        f"the member '{info.filename}' of '{path.name}' cannot be unpacked ({exc}). "
        "Create the archive again with the standard deflate method and re-upload it.",
        code="invalid_archive",
    )


def _format_bytes(count: int) -> str:
    if count >= GIB:
        return f"{count / GIB:.2f} GiB"
    if count >= MIB:
        return f"{count / MIB:.1f} MiB"
    return f"{count} bytes"


def _unsafe(field: str, message: str) -> InputError:
    return InputError(field, message, code="unsafe_archive")


def _nested(field: str, path: Path, member: str) -> InputError:
    return _unsafe(
        field,
        f"'{path.name}' contains the nested archive '{member}'. "
        "Unpack it and put its files into the uploaded zip directly.",
    )


__all__ = ["ArchiveLimits", "extract_upload", "is_os_metadata_file"]
