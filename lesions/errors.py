"""Exception vocabulary of the domain layer.

The gateway turns an InputError into a 4xx naming the field; the worker turns
it into a failed job with the same code and message. Anything else that goes
wrong is an internal error: logged with its traceback, reported to the client
as a generic message.
"""


class InputError(ValueError):
    """The client sent something unusable; tell them which field and why."""

    def __init__(self, field: str, message: str, *, code: str = "invalid_input", status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.code = code
        self.status = status

    def as_dict(self) -> dict:
        return {"code": self.code, "field": self.field, "message": self.message}


class EngineUnavailable(RuntimeError):
    """The requested engine cannot run on this worker (no checkpoint, broken files)."""
