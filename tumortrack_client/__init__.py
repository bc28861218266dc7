"""Python client and command line of the TumorTrack lesion segmentation and tracking service."""

from tumortrack_client.client import API_KEY_ENV, DEFAULT_URL, URL_ENV, TumorTrackClient, new_idempotency_key
from tumortrack_client.errors import ApiError, InputFileError, ServiceUnavailableError, TumorTrackError, WaitTimeoutError
from tumortrack_client.models import Artifact, Job, JobError, SubmittedJob
from tumortrack_client.retry import RetryPolicy

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_URL",
    "URL_ENV",
    "ApiError",
    "Artifact",
    "InputFileError",
    "Job",
    "JobError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "SubmittedJob",
    "TumorTrackClient",
    "TumorTrackError",
    "WaitTimeoutError",
    "new_idempotency_key",
]
