"""Typed views of the service's JSON responses, kept to the fields a client acts on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Artifact:
    """One result file of a job, downloadable from ``url`` (a path on the service)."""

    name: str
    media_type: str
    size: int
    url: str


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a stable ``code`` and a message for a person."""

    code: str
    message: str


@dataclass(frozen=True)
class SubmittedJob:
    """The service's 202 response to a POST; ``replayed`` is true when an earlier request with the same Idempotency-Key created the job."""

    id: str
    state: str
    replayed: bool


@dataclass(frozen=True)
class Job:
    """A job's state as ``GET /v1/jobs/{id}`` returns it."""

    id: str
    kind: str
    state: str
    stage: str | None
    progress: float
    engine: str
    error: JobError | None
    warnings: list[str] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Job:
        error = body.get("error")
        return cls(
            id=body["id"],
            kind=body.get("kind", ""),
            state=body["state"],
            stage=body.get("stage"),
            progress=float(body.get("progress") or 0.0),
            engine=body.get("engine", ""),
            error=JobError(code=error.get("code", ""), message=error.get("message", "")) if error else None,
            warnings=list(body.get("warnings") or []),
            artifacts=[Artifact(name=a["name"], media_type=a.get("media_type", ""), size=int(a.get("size", 0)), url=a["url"]) for a in body.get("artifacts") or []],
        )
