"""Settings shared by the gateway and the workers, read from TUMORTRACK_* variables.

Queue timings all derive from one number, the hard job time limit T. The
soft limit is 0.9 T, so the task gets a chance to fail cleanly. The Redis
visibility timeout is 1.1 T, so a message is redelivered only after its
worker died, not while a long job is still running.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lesions.dicomweb_servers import DicomwebServer, check_server_names


class Settings(BaseSettings):
    # Errors never quote values, because some settings hold API keys and passwords.
    model_config = SettingsConfigDict(env_prefix="TUMORTRACK_", extra="ignore", hide_input_in_errors=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker and job records.")
    store_dir: Path = Field(Path("var/store"), description="Shared folder for uploads and artifacts.")
    checkpoint_dir: Path | None = Field(None, description="LesionLocatorCheckpoint folder; unset leaves only the classical engine.")
    checkpoint_folds: str | None = Field(None, description="Comma-separated folds to use, e.g. '0,1'; unset uses every fold present.")
    default_engine: str | None = Field(None, description="Engine for jobs that name none; unset picks lesionlocator when a worker has it ready, else classical.")
    key_prefix: str = Field("tumortrack", description="Prefix of every Redis key, so several deployments can share one Redis.")
    queue: str = Field("tumortrack", description="Celery queue the gateway sends to and the workers consume.")

    api_keys: str | None = Field(None, description="Comma-separated tenant=key pairs; unset runs the service open (logged as a warning).")
    max_active_jobs_per_tenant: int = Field(50, description="Unfinished jobs one tenant may have; more get 429.")
    max_active_jobs_total: int = Field(500, description="Unfinished jobs of all tenants together; more get 429.")
    max_upload_bytes: int = Field(4 * 1024**3, description="Largest accepted request body; larger ones get 413.")
    job_time_limit_s: int = Field(3600, description="Hard time limit of one job in seconds.")
    artifact_retention_s: int = Field(7 * 24 * 3600, description="How long uploads and artifacts are kept before they are purged, in seconds.")
    job_retention_s: int = Field(30 * 24 * 3600, description="How long job records are kept in Redis, in seconds; keep it above artifact_retention_s so a record can say its files expired.")
    purge_interval_s: float = Field(300.0, description="How often each worker looks for expired job files, in seconds.")
    worker_heartbeat_s: float = Field(5.0, description="How often a worker publishes that it is alive, in seconds.")

    # DICOMweb: jobs name one of these servers; clients never send a URL.
    dicomweb_servers: dict[str, DicomwebServer] = Field(default_factory=dict, description="JSON object: server name -> {url, username and password or token, timeout_s}.")

    @field_validator("dicomweb_servers")
    @classmethod
    def _check_dicomweb_server_names(cls, servers: dict[str, DicomwebServer]) -> dict[str, DicomwebServer]:
        return check_server_names(servers)

    @property
    def soft_time_limit_s(self) -> int:
        return int(self.job_time_limit_s * 0.9)

    @property
    def visibility_timeout_s(self) -> int:
        return int(self.job_time_limit_s * 1.1)

    def api_key_tenants(self) -> dict[str, str]:
        """Return {key: tenant} from ``api_keys``; empty when the service runs open."""
        pairs = {}
        for item in (self.api_keys or "").split(","):
            if not item.strip():
                continue
            tenant, separator, key = item.strip().partition("=")
            if not separator or not tenant or not key:
                raise ValueError("TUMORTRACK_API_KEYS must be comma-separated tenant=key pairs")
            pairs[key] = tenant
        return pairs

    def folds(self) -> tuple[int, ...] | None:
        if not self.checkpoint_folds:
            return None
        return tuple(int(part) for part in self.checkpoint_folds.split(",") if part.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()
