"""POST /v1/segmentations: upload a CT and prompts, get a job."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from lesions.deferred_prompts import store_unresolved_prompts
from lesions.errors import InputError
from lesions.jobs import JobRecord, new_job_id, utcnow
from lesions.prompt_types import prompt_to_dict
from lesions.prompts import PromptsIn, parse_prompts
from service.auth import Tenant
from service.dependencies import Context
from service.engine_choice import choose_engine
from service.image_references import REFERENCE_DESCRIPTION, STORE_SEG_DESCRIPTION, check_no_series_uid, check_one_image_source, check_store_seg, read_image_reference
from service.job_submission import admit_or_replay, enqueue
from service.schemas import ErrorResponse, JobAccepted
from service.uploads import check_known_fields, optional_text, parse_bool, read_form, read_json_part, save_image_upload

router = APIRouter(prefix="/v1", tags=["segmentations"])
logger = logging.getLogger("tumortrack.gateway")

REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["prompts"],
                "properties": {
                    "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "One CT volume (.nii, .nii.gz, .nrrd, .mha), or a DICOM series: a .zip, or its .dcm files as several parts named 'image'. Give this or image_reference."},
                    "image_reference": {"type": "string", "description": REFERENCE_DESCRIPTION, "example": json.dumps({"dicomweb": {"server": "pacs", "study_uid": "1.2.826.0.1.3680043.8.498.1", "series_uid": "1.2.826.0.1.3680043.8.498.2"}})},
                    "store_seg": {"type": "boolean", "description": STORE_SEG_DESCRIPTION},
                    "series_uid": {"type": "string", "description": "Series Instance UID to use when the DICOM upload holds several series."},
                    "prompts": {
                        "type": "string",
                        "description": "Prompt JSON, as a text field or a file. TumorTrack's format is the PromptsIn schema; LesionLocator's {\"1\": {\"box\": [z0, z1, y0, y1, x0, x1]}} and grand-challenge 'Multiple points' JSON are accepted too.",
                        "example": json.dumps(PromptsIn.model_config["json_schema_extra"]["examples"][0]),
                    },
                    "engine": {"type": "string", "enum": ["classical", "lesionlocator"], "description": "Engine to run; default: lesionlocator when a worker has it ready, else classical."},
                    "test_time_augmentation": {"type": "boolean", "description": "Mirroring test-time augmentation for the lesionlocator engine; default: on with a GPU, off on CPU."},
                },
            },
            "encoding": {"image": {"contentType": "application/octet-stream"}},
        }
    },
}


@router.post(
    "/segmentations",
    status_code=202,
    response_model=JobAccepted,
    operation_id="create_segmentation",
    responses={401: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def create_segmentation(
    request: Request,
    context: Context,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description="Repeating a POST with the same key and the same input returns the first job; the same key with other input gets 422.")] = None,
) -> JSONResponse:
    """Segment every prompted lesion of one CT volume, uploaded or on a DICOMweb server."""
    form = await read_form(request)
    check_known_fields(form, REQUEST_BODY["content"]["multipart/form-data"]["schema"]["properties"])
    admission = await admit_or_replay(context, tenant, idempotency_key, form)
    if admission.replay is not None:
        return admission.replay

    prompts_raw = await read_json_part(form, "prompts")
    series_uid = optional_text(form, "series_uid")
    reference = await read_image_reference(form, "image_reference", context.settings)
    store_seg = parse_bool(optional_text(form, "store_seg"), "store_seg")
    check_one_image_source(form, "image", "image_reference", reference)
    check_no_series_uid(reference, series_uid, "series_uid")
    check_store_seg(store_seg, has_reference=reference is not None)
    engine = choose_engine(context, optional_text(form, "engine"))
    tta = parse_bool(optional_text(form, "test_time_augmentation"), "test_time_augmentation")

    job_id = new_job_id()
    inputs = context.store.create(job_id)
    try:
        if reference is None:
            image = await _store_upload(form, inputs, prompts_raw, series_uid)
        else:
            lesion_count = store_unresolved_prompts(prompts_raw, inputs / "prompts.json")
            image = _StoredImage(options=reference.to_options(), warnings=[], lesion_count=lesion_count, size=None)
    except InputError:
        context.store.delete(job_id)
        raise

    now = utcnow()
    record = JobRecord(
        id=job_id,
        kind="segmentation",
        engine=engine,
        tenant=tenant,
        created_at=now,
        updated_at=now,
        warnings=image.warnings,
        options={"image": image.options, "test_time_augmentation": tta, "lesion_count": image.lesion_count, "store_seg": bool(store_seg)},
    )
    response = enqueue(context, record, "tumortrack.segment", admission)
    logger.info("job=%s state=queued kind=segmentation engine=%s lesions=%d image_kind=%s image_size=%s", job_id, engine, image.lesion_count, image.options["kind"], image.size)
    return response


@dataclass
class _StoredImage:
    """The image part of a request after the gateway's checks; ``size`` is None until a worker retrieves a referenced image."""

    options: dict
    warnings: list[str]
    lesion_count: int
    size: list[int] | None


async def _store_upload(form, inputs, prompts_raw: bytes, series_uid: str | None) -> _StoredImage:
    """Store and check the uploaded image, and resolve the prompts against it."""
    checked = await save_image_upload(form, "image", inputs, "image", series_uid)
    prompts = parse_prompts(prompts_raw, checked.geometry)
    (inputs / "prompts.json").write_text(json.dumps({"lesions": [prompt_to_dict(p) for p in prompts]}))
    return _StoredImage(options=checked.options, warnings=checked.warnings, lesion_count=len(prompts), size=list(checked.geometry.size))
