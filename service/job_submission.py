"""The steps every job-creating endpoint shares: admission, record, queue, 202."""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from lesions.jobs import JobRecord
from lesions.metrics_store import count_job_state
from service.admission import check_queue_limits, claim_idempotency_key, previous_job, validate_idempotency_key
from service.dependencies import GatewayContext
from service.schemas import JobAccepted, JobLinks

logger = logging.getLogger("tumortrack.gateway")


def admit_or_replay(context: GatewayContext, tenant: str, idempotency_key: str | None) -> JSONResponse | None:
    """Return the first job's 202 response when this request repeats an earlier one.

    Otherwise check the queue limits (raising 429) and return None, so the
    caller goes on to create the job.
    """
    key = validate_idempotency_key(idempotency_key)
    record = previous_job(context, tenant, key)
    if record is not None:
        return accepted_response(record, replayed=True)

    check_queue_limits(context, tenant)
    return None


def enqueue(context: GatewayContext, record: JobRecord, task_name: str, idempotency_key: str | None) -> JSONResponse:
    """Store the record, queue the task and return 202. A request that loses an idempotency race gets the winner's job."""
    winner = claim_idempotency_key(context, record.tenant, idempotency_key, record.id)
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
