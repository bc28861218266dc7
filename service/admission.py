"""Admission of new jobs: queue limits per tenant and overall, and idempotency keys.

A repeated POST with the same ``Idempotency-Key`` (per tenant, kept as long
as job records are) returns the job created by the first one instead of
queueing the work again. The key is bound to a fingerprint of the request
(every form field and the content of every file), so a key reused for a
different request is rejected instead of returning a job made from other input.
"""

from __future__ import annotations

import hashlib
import re

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from lesions.jobs import JobRecord
from service.dependencies import GatewayContext
from service.errors import ApiError

HASH_CHUNK_BYTES = 1 << 20

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


async def request_fingerprint(form: FormData) -> str:
    """Return a SHA-256 over every form field's name and value, files by name and content."""
    digest = hashlib.sha256()
    for name, value in form.multi_items():
        digest.update(f"{len(name)}:{name}".encode())
        if isinstance(value, UploadFile):
            digest.update(f"file:{value.filename or ''}:".encode())
            digest.update(await run_in_threadpool(_file_digest, value))
        else:
            digest.update(f"text:{len(value)}:{value}".encode())
    return digest.hexdigest()


def _file_digest(upload: UploadFile) -> bytes:
    upload.file.seek(0)
    digest = hashlib.sha256()
    while chunk := upload.file.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
    upload.file.seek(0)
    return digest.digest()


def previous_job(context: GatewayContext, tenant: str, key: str | None, fingerprint: str | None) -> JobRecord | None:
    """Return the job an earlier request with this key created, if it still exists.

    Raises a 422 when that request differed from this one.
    """
    if key is None:
        return None
    bound = context.redis.get(_idempotency_redis_key(context, tenant, key))
    if bound is None:
        return None
    job_id = _check_same_request(bound.decode(), fingerprint)
    return context.jobs.get(job_id)


def claim_idempotency_key(context: GatewayContext, tenant: str, key: str | None, job_id: str, fingerprint: str | None) -> str | None:
    """Bind ``key`` to ``job_id``; return the job id already bound when a concurrent request won."""
    if key is None:
        return None
    redis_key = _idempotency_redis_key(context, tenant, key)
    if context.redis.set(redis_key, f"{job_id} {fingerprint}", nx=True, ex=context.settings.job_retention_s):
        return None
    existing = context.redis.get(redis_key)
    return _check_same_request(existing.decode(), fingerprint) if existing else None


def _check_same_request(bound: str, fingerprint: str | None) -> str:
    """Return the job id of a binding "<job id> <fingerprint>"; raise 422 when the fingerprints differ."""
    job_id, _, bound_fingerprint = bound.partition(" ")
    if bound_fingerprint and fingerprint and bound_fingerprint != fingerprint:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"This Idempotency-Key was already used for a different request (job {job_id}); use a new key for new input.",
            "Idempotency-Key",
        )
    return job_id
