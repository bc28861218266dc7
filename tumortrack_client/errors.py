"""Exceptions the client raises, one class per thing a caller handles differently."""

from __future__ import annotations


class TumorTrackError(Exception):
    """Base class of every error this package raises."""


class InputFileError(TumorTrackError):
    """A local input (image, folder, prompt file, mask) is missing or of a kind the API does not take."""


class ApiError(TumorTrackError):
    """The service rejected a request with a 4xx or 5xx status that is not worth retrying.

    ``code``, ``message`` and ``field`` come from the service's error body
    ``{"error": {"code", "message", "field"}}`` when it sent one.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        where = f" (field {field})" if field else ""
        super().__init__(f"HTTP {status} {code}{where}: {message}")


class ServiceUnavailableError(TumorTrackError):
    """The service stayed unreachable or kept returning 429/503 after every retry."""


class WaitTimeoutError(TumorTrackError):
    """A job did not finish within the time the caller allowed."""
