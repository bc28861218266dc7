"""Retrieve a referenced series with WADO-RS and store a SEG with STOW-RS (dicomweb-client).

A retrieved series is written into the job's inputs folder as DICOM files,
with a file list like the gateway writes for an upload. The worker then reads
it with the same DICOM series reader as uploads, so every check and warning
applies. A retry of the job finds the list and does not retrieve again.

Errors become ``DicomwebError``. Its code and message go into the job record
and the worker log as they are, so the message names the configured server
and the HTTP status, never a URL or a UID. dicomweb-client itself logs UIDs
at INFO and ERROR level, so its logger is held above CRITICAL.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.errors import InvalidDicomError

from lesions.dicomweb_reference import DicomwebReference
from lesions.dicomweb_servers import DicomwebServer

logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL + 1)
logger = logging.getLogger("tumortrack.job")

# HTTP statuses after which the same request may succeed later.
TRANSIENT_STATUSES = {408, 425, 429, 500, 502, 503, 504}
# Ask for every instance in the transfer syntax it is stored in; the series
# reader decodes the compressed syntaxes itself.
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)


class DicomwebError(Exception):
    """A DICOMweb request failed.

    A ``transient`` error (server unreachable, timeout, 5xx, 429) is retried
    with backoff by the task; any other fails the job with ``code``.
    """

    def __init__(self, code: str, message: str, *, transient: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class RetrievedSeries:
    """Result of a retrieval: image options for the series reader, instance count and bytes written."""

    options: dict
    instances: int
    bytes: int
    reused: bool


@dataclass(frozen=True)
class StoredInstance:
    """The UIDs under which a DICOMweb server accepted an instance."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


def make_client(server: DicomwebServer) -> DICOMwebClient:
    session = requests.Session()
    if server.username is not None:
        session.auth = (server.username, server.password.get_secret_value())
    if server.token is not None:
        session.headers["Authorization"] = f"Bearer {server.token.get_secret_value()}"
    client = DICOMwebClient(url=server.url, session=session, timeout=server.timeout_s)
    # The task retries transient failures with backoff and frees the worker
    # in between; retries inside the client would hold it instead.
    client.set_http_retry_params(retry=False)
    return client


def retrieve_series(reference: DicomwebReference, server: DicomwebServer, inputs: Path, stem: str, max_bytes: int) -> RetrievedSeries:
    """Write every instance of the referenced series under ``inputs/<stem>_dicom``.

    Raises DicomwebError when the series is not found, the server rejects the
    credentials or cannot be reached, or the series is larger than
    ``max_bytes`` (the upload limit).
    """
    listing = inputs / f"{stem}_dicom_files.json"
    options = {"kind": "dicom", "file_list": listing.name, "series_uid": reference.series_uid}
    if listing.exists():
        names = json.loads(listing.read_text())
        return RetrievedSeries(options=options, instances=len(names), bytes=sum((inputs / name).stat().st_size for name in names), reused=True)

    folder = inputs / f"{stem}_dicom"
    # Files of an attempt that died midway are incomplete; start over.
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    client = make_client(server)

    paths, total = [], 0
    with _translated_errors(reference.server, "retrieving the series"):
        for position, dataset in enumerate(client.iter_series(reference.study_uid, reference.series_uid, media_types=ANY_TRANSFER_SYNTAX)):
            path = folder / f"{position:05d}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            paths.append(path)
            total += path.stat().st_size
            if total > max_bytes:
                raise DicomwebError("dicomweb_series_too_large", f"The series on DICOMweb server '{reference.server}' is larger than the limit of {max_bytes} bytes (TUMORTRACK_MAX_UPLOAD_BYTES).")
    if not paths:
        raise _not_found(reference.server)

    staged = inputs / f"{listing.name}.partial"
    staged.write_text(json.dumps([str(path.relative_to(inputs)) for path in paths]))
    staged.replace(listing)
    return RetrievedSeries(options=options, instances=len(paths), bytes=total, reused=False)


def store_instance(path: Path, server_name: str, server: DicomwebServer) -> StoredInstance:
    """Store the DICOM file at ``path`` with STOW-RS and return its UIDs.

    Raises DicomwebError when the server reports the instance as failed or
    does not list it as stored.
    """
    dataset = pydicom.dcmread(path)
    client = make_client(server)

    with _translated_errors(server_name, "storing the SEG"):
        response = client.store_instances([dataset])

    failed = response.get("FailedSOPSequence") or []
    stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in response.get("ReferencedSOPSequence") or []}
    if failed or str(dataset.SOPInstanceUID) not in stored:
        reasons = sorted({str(item.get("FailureReason", "unknown")) for item in failed})
        raise DicomwebError("dicomweb_store_failed", f"DICOMweb server '{server_name}' did not store the SEG (failure reasons: {reasons or 'none given'}).")
    return StoredInstance(
        study_instance_uid=str(dataset.StudyInstanceUID),
        series_instance_uid=str(dataset.SeriesInstanceUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
    )


@contextmanager
def _translated_errors(server_name: str, action: str) -> Iterator[None]:
    """Turn requests and dicomweb-client exceptions into DicomwebError without URLs or UIDs."""
    try:
        yield
    except DicomwebError:
        raise
    except Exception as error:
        translated = _translate(error, server_name, action)
        if translated is None:
            raise
        raise translated from None


def _translate(error: BaseException, server: str, action: str) -> DicomwebError | None:
    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        if status in (401, 403):
            return DicomwebError("dicomweb_auth_failed", f"DICOMweb server '{server}' rejected the service's credentials (HTTP {status}) while {action}; the operator must check TUMORTRACK_DICOMWEB_SERVERS.")
        if status == 404 and action == "retrieving the series":
            return _not_found(server)
        if status in TRANSIENT_STATUSES:
            return DicomwebError("dicomweb_server_error", f"DICOMweb server '{server}' responded with HTTP {status} while {action}.", transient=True)
        return DicomwebError("dicomweb_request_failed", f"DICOMweb server '{server}' responded with HTTP {status} while {action}.")
    if isinstance(error, requests.exceptions.SSLError):
        return DicomwebError("dicomweb_request_failed", f"The TLS connection to DICOMweb server '{server}' failed while {action}; the operator must check its certificate.")
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        reason = "timed out" if isinstance(error, requests.Timeout) else "could not be reached"
        return DicomwebError("dicomweb_unreachable", f"DICOMweb server '{server}' {reason} while {action}.", transient=True)
    # dicomweb-client 0.61 raises KeyError for a response without Content-Type.
    if isinstance(error, (requests.RequestException, InvalidDicomError, ValueError, KeyError)):
        return DicomwebError("dicomweb_request_failed", f"DICOMweb server '{server}' sent a response that could not be read while {action} ({type(error).__name__}).")
    return None


def _not_found(server: str) -> DicomwebError:
    return DicomwebError("dicomweb_series_not_found", f"The series was not found on DICOMweb server '{server}'; check study_uid and series_uid in image_reference.")
