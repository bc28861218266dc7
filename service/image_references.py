"""Form fields that name an image on a DICOMweb server instead of uploading it.

A job gives each image either as an upload or as a reference, never both.
``store_seg`` requests that the worker store the SEG back to the referenced server,
so it needs a reference.
"""

from __future__ import annotations

from starlette.datastructures import FormData

from lesions.dicomweb_reference import DicomwebReference, parse_dicomweb_reference
from lesions.errors import InputError
from lesions.settings import Settings
from service.uploads import read_json_part

REFERENCE_DESCRIPTION = (
    'JSON naming a series on a DICOMweb server the operator configured, instead of uploading it: '
    '{"dicomweb": {"server": "<name>", "study_uid": "<Study Instance UID>", "series_uid": "<Series Instance UID>"}}. '
    "The worker retrieves it with WADO-RS."
)
STORE_SEG_DESCRIPTION = "With an image reference: store seg.dcm back to the same DICOMweb server with STOW-RS; the job then lists its UIDs under dicomweb_stored. Default false."


async def read_image_reference(form: FormData, field: str, settings: Settings) -> DicomwebReference | None:
    """Parse the reference in ``field``, or return None when the field is absent or blank."""
    raw = await read_json_part(form, field, required=False)
    if raw is None or not raw.strip():
        return None
    return parse_dicomweb_reference(raw, settings.dicomweb_servers, field)


def check_one_image_source(form: FormData, upload_field: str, reference_field: str, reference: DicomwebReference | None) -> None:
    """Raise a 422 when an image is both uploaded and referenced."""
    if reference is not None and form.getlist(upload_field):
        raise InputError(reference_field, f"give either '{upload_field}' (an upload) or '{reference_field}' (a DICOMweb reference), not both", code="conflicting_fields")


def check_no_series_uid(reference: DicomwebReference | None, series_uid: str | None, series_field: str) -> None:
    """Raise a 422 when a referenced image also gets an upload's series choice."""
    if reference is not None and series_uid is not None:
        raise InputError(series_field, "applies to uploads only; a DICOMweb reference names its series in series_uid inside the reference", code="conflicting_fields")


def check_store_seg(store_seg: bool | None, has_reference: bool) -> None:
    """Raise a 422 when store_seg is requested for a job without an image reference."""
    if store_seg and not has_reference:
        raise InputError("store_seg", "needs an image reference: the SEG is stored to the DICOMweb server the image came from", code="conflicting_fields")
