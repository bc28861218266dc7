"""The job contract between gateway and workers, and its Redis repository.

A job record is one small JSON document under ``<prefix>:job:<id>``. The
gateway creates it (state ``queued``); the worker moves it through ``running``
(with stage and progress) to ``succeeded`` or ``failed``; ``DELETE`` marks it
``cancelled``. Updates run in a WATCH/MULTI transaction so a cancellation
is never overwritten by a late progress update.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from enum import Enum
from typing import Callable

import redis
from pydantic import BaseModel, Field


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINAL_STATES = {JobState.succeeded, JobState.failed, JobState.cancelled}


class JobError(BaseModel):
    """Why a job failed: a stable code for machines and a sentence for people."""

    code: str
    message: str


class ArtifactInfo(BaseModel):
    name: str
    media_type: str
    size: int = Field(description="Size in bytes.")


class StoredDicom(BaseModel):
    """An artifact stored to a DICOMweb server with STOW-RS, and the UIDs it has there."""

    artifact: str = Field(description="Artifact name, e.g. 'seg.dcm'.")
    server: str = Field(description="Name of the configured DICOMweb server.")
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


class JobRecord(BaseModel):
    id: str
    kind: str = Field(description="'segmentation' or 'tracking'.")
    state: JobState = JobState.queued
    stage: str | None = Field(None, description="What a running job is doing: loading, segmenting, measuring, exporting.")
    progress: float = Field(0.0, ge=0.0, le=1.0)
    engine: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None
    warnings: list[str] = Field(default_factory=list)
    artifacts: list[ArtifactInfo] = Field(default_factory=list)
    options: dict = Field(default_factory=dict, description="Job options as submitted (inputs, engine options).")
    attempts: int = Field(0, description="How many times a worker started this job.")
    tenant: str = Field("default", description="Owner of the job; other tenants get 404.")
    worker: str | None = Field(None, description="Host and process of the worker that ran the latest attempt.")
    expired_at: datetime | None = Field(None, description="When the uploads and artifacts were purged after the retention time.")
    dicomweb_stored: list[StoredDicom] = Field(default_factory=list, description="Artifacts stored back to a DICOMweb server (store_seg).")


def new_job_id() -> str:
    """Return an unguessable job id (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobRepository:
    def __init__(self, client: redis.Redis, prefix: str = "tumortrack", retention_s: int = 7 * 24 * 3600):
        self.client = client
        self.prefix = prefix
        self.retention_s = retention_s

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def create(self, record: JobRecord) -> None:
        self.client.set(self._key(record.id), record.model_dump_json(), ex=self.retention_s, nx=True)

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.client.get(self._key(job_id))
        return JobRecord.model_validate_json(raw) if raw is not None else None

    def update(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        """Apply ``change`` atomically; it returns the new record, or None to leave it as is."""
        key = self._key(job_id)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    current = JobRecord.model_validate_json(raw)
                    updated = change(current.model_copy(deep=True))
                    if updated is None:
                        pipe.unwatch()
                        return current
                    updated.updated_at = utcnow()
                    pipe.multi()
                    pipe.set(key, updated.model_dump_json(), ex=self.retention_s)
                    pipe.execute()
                    return updated
                except redis.WatchError:
                    time.sleep(0.01)

    def delete(self, job_id: str) -> None:
        self.client.delete(self._key(job_id))

    # Unfinished jobs are counted in sorted sets (score: creation time) so the
    # gateway can enforce queue limits without scanning records.

    def _active_key(self, tenant: str | None) -> str:
        return f"{self.prefix}:active" if tenant is None else f"{self.prefix}:active:{tenant}"

    def mark_active(self, job_id: str, tenant: str) -> None:
        now = time.time()
        with self.client.pipeline() as pipe:
            pipe.zadd(self._active_key(tenant), {job_id: now})
            pipe.zadd(self._active_key(None), {job_id: now})
            pipe.execute()

    def mark_inactive(self, job_id: str, tenant: str) -> None:
        with self.client.pipeline() as pipe:
            pipe.zrem(self._active_key(tenant), job_id)
            pipe.zrem(self._active_key(None), job_id)
            pipe.execute()

    def active_count(self, tenant: str | None) -> int:
        """Count unfinished jobs of ``tenant`` (None: of everyone), forgetting entries past retention."""
        key = self._active_key(tenant)
        self.client.zremrangebyscore(key, 0, time.time() - self.retention_s)
        return int(self.client.zcard(key))
