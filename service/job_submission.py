"""The steps every job-creating endpoint shares: admission, record, queue, 202."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.datastructures import FormData

from lesions.jobs import JobRecord
from lesions.metrics_store import count_job_state
from service.admission import check_queue_limits, claim_idempotency_key, previous_job, request_fingerprint, validate_idempotency_key
from service.dependencies import GatewayContext
from service.errors import ApiError
from service.schemas import JobAccepted, JobLinks

logger = logging.getLogger("tumortrack.gateway")


@dataclass(frozen=True)
class Admission:
    """Idempotency key and fingerprint of a request, and the earlier job's 202 when it repeats one."""

    key: str | None
    fingerprint: str | None
    replay: JSONResponse | None = None


async def admit_or_replay(context: GatewayContext, tenant: str, idempotency_key: str | None, form: FormData) -> Admission:
    """Return the first job's 202 response in ``replay`` when this request repeats an earlier one.

    Otherwise check the queue limits (raising 429), so the caller goes on to
    create the job. A key reused for a different request raises 422.
    """
    key = validate_idempotency_key(idempotency_key)
    fingerprint = await request_fingerprint(form) if key is not None else None
    record = previous_job(context, tenant, key, fingerprint)
    if record is not None:
        return Admission(key, fingerprint, accepted_response(record, replayed=True))

    check_queue_limits(context, tenant)
    return Admission(key, fingerprint)


def enqueue(context: GatewayContext, record: JobRecord, task_name: str, admission: Admission) -> JSONResponse:
    """Store the record, queue the task and return 202. A request that loses an idempotency race gets the winner's job."""
    try:
        winner = claim_idempotency_key(context, record.tenant, admission.key, record.id, admission.fingerprint)
    except ApiError:
        context.store.delete(record.id)
        raise
    if winner is not None and (existing := context.jobs.get(winner)) is not None:
        context.store.delete(record.id)
        return accepted_response(existing, replayed=True)

    context.jobs.create(record)
    context.jobs.mark_active(record.id, record.tenant)
    context.send_task(task_name, record.id)
    count_job_state(context.redis, context.settings.key_prefix, "queued", record.engine)
    return accepted_response(record)


def accepted_response(record: JobRecord, replayed: bool = False) -> JSONResponse:
    location = f"/v1/jobs/{record.id}"
    body = JobAccepted(id=record.id, state=record.state, links=JobLinks(self=location))
    headers = {"Location": location}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(status_code=202, content=body.model_dump(mode="json"), headers=headers)
