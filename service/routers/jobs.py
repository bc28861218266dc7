"""Job status, artifacts and cancellation."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from lesions.jobs import FINAL_STATES, JobError, JobRecord, JobState, utcnow
from lesions.metrics_store import count_job_state
from lesions.store import media_type_of
from service.auth import Tenant
from service.dependencies import Context
from service.errors import ApiError
from service.schemas import ErrorResponse, JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
logger = logging.getLogger("tumortrack.gateway")

# Kombu restores an unacknowledged message only some time after its visibility
# timeout (seen here: more than a minute past a 13 s timeout), so a silent job
# is given up only well after that.
ABANDON_VISIBILITY_FACTOR = 3
ABANDON_MIN_GRACE_S = 600


def abandon_after_s(settings) -> float:
    """Return how long a running job may go without a worker update before it is given up."""
    timeout = settings.visibility_timeout_s
    return max(ABANDON_VISIBILITY_FACTOR * timeout, timeout + ABANDON_MIN_GRACE_S)



def _fail_if_abandoned(context, record: JobRecord) -> JobRecord:
    """Mark a running job failed when no worker touched it for longer than any attempt may last.

    A worker process killed by the hard time limit leaves its job "running"
    and no worker picks it up again. A redelivered attempt after a lost worker
    updates the record well before ``abandon_after_s``.
    """
    if record.state != JobState.running:
        return record
    silent_s = (utcnow() - record.updated_at).total_seconds()
    if silent_s <= abandon_after_s(context.settings):
        return record

    def fail(current: JobRecord) -> JobRecord | None:
        if current.state != JobState.running or current.updated_at != record.updated_at:
            return None
        current.state = JobState.failed
        current.finished_at = utcnow()
        current.error = JobError(code="time_limit", message="The job stopped reporting progress for longer than its time limit and was given up; try fewer lesions or a smaller image.")
        return current

    updated = context.jobs.update(record.id, fail) or record
    if updated.state == JobState.failed:
        context.jobs.mark_inactive(record.id, record.tenant)
        count_job_state(context.redis, context.settings.key_prefix, "failed", record.engine)
        logger.warning("job=%s given up after %.0f s without a worker update", record.id, silent_s)
    return updated


def _require_job(context, job_id: str, tenant: str) -> JobRecord:
    record = context.jobs.get(job_id) if len(job_id) <= 64 else None
    # Another tenant's job gets the same 404 as a missing one, so ids cannot be probed.
    if record is None or record.tenant != tenant:
        raise ApiError(404, "job_not_found", f"No job with id {job_id!r}; it never existed, was deleted, or has expired.", "job_id")
    return _fail_if_abandoned(context, record)


@router.get("/{job_id}", response_model=JobOut, operation_id="get_job", responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
def get_job(job_id: str, context: Context, tenant: Tenant) -> JobOut:
    """Return a job's state, progress, error and artifacts."""
    return JobOut.from_record(_require_job(context, job_id, tenant))


@router.get(
    "/{job_id}/artifacts/{name}",
    operation_id="get_artifact",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The artifact file."}, 404: {"model": ErrorResponse}, 410: {"model": ErrorResponse}},
)
def get_artifact(job_id: str, name: str, context: Context, tenant: Tenant) -> FileResponse:
    """Download one artifact of a job (mask.nii.gz, lesions.json, lesions.csv, preview.png, ...)."""
    record = _require_job(context, job_id, tenant)
    if record.expired_at is not None:
        raise ApiError(410, "artifacts_expired", f"The files of job {job_id} were deleted at {record.expired_at.isoformat()} after the retention time.", "job_id")
    path = context.store.artifact_path(job_id, name)
    if path is None or name not in {artifact.name for artifact in record.artifacts}:
        available = [artifact.name for artifact in record.artifacts]
        raise ApiError(404, "artifact_not_found", f"Job {job_id} has no artifact {name!r}; available: {available}.", "name")
    return FileResponse(path, media_type=media_type_of(name), filename=name)


@router.delete("/{job_id}", status_code=204, operation_id="delete_job", responses={404: {"model": ErrorResponse}})
def delete_job(job_id: str, context: Context, tenant: Tenant) -> Response:
    """Cancel a queued or running job and delete its uploads and artifacts."""
    _require_job(context, job_id, tenant)

    def cancel(record: JobRecord) -> JobRecord | None:
        if record.state in FINAL_STATES:
            return None
        record.state = JobState.cancelled
        record.finished_at = utcnow()
        return record

    record = context.jobs.update(job_id, cancel)
    context.jobs.mark_inactive(job_id, tenant)
    context.store.delete(job_id)
    if record is not None and record.state == JobState.cancelled:
        count_job_state(context.redis, context.settings.key_prefix, "cancelled", record.engine)
    if record is not None and record.state != JobState.cancelled:
        # A finished job has nothing left to run, so its record goes too.
        context.jobs.delete(job_id)
    logger.info("job=%s deleted", job_id)
    return Response(status_code=204)
