"""POST /v1/trackings: a baseline CT, one or more follow-ups, and the baseline lesions."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from lesions.errors import InputError
from lesions.geometry import ImageGeometry
from lesions.image_io import read_volume_header
from lesions.jobs import JobRecord, new_job_id, utcnow
from lesions.prompt_types import prompt_to_dict
from lesions.prompts import parse_prompts
from service.auth import Tenant
from service.dependencies import Context
from service.engine_choice import choose_engine
from service.job_submission import admit_or_replay, enqueue
from service.schemas import ErrorResponse, JobAccepted
from service.uploads import MAX_PROMPT_BYTES, optional_text, parse_bool, read_form, read_json_part, save_image_files, save_image_upload, save_volume_upload, single_file

router = APIRouter(prefix="/v1", tags=["trackings"])
logger = logging.getLogger("tumortrack.gateway")

MAX_FOLLOWUPS = 20
# A prior mask must lie on the baseline's grid; header values may differ by rounding only.
GEOMETRY_TOLERANCE = 1e-3

REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["baseline", "followups"],
                "properties": {
                    "baseline": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "description": "Baseline CT: one volume (.nii, .nii.gz, .nrrd, .mha), a .zip of a DICOM series, or the series' files."},
                    "baseline_series_uid": {"type": "string", "description": "Series Instance UID when the baseline DICOM upload holds several series."},
                    "followups": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "description": "One or more follow-up CTs in time order, each one volume file or a .zip of a DICOM series."},
                    "prompts": {"type": "string", "description": "Prompt JSON for the baseline (same formats as /v1/segmentations). Give this or baseline_mask."},
                    "baseline_mask": {"type": "string", "format": "binary", "description": "Instance label volume on the baseline's grid (label = lesion id); a binary mask is split into connected components."},
                    "followup_prompts": {"type": "array", "items": {"type": "string"}, "description": "Optional, one per follow-up in the same order: prompt JSON marking lesions there, to find new ones. An empty value means none for that follow-up."},
                    "engine": {"type": "string", "enum": ["classical", "lesionlocator"]},
                    "test_time_augmentation": {"type": "boolean"},
                },
            }
        }
    },
}


@router.post(
    "/trackings",
    status_code=202,
    response_model=JobAccepted,
    operation_id="create_tracking",
    responses={401: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
    openapi_extra={"requestBody": REQUEST_BODY},
)
async def create_tracking(
    request: Request,
    context: Context,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description="Repeating a POST with the same key returns the first job.")] = None,
) -> JSONResponse:
    """Track the baseline's lesions through each follow-up: masks with stable ids, correspondence and RECIST 1.1."""
    if (replay := admit_or_replay(context, tenant, idempotency_key)) is not None:
        return replay

    form = await read_form(request)
    followup_uploads = _followup_files(form)
    prompts_raw = await read_json_part(form, "prompts", required=False)
    mask_upload = single_file(form, "baseline_mask", required=False)
    followup_prompts_raw = await _followup_prompt_parts(form, len(followup_uploads))
    engine = choose_engine(context, optional_text(form, "engine"))
    tta = parse_bool(optional_text(form, "test_time_augmentation"), "test_time_augmentation")
    if (prompts_raw is None) == (mask_upload is None):
        raise InputError("prompts", "give exactly one of 'prompts' (baseline prompt JSON) or 'baseline_mask' (instance label volume)", code="missing_field")

    job_id = new_job_id()
    inputs = context.store.create(job_id)
    try:
        options = await _store_inputs(form, inputs, followup_uploads, prompts_raw, mask_upload, followup_prompts_raw)
    except InputError:
        context.store.delete(job_id)
        raise

    now = utcnow()
    options["test_time_augmentation"] = tta
    record = JobRecord(id=job_id, kind="tracking", engine=engine, tenant=tenant, created_at=now, updated_at=now, options=options)
    response = enqueue(context, record, "tumortrack.track", idempotency_key)
    logger.info("job=%s state=queued kind=tracking engine=%s followups=%d", job_id, engine, len(followup_uploads))
    return response


def _followup_files(form) -> list[UploadFile]:
    values = form.getlist("followups")
    if not values:
        raise InputError("followups", "is missing: attach one or more follow-up volumes as 'followups' file fields", code="missing_field")
    if len(values) > MAX_FOLLOWUPS:
        raise InputError("followups", f"has {len(values)} files; at most {MAX_FOLLOWUPS} follow-ups per job")
    for position, value in enumerate(values):
        if not isinstance(value, UploadFile):
            raise InputError(f"followups[{position}]", "must be a file, not a text value")
    return values


async def _followup_prompt_parts(form, followup_count: int) -> list[bytes | None]:
    values = form.getlist("followup_prompts")
    if not values:
        return [None] * followup_count
    if len(values) != followup_count:
        raise InputError("followup_prompts", f"has {len(values)} parts but there are {followup_count} follow-ups; send one per follow-up, empty for none")

    parts = []
    for value in values:
        data = await value.read(MAX_PROMPT_BYTES + 1) if isinstance(value, UploadFile) else value.encode()
        if len(data) > MAX_PROMPT_BYTES:
            raise InputError("followup_prompts", f"a part is larger than {MAX_PROMPT_BYTES} bytes", status=413, code="request_too_large")
        parts.append(data if data.strip() else None)
    return parts


async def _store_inputs(form, inputs, followup_uploads, prompts_raw, mask_upload, followup_prompts_raw) -> dict:
    baseline = await save_image_upload(form, "baseline", inputs, "baseline", optional_text(form, "baseline_series_uid"))
    baseline_geometry = baseline.geometry

    followups = []
    for position, upload in enumerate(followup_uploads):
        field = f"followups[{position}]"
        checked = await save_image_files([upload], field, inputs, f"followup_{position + 1}", None)
        entry = {"image": checked.options, "prompts_file": None}
        if followup_prompts_raw[position] is not None:
            prompts = parse_prompts(followup_prompts_raw[position], checked.geometry, field=f"followup_prompts[{position}]")
            entry["prompts_file"] = f"followup_{position + 1}_prompts.json"
            (inputs / entry["prompts_file"]).write_text(json.dumps({"lesions": [prompt_to_dict(p) for p in prompts]}))
        followups.append(entry)

    options = {"baseline": baseline.options, "followups": followups, "prompts_file": None, "mask_file": None, "input_warnings": baseline.warnings}
    if prompts_raw is not None:
        prompts = parse_prompts(prompts_raw, baseline_geometry)
        (inputs / "baseline_prompts.json").write_text(json.dumps({"lesions": [prompt_to_dict(p) for p in prompts]}))
        options["prompts_file"] = "baseline_prompts.json"
    else:
        mask_path = await save_volume_upload(mask_upload, inputs, "baseline_mask", "baseline_mask")
        mask_geometry = await run_in_threadpool(read_volume_header, mask_path, "baseline_mask")
        _check_same_grid(mask_geometry, baseline_geometry)
        options["mask_file"] = mask_path.name
    return options


def _check_same_grid(mask: ImageGeometry, image: ImageGeometry) -> None:
    same = (
        mask.size == image.size
        and np.allclose(mask.spacing, image.spacing, rtol=GEOMETRY_TOLERANCE, atol=GEOMETRY_TOLERANCE)
        and np.allclose(mask.origin, image.origin, atol=GEOMETRY_TOLERANCE * max(image.spacing) * 10)
        and np.allclose(mask.direction, image.direction, atol=GEOMETRY_TOLERANCE)
    )
    if not same:
        raise InputError("baseline_mask", f"is not on the baseline's grid: mask size {list(mask.size)} spacing {np.round(mask.spacing, 4).tolist()} origin {np.round(mask.origin, 3).tolist()}, baseline size {list(image.size)} spacing {np.round(image.spacing, 4).tolist()} origin {np.round(image.origin, 3).tolist()}", code="geometry_mismatch")
