"""Turn every error into a JSON body ``{"error": {"code", "message", "field"}}``.

Client errors keep their status and name the field. Anything unexpected is
logged with its traceback and the client gets a generic 500 without the
exception text, because that text could carry paths or patient data.
"""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from kombu.exceptions import OperationalError
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from lesions.errors import InputError

logger = logging.getLogger("tumortrack.gateway")


class ApiError(Exception):
    """An HTTP error with a code, a message and optionally the field it is about."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def error_response(status: int, code: str, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message, "field": field}}, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    # Starlette's 405 names only the methods of the first route matching the
    # path; GET and DELETE on one path are separate routes here.
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        logger.info("rejected %s %s status=%d code=%s", request.method, request.url.path, error.status, error.code)
        return error_response(error.status, error.code, error.message, error.field, error.headers)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, error: InputError):
        # The code and field are enough to count and trace rejections; the
        # message can quote client data, so it stays out of the log.
        logger.info("rejected %s %s status=%d code=%s field=%s", request.method, request.url.path, error.status, error.code, error.field)
        return error_response(error.status, error.code, error.message, error.field)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
        return error_response(422, "invalid_input", first.get("msg", "invalid value"), ".".join(location) or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        headers = getattr(error, "headers", None)
        if error.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(error.status_code, codes.get(error.status_code, "http_error"), str(error.detail), None, headers)

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(OperationalError)
    async def _broker_down(request: Request, error: Exception):
        logger.warning("Redis unavailable on %s %s: %s", request.method, request.url.path, type(error).__name__)
        return error_response(503, "service_unavailable", "The job queue is unavailable right now; retry in a few seconds.", None, {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "The request failed because of an internal error; the operator can find the details in the gateway log.")
