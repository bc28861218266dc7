"""Response models of the API, per resource."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from lesions.jobs import JobError, JobRecord, JobState, StoredDicom


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. 'invalid_input', 'prompt_outside_image'.")
    message: str = Field(description="What is wrong and what to do, for a person.")
    field: str | None = Field(None, description="The request field the error is about, e.g. 'prompts.lesions[0].box'.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class JobLinks(BaseModel):
    self: str


class JobAccepted(BaseModel):
    id: str
    state: JobState
    links: JobLinks


class ArtifactOut(BaseModel):
    name: str
    media_type: str
    size: int = Field(description="Size in bytes.")
    url: str


class JobOut(BaseModel):
    id: str
    kind: str
    state: JobState
    stage: str | None
    progress: float = Field(ge=0.0, le=1.0)
    engine: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expired_at: datetime | None = Field(None, description="Set when the job's files were purged after the retention time.")
    error: JobError | None
    warnings: list[str]
    artifacts: list[ArtifactOut]
    dicomweb_stored: list[StoredDicom] = Field(default_factory=list, description="Artifacts the worker stored to the job's DICOMweb server (store_seg), with their UIDs there.")
    links: JobLinks

    @classmethod
    def from_record(cls, record: JobRecord) -> "JobOut":
        base = f"/v1/jobs/{record.id}"
        return cls(
            **record.model_dump(include={"id", "kind", "state", "stage", "progress", "engine", "created_at", "updated_at", "started_at", "finished_at", "expired_at", "error", "warnings", "dicomweb_stored"}),
            artifacts=[ArtifactOut(**artifact.model_dump(), url=f"{base}/artifacts/{artifact.name}") for artifact in record.artifacts],
            links=JobLinks(self=base),
        )


class EngineWorkerOut(BaseModel):
    worker: str
    ready: bool
    device: str
    detail: str
    folds: list[int]
    checkpoint: str | None
    tracking: str = Field("classical", description="How tracking jobs with this engine find lesions in a follow-up on this worker: 'model' (the engine's own tracking model, LesionLocatorTrack) or 'classical' (registration, then segmentation with the engine).")
    tracking_detail: str = Field("", description="Why tracking is classical, or which folds the tracking model has.")


class EngineOut(BaseModel):
    name: str
    ready: bool = Field(description="True when at least one live worker can run this engine.")
    default: bool
    model_tracking: bool = Field(False, description="True when a live worker tracks lesions with this engine's own tracking model.")
    workers: list[EngineWorkerOut]


class EnginesOut(BaseModel):
    engines: list[EngineOut]


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    redis: str
    workers: int
    detail: str | None = None
