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
from starlette.exceptions import HTTPException as StarletteHTTPException

from training_core.errors import StoreUnavailable
from training_core.launchers import LauncherUnavailable

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


def describe_validation(error: RequestValidationError) -> str:
    """``body.epochs: Input should be greater than or equal to 1; …`` (inputs never echoed)."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item.get("loc", ()))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(ApiError(422, "validation_error", describe_validation(error)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(error.status_code, "http_error")
        message = error.detail if isinstance(error.detail, str) else code.replace("_", " ")
        return error_response(ApiError(error.status_code, code, message, error.headers))

    @app.exception_handler(StoreUnavailable)
    async def _store(_: Request, error: StoreUnavailable) -> JSONResponse:
        log.warning("store unavailable: %s", error)
        return error_response(
            unavailable("store_unavailable", "the database is unavailable; retry later")
        )

    @app.exception_handler(LauncherUnavailable)
    async def _launcher(_: Request, error: LauncherUnavailable) -> JSONResponse:
        log.warning("launcher unavailable: %s", error)
        return error_response(
            unavailable("launcher_unavailable", "the launcher is unavailable; retry later")
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        return error_response(ApiError(500, "internal_error", "internal error"))
