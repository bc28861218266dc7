"""POST /v1/trackings: a baseline CT, one or more follow-ups, and the baseline lesions."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from lesions.deferred_prompts import store_unresolved_prompts
from lesions.dicomweb_reference import DicomwebReference, parse_dicomweb_reference
from lesions.errors import InputError
from lesions.geometry import ImageGeometry, check_same_grid
from lesions.image_inputs import CheckedImage
from lesions.image_io import read_label_volume, read_volume_header
from lesions.jobs import JobRecord, new_job_id, utcnow
from lesions.prompt_types import prompt_to_dict
from lesions.prompts import parse_prompts
from service.auth import Tenant
from service.dependencies import Context
from service.engine_choice import choose_engine
from service.image_references import REFERENCE_DESCRIPTION, check_no_series_uid, check_one_image_source, check_store_seg, read_image_reference
from service.job_submission import admit_or_replay, enqueue
from service.schemas import ErrorResponse, JobAccepted
from service.uploads import MAX_PROMPT_BYTES, check_known_fields, naming_file, optional_text, parse_bool, read_form, read_json_part, save_image_files, save_image_upload, save_volume_upload, single_file

router = APIRouter(prefix="/v1", tags=["trackings"])
logger = logging.getLogger("tumortrack.gateway")

MAX_FOLLOWUPS = 20

REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "baseline": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "Baseline CT: one volume (.nii, .nii.gz, .nrrd, .mha), a .zip of a DICOM series, or the series' files. Give this or baseline_reference."},
                    "baseline_reference": {"type": "string", "description": "Baseline on a DICOMweb server instead of an upload. " + REFERENCE_DESCRIPTION},
                    "baseline_series_uid": {"type": "string", "description": "Series Instance UID when the baseline DICOM upload holds several series."},
                    "followups": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "One or more follow-up CTs in time order, each one volume file or a .zip of a DICOM series. Give this or followup_references."},
                    "followup_references": {"type": "array", "items": {"type": "string"}, "description": "Follow-ups on DICOMweb servers instead of uploads, one part per follow-up in time order, each as in baseline_reference."},
                    "store_seg": {"type": "boolean", "description": "With image references: store each referenced time point's seg_t<i>.dcm back to its DICOMweb server with STOW-RS; the job then lists the UIDs under dicomweb_stored. Default false."},
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
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description="Repeating a POST with the same key and the same input returns the first job; the same key with other input gets 422.")] = None,
) -> JSONResponse:
    """Track the baseline's lesions through each follow-up: masks with stable ids, correspondence and RECIST 1.1."""
    form = await read_form(request)
    check_known_fields(form, REQUEST_BODY["content"]["multipart/form-data"]["schema"]["properties"])
    admission = await admit_or_replay(context, tenant, idempotency_key, form)
    if admission.replay is not None:
        return admission.replay

    baseline_reference = await read_image_reference(form, "baseline_reference", context.settings)
    check_one_image_source(form, "baseline", "baseline_reference", baseline_reference)
    followup_sources = await _followup_sources(form, context.settings)
    prompts_raw = await read_json_part(form, "prompts", required=False)
    mask_upload = single_file(form, "baseline_mask", required=False)
    followup_prompts_raw = await _followup_prompt_parts(form, len(followup_sources))
    store_seg = parse_bool(optional_text(form, "store_seg"), "store_seg")
    check_no_series_uid(baseline_reference, optional_text(form, "baseline_series_uid"), "baseline_series_uid")
    check_store_seg(store_seg, has_reference=baseline_reference is not None or any(isinstance(source, DicomwebReference) for source in followup_sources))
    engine = choose_engine(context, optional_text(form, "engine"))
    tta = parse_bool(optional_text(form, "test_time_augmentation"), "test_time_augmentation")
    if prompts_raw is None and mask_upload is None:
        raise InputError("prompts", "is missing: give 'prompts' (baseline prompt JSON) or 'baseline_mask' (instance label volume)", code="missing_field")
    if prompts_raw is not None and mask_upload is not None:
        raise InputError("baseline_mask", "cannot go with 'prompts': give one of them for the baseline's lesions", code="conflicting_fields")

    job_id = new_job_id()
    inputs = context.store.create(job_id)
    try:
        options = await _store_inputs(form, inputs, baseline_reference, followup_sources, prompts_raw, mask_upload, followup_prompts_raw)
    except InputError:
        context.store.delete(job_id)
        raise

    now = utcnow()
    options["test_time_augmentation"] = tta
    options["store_seg"] = bool(store_seg)
    record = JobRecord(id=job_id, kind="tracking", engine=engine, tenant=tenant, created_at=now, updated_at=now, options=options)
    response = enqueue(context, record, "tumortrack.track", admission)
    logger.info("job=%s state=queued kind=tracking engine=%s followups=%d", job_id, engine, len(followup_sources))
    return response


async def _followup_sources(form, settings) -> list[UploadFile | DicomwebReference]:
    """Return the follow-ups in time order: all uploads, or all DICOMweb references."""
    references = form.getlist("followup_references")
    if not references:
        return _followup_files(form)
    if form.getlist("followups"):
        raise InputError("followup_references", "give either 'followups' (uploads) or 'followup_references', not both", code="conflicting_fields")
    if len(references) > MAX_FOLLOWUPS:
        raise InputError("followup_references", f"has {len(references)} parts; at most {MAX_FOLLOWUPS} follow-ups per job")

    parsed = []
    for position, value in enumerate(references):
        field = f"followup_references[{position}]"
        raw = await value.read(MAX_PROMPT_BYTES + 1) if isinstance(value, UploadFile) else value.encode()
        if len(raw) > MAX_PROMPT_BYTES:
            raise InputError(field, f"is larger than {MAX_PROMPT_BYTES} bytes", status=413, code="request_too_large")
        parsed.append(parse_dicomweb_reference(raw, settings.dicomweb_servers, field))
    return parsed


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


async def _store_inputs(form, inputs, baseline_reference, followup_sources, prompts_raw, mask_upload, followup_prompts_raw) -> dict:
    if baseline_reference is None:
        baseline = await save_image_upload(form, "baseline", inputs, "baseline", optional_text(form, "baseline_series_uid"))
    else:
        baseline = CheckedImage(options=baseline_reference.to_options(), geometry=None)

    followups = []
    for position, source in enumerate(followup_sources):
        if isinstance(source, DicomwebReference):
            checked = CheckedImage(options=source.to_options(), geometry=None)
        else:
            checked = await save_image_files([source], f"followups[{position}]", inputs, f"followup_{position + 1}", None)
        entry = {"image": checked.options, "prompts_file": None}
        if followup_prompts_raw[position] is not None:
            entry["prompts_file"] = f"followup_{position + 1}_prompts.json"
            _store_prompts(followup_prompts_raw[position], checked.geometry, inputs / entry["prompts_file"], f"followup_prompts[{position}]")
        followups.append(entry)

    options = {"baseline": baseline.options, "followups": followups, "prompts_file": None, "mask_file": None, "input_warnings": baseline.warnings}
    if prompts_raw is not None:
        _store_prompts(prompts_raw, baseline.geometry, inputs / "baseline_prompts.json", "prompts")
        options["prompts_file"] = "baseline_prompts.json"
    else:
        mask_path = await save_volume_upload(mask_upload, inputs, "baseline_mask", "baseline_mask")
        with naming_file(mask_upload):
            mask_geometry = await run_in_threadpool(read_volume_header, mask_path, "baseline_mask")
            # Unlike an image, a mask is read whole here, so that an empty mask or one
            # with labels that are not lesion ids is rejected before the job is queued.
            await run_in_threadpool(read_label_volume, mask_path, "baseline_mask")
        # A referenced baseline's grid is known only once the worker has retrieved
        # it, so the worker checks the mask against it then.
        if baseline.geometry is not None:
            check_same_grid(mask_geometry, baseline.geometry, "baseline_mask", "baseline")
        options["mask_file"] = mask_path.name
    return options


def _store_prompts(raw: bytes, geometry: ImageGeometry | None, resolved: Path, field: str) -> None:
    """Resolve prompts against an uploaded image now, or store them for the worker when the image is a reference."""
    if geometry is None:
        store_unresolved_prompts(raw, resolved, field)
        return
    prompts = parse_prompts(raw, geometry, field=field)
    resolved.write_text(json.dumps({"lesions": [prompt_to_dict(p) for p in prompts]}))
