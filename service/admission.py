"""Admission of new jobs: queue limits per tenant and overall, and idempotency keys.

A repeated POST with the same ``Idempotency-Key`` (per tenant, kept as long
as job records are) returns the job created by the first one instead of
queueing the work again.
"""

from __future__ import annotations

import re

from lesions.jobs import JobRecord
from service.dependencies import GatewayContext
from service.errors import ApiError

IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
RETRY_AFTER_S = 10


def check_queue_limits(context: GatewayContext, tenant: str) -> None:
    settings = context.settings
    if context.jobs.active_count(tenant) >= settings.max_active_jobs_per_tenant:
        raise ApiError(429, "tenant_queue_full", f"This API key already has {settings.max_active_jobs_per_tenant} unfinished jobs; wait for some to finish.", headers={"Retry-After": str(RETRY_AFTER_S)})
    if context.jobs.active_count(None) >= settings.max_active_jobs_total:
        raise ApiError(429, "queue_full", f"The service has {settings.max_active_jobs_total} unfinished jobs; try again later.", headers={"Retry-After": str(RETRY_AFTER_S)})


def _idempotency_redis_key(context: GatewayContext, tenant: str, key: str) -> str:
    return f"{context.settings.key_prefix}:idempotency:{tenant}:{key}"


def validate_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise ApiError(422, "invalid_input", "Idempotency-Key must be 1 to 128 characters of letters, digits, '_', '.', ':' or '-'.", "Idempotency-Key")
    return key


def previous_job(context: GatewayContext, tenant: str, key: str | None) -> JobRecord | None:
    """Return the job an earlier request with this key created, if it still exists."""
    if key is None:
        return None
    job_id = context.redis.get(_idempotency_redis_key(context, tenant, key))
    if job_id is None:
        return None
    return context.jobs.get(job_id.decode())


def claim_idempotency_key(context: GatewayContext, tenant: str, key: str | None, job_id: str) -> str | None:
    """Bind ``key`` to ``job_id``; return the job id already bound when a concurrent request won."""
    if key is None:
        return None
    redis_key = _idempotency_redis_key(context, tenant, key)
    if context.redis.set(redis_key, job_id, nx=True, ex=context.settings.job_retention_s):
        return None
    existing = context.redis.get(redis_key)
    return existing.decode() if existing else None
