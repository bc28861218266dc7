"""POST /v1/segmentations: upload a CT and prompts, get a job."""

from __future__ import annotations

import json
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from lesions.errors import InputError
from lesions.jobs import JobRecord, new_job_id, utcnow
from lesions.prompt_types import prompt_to_dict
from lesions.prompts import PromptsIn, parse_prompts
from service.auth import Tenant
from service.dependencies import Context
from service.engine_choice import choose_engine
from service.job_submission import admit_or_replay, enqueue
from service.schemas import ErrorResponse, JobAccepted
from service.uploads import optional_text, parse_bool, read_form, read_json_part, save_image_upload

router = APIRouter(prefix="/v1", tags=["segmentations"])
logger = logging.getLogger("tumortrack.gateway")

REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image", "prompts"],
                "properties": {
                    "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "description": "One CT volume (.nii, .nii.gz, .nrrd, .mha), or a DICOM series: a .zip, or its .dcm files as several parts named 'image'."},
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
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description="Repeating a POST with the same key returns the first job.")] = None,
) -> JSONResponse:
    """Segment every prompted lesion of one CT volume."""
    if (replay := admit_or_replay(context, tenant, idempotency_key)) is not None:
        return replay

    form = await read_form(request)
    prompts_raw = await read_json_part(form, "prompts")
    series_uid = optional_text(form, "series_uid")
    engine = choose_engine(context, optional_text(form, "engine"))
    tta = parse_bool(optional_text(form, "test_time_augmentation"), "test_time_augmentation")

    job_id = new_job_id()
    inputs = context.store.create(job_id)
    try:
        checked = await save_image_upload(form, "image", inputs, "image", series_uid)
        prompts = parse_prompts(prompts_raw, checked.geometry)
        (inputs / "prompts.json").write_text(json.dumps({"lesions": [prompt_to_dict(p) for p in prompts]}))
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
        warnings=checked.warnings,
        options={"image": checked.options, "test_time_augmentation": tta, "lesion_count": len(prompts)},
    )
    response = enqueue(context, record, "tumortrack.segment", idempotency_key)
    logger.info("job=%s state=queued kind=segmentation engine=%s lesions=%d image_kind=%s image_size=%s", job_id, engine, len(prompts), checked.options["kind"], list(checked.geometry.size))
    return response
