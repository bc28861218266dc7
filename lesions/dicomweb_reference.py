"""An image named by reference on a configured DICOMweb server, instead of uploaded.

A client sends the reference as JSON in a form field::

    {"dicomweb": {"server": "pacs", "study_uid": "1.2.840...", "series_uid": "1.2.840..."}}

``server`` must be a name from ``TUMORTRACK_DICOMWEB_SERVERS``. The gateway
checks both UIDs against the DICOM rules for UIDs before a job is queued, so
a typo is a 422 and not a failed job. A UID has at most 64 characters, and
its components are digits separated by dots, without leading zeros.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from lesions.errors import InputError

MAX_UID_LENGTH = 64
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
REFERENCE_KIND = "dicomweb"


@dataclass(frozen=True)
class DicomwebReference:
    """One series on a configured DICOMweb server."""

    server: str
    study_uid: str
    series_uid: str

    def to_options(self) -> dict:
        """Return the image options stored in the job record."""
        return {"kind": REFERENCE_KIND, "server": self.server, "study_uid": self.study_uid, "series_uid": self.series_uid}

    @classmethod
    def from_options(cls, options: dict) -> "DicomwebReference":
        return cls(server=options["server"], study_uid=options["study_uid"], series_uid=options["series_uid"])


def parse_dicomweb_reference(raw: bytes | str, servers: Mapping[str, object], field: str) -> DicomwebReference:
    """Parse and check the reference JSON of form field ``field``; errors name the JSON key."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(field, f"is not valid JSON ({error})", code="invalid_json") from error

    if not isinstance(document, dict) or set(document) != {"dicomweb"} or not isinstance(document["dicomweb"], dict):
        raise InputError(field, 'must be {"dicomweb": {"server": ..., "study_uid": ..., "series_uid": ...}}')
    body = document["dicomweb"]
    unknown = sorted(set(body) - {"server", "study_uid", "series_uid"})
    if unknown:
        raise InputError(f"{field}.dicomweb", f"has unknown keys {unknown}; expected server, study_uid and series_uid")

    server = _text(body, "server", f"{field}.dicomweb")
    if server not in servers:
        raise InputError(f"{field}.dicomweb.server", _unknown_server_message(server, servers), code="unknown_dicomweb_server")
    study_uid = _uid(body, "study_uid", f"{field}.dicomweb")
    series_uid = _uid(body, "series_uid", f"{field}.dicomweb")
    return DicomwebReference(server=server, study_uid=study_uid, series_uid=series_uid)


def is_valid_uid(value: str) -> bool:
    return len(value) <= MAX_UID_LENGTH and UID_PATTERN.match(value) is not None


def _text(body: dict, key: str, path: str) -> str:
    value = body.get(key)
    if value is None:
        raise InputError(f"{path}.{key}", "is missing", code="missing_field")
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{path}.{key}", "must be a non-empty string")
    return value.strip()


def _uid(body: dict, key: str, path: str) -> str:
    value = _text(body, key, path)
    if not is_valid_uid(value):
        raise InputError(f"{path}.{key}", f"{value[:80]!r} is not a valid DICOM UID: at most {MAX_UID_LENGTH} characters of digits in dot-separated components, without leading zeros", code="invalid_uid")
    return value


def _unknown_server_message(server: str, servers: Mapping[str, object]) -> str:
    if not servers:
        return f"{server[:64]!r} is not a configured DICOMweb server; this service has none (TUMORTRACK_DICOMWEB_SERVERS), so upload the image instead"
    return f"{server[:64]!r} is not a configured DICOMweb server; configured: {sorted(servers)}"
