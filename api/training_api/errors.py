"""One error shape for every refusal: ``{"success": false, "error": {"code", "message"}}``.

FastAPI's own validation errors and 404/405s are reshaped too, and nothing unexpected ever
reaches a client as a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from training_core.errors import StoreUnavailable
from training_api.launchers import LauncherUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    """A refusal with an HTTP status, a stable machine-readable code and a message for people."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error.code, error.message), error.status, headers=error.headers)


def unavailable(code: str, message: str) -> ApiError:
    return ApiError(503, code, message, {"Retry-After": str(RETRY_AFTER_SECONDS)})


_HTTP_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def describe_validation(error: RequestValidationError | ValidationError) -> str:
    """``body.epochs: Input should be greater than or equal to 1; …`` (inputs never echoed)."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item.get("loc", ()))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def invalid_input(error: RequestValidationError | ValidationError) -> ApiError:
    """A request that does not match its schema (a pydantic error elsewhere is a bug: 500)."""
    return ApiError(422, "validation_error", describe_validation(error))


def as_api_error(error: Exception, where: str) -> ApiError:
    """The refusal a client sees for an exception, over HTTP and MCP alike. An outage is
    logged as a warning, anything unexpected as an error with its trace (``where``: what ran)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, RequestValidationError):
        return invalid_input(error)
    if isinstance(error, StoreUnavailable):
        log.warning("store unavailable: %s", error)
        return unavailable("store_unavailable", "the database is unavailable; retry later")
    if isinstance(error, LauncherUnavailable):
        log.warning("launcher unavailable: %s", error)
        return unavailable("launcher_unavailable", "the launcher is unavailable; retry later")
    log.error("unexpected error on %s", where, exc_info=error)
    return ApiError(500, "internal_error", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    async def _refused(request: Request, error: Exception) -> JSONResponse:
        return error_response(as_api_error(error, f"{request.method} {request.url.path}"))

    for kind in (ApiError, RequestValidationError, StoreUnavailable, LauncherUnavailable):
        app.add_exception_handler(kind, _refused)
    app.add_exception_handler(Exception, _refused)  # last: anything else is a 500, logged

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(error.status_code, "http_error")
        message = error.detail if isinstance(error.detail, str) else code.replace("_", " ")
        return error_response(ApiError(error.status_code, code, message, error.headers))
