"""Purge uploads and artifacts past their retention time (they are patient data).

Any worker may run the purge; it is idempotent. The job record stays (until
its own, longer Redis expiry) with ``expired_at`` set, so a client asking for
an artifact learns it expired (410) instead of never existing (404).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from lesions.jobs import FINAL_STATES, JobRecord, JobRepository
from lesions.store import JobStore

logger = logging.getLogger("tumortrack.retention")


def purge_expired(store: JobStore, jobs: JobRepository, retention_s: float, now: float | None = None) -> list[str]:
    """Delete the files of every finished job older than ``retention_s``; return their ids."""
    now = time.time() if now is None else now
    purged = []

    for job_id in store.job_ids():
        if now - store.created_at(job_id) < retention_s:
            continue
        record = jobs.get(job_id)
        if record is not None and record.state not in FINAL_STATES:
            continue

        store.delete(job_id)
        if record is not None:
            jobs.update(job_id, _mark_expired(now))
        purged.append(job_id)

    if purged:
        logger.info("purged files of %d job(s) older than %.0f s", len(purged), retention_s)
    return purged


def _mark_expired(now: float):
    def change(record: JobRecord) -> JobRecord:
        record.expired_at = datetime.fromtimestamp(now, timezone.utc)
        record.artifacts = []
        return record

    return change
