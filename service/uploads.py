"""Read the multipart form of a job submission and move its files into the store.

Starlette spools each uploaded file to a temporary file past 1 MB, so the
gateway's memory stays flat whatever the image size. The copy into the store
runs in a thread, so the event loop keeps serving other requests.
"""

from __future__ import annotations

import difflib
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import Request
from pydicom.misc import is_dicom
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from lesions.errors import InputError
from lesions.image_inputs import CheckedImage, check_dicom_upload, check_volume_file, missing_image_error
from lesions.image_io import volume_suffix

MAX_PROMPT_BYTES = 5 * 1024 * 1024
MAX_FORM_FILES = 4096
MAX_FORM_FIELDS = 64


async def read_form(request: Request) -> FormData:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InputError("body", f"must be multipart/form-data, got {content_type or 'no content type'}", code="unsupported_media_type", status=415)
    try:
        return await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
    except Exception as error:
        if type(error).__name__ == "_BodyTooLarge":
            raise
        raise InputError("body", f"is not a valid multipart form ({error})") from error


def check_known_fields(form: FormData, known: Iterable[str]) -> None:
    """Reject a form field that the endpoint does not read, so that a misspelled
    field is named instead of silently ignored."""
    known = sorted(known)
    for field in form.keys():
        if field in known:
            continue
        close = difflib.get_close_matches(field, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InputError(field, f"is not a field of this request.{hint} Known fields: {', '.join(known)}", code="unknown_field")


def single_file(form: FormData, field: str, required: bool = True) -> UploadFile | None:
    values = form.getlist(field)
    files = [value for value in values if isinstance(value, UploadFile)]
    if not values:
        if required:
            raise InputError(field, "is missing: attach the file as a multipart file field", code="missing_field")
        return None
    if len(values) != 1 or len(files) != 1:
        raise InputError(field, f"must be exactly one file, got {len(files)} file(s) and {len(values) - len(files)} text value(s)")
    return files[0]


def optional_text(form: FormData, field: str) -> str | None:
    value = form.get(field)
    if value is None:
        return None
    if isinstance(value, UploadFile):
        raise InputError(field, "must be a text field, not a file")
    return value.strip() or None


async def read_json_part(form: FormData, field: str, required: bool = True) -> bytes | None:
    """Return a JSON document sent either as a text field or as a file."""
    value = form.get(field)
    if value is None:
        if required:
            raise InputError(field, "is missing: send the prompt JSON as a form field or a file", code="missing_field")
        return None
    if isinstance(value, UploadFile):
        data = await value.read(MAX_PROMPT_BYTES + 1)
    else:
        data = value.encode()
    if len(data) > MAX_PROMPT_BYTES:
        raise InputError(field, f"is larger than {MAX_PROMPT_BYTES} bytes", status=413, code="request_too_large")
    return data


async def save_volume_upload(upload: UploadFile, folder: Path, stem: str, field: str) -> Path:
    """Copy an uploaded volume into ``folder`` as ``stem`` plus its format suffix."""
    suffix = volume_suffix(upload.filename or "")
    if suffix is None:
        raise InputError(field, f"file name {upload.filename!r} has no supported suffix; send .nii, .nii.gz, .nrrd or .mha", code="unsupported_format")
    if suffix in (".mhd", ".nhdr"):
        raise InputError(field, f"{suffix} headers point to a separate data file, which cannot be uploaded with them; send .mha or .nrrd instead", code="unsupported_format")

    destination = folder / f"{stem}{suffix}"
    await run_in_threadpool(_copy_upload, upload, destination)
    return destination


async def save_image_upload(form: FormData, field: str, folder: Path, stem: str, series_uid: str | None) -> CheckedImage:
    """Store and check the image of ``field``: one volume file, or a DICOM series as zip(s) or files."""
    values = form.getlist(field)
    files = [value for value in values if isinstance(value, UploadFile)]
    if not values:
        raise missing_image_error(field)
    if len(files) != len(values):
        raise InputError(field, "must be sent as file parts, not text values")
    return await save_image_files(files, field, folder, stem, series_uid)


async def save_image_files(files: list[UploadFile], field: str, folder: Path, stem: str, series_uid: str | None) -> CheckedImage:
    """Store and check one image given as a volume file, or as DICOM zip(s) or files."""
    if len(files) == 1 and volume_suffix(files[0].filename or "") is not None:
        path = await save_volume_upload(files[0], folder, stem, field)
        with naming_file(files[0]):
            return await run_in_threadpool(check_volume_file, path, field)

    raw = folder / f"{stem}_upload"
    raw.mkdir()
    paths = []
    for position, upload in enumerate(files):
        # Client file names are never used as paths; only a .zip suffix is kept as a hint.
        suffix = ".zip" if (upload.filename or "").lower().endswith(".zip") else ".dcm"
        path = raw / f"{position:05d}{suffix}"
        await run_in_threadpool(_copy_upload, upload, path)
        paths.append(path)

    if len(files) == 1:
        _check_single_file_kind(files[0].filename or "", paths[0], field)
    return await run_in_threadpool(check_dicom_upload, paths, folder, stem, series_uid, field)


@contextmanager
def naming_file(upload: UploadFile) -> Iterator[None]:
    """Prefix the message of an InputError raised inside with the upload's file name,
    because a request may carry several files in one field."""
    try:
        yield
    except InputError as error:
        name = upload.filename or "without a name"
        raise InputError(error.field, f"file {name!r} {error.message}", code=error.code, status=error.status) from error


def _check_single_file_kind(filename: str, path: Path, field: str) -> None:
    """Name the client's file when a lone upload is neither a volume, a zip nor DICOM."""
    if path.suffix == ".zip" or is_dicom(path):
        return
    lowered = filename.lower()
    if lowered.endswith(".dcm") or "." not in lowered.rsplit("/", 1)[-1]:
        return  # DICOM without the 128-byte preamble; the DICOM reader decides
    raise InputError(field, f"file {filename!r} is neither a volume (.nii, .nii.gz, .nrrd, .mha) nor a DICOM file or a .zip of a DICOM series", code="unsupported_format")


def parse_bool(value: str | None, field: str) -> bool | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InputError(field, f"must be true or false, got {value!r}")


def _copy_upload(upload: UploadFile, destination: Path) -> None:
    upload.file.seek(0)
    with open(destination, "wb") as handle:
        shutil.copyfileobj(upload.file, handle, length=1 << 20)
