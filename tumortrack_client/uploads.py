"""Turn local inputs into multipart parts: volume files, DICOM folders and zips, prompt JSON.

A DICOM folder is packed into a temporary zip (stored, not compressed) and
sent as one part, because follow-ups must be one part each and because one
open file per slice could exceed the process's file limit on long series. The
temporary zip takes as much disk space as the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tumortrack_client.errors import InputFileError

PromptsInput = Path | dict[str, Any] | str
"""Prompt JSON as a file path, a parsed document, or JSON text."""


@dataclass(frozen=True)
class LocalFile:
    """A file to send, and the file name the part carries."""

    path: Path
    filename: str

    def part(self, field: str, handles: contextlib.ExitStack) -> tuple[str, tuple[str, BinaryIO, str]]:
        handle = handles.enter_context(open(self.path, "rb"))
        return field, (self.filename, handle, "application/octet-stream")


@contextlib.contextmanager
def image_file(path: Path, role: str) -> Iterator[LocalFile]:
    """Yield the file to upload for an image: the file itself, or a temporary zip of a DICOM folder."""
    path = Path(path).expanduser()
    if path.is_file():
        yield LocalFile(path, path.name)
        return
    if not path.is_dir():
        raise InputFileError(f"{role} {str(path)!r} does not exist; give a .nii, .nii.gz, .nrrd or .mha file, a DICOM folder, or a .zip of one")

    members = _folder_members(path)
    if not members:
        raise InputFileError(f"{role} folder {str(path)!r} contains no files; give a folder with the series' DICOM files")

    handle, zip_name = tempfile.mkstemp(prefix="tumortrack-", suffix=".zip")
    os.close(handle)
    try:
        with zipfile.ZipFile(zip_name, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for member in members:
                archive.write(member, member.relative_to(path).as_posix())
        yield LocalFile(Path(zip_name), f"{path.name or 'series'}.zip")
    finally:
        Path(zip_name).unlink(missing_ok=True)


def volume_file(path: Path, role: str) -> LocalFile:
    """Return a mask or other single volume to upload, checking that it is a file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputFileError(f"{role} {str(path)!r} is not a file; give a .nii, .nii.gz, .nrrd or .mha volume")
    return LocalFile(path, path.name)


def prompts_text(prompts: PromptsInput, role: str) -> str:
    """Return prompt JSON as text: a file's content, a document serialized, or the text itself."""
    if isinstance(prompts, Path):
        path = prompts.expanduser()
        if not path.is_file():
            raise InputFileError(f"{role} file {str(path)!r} does not exist")
        return path.read_text(encoding="utf-8")
    return prompts if isinstance(prompts, str) else json.dumps(prompts)


def _folder_members(folder: Path) -> list[Path]:
    """Return the regular files under ``folder`` in a stable order, skipping hidden files and DICOMDIR indexes."""
    members = []
    for root, directories, files in os.walk(folder):
        directories[:] = sorted(d for d in directories if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            members.append(Path(root) / name)
    return members
