"""One error shape for every 4xx and 5xx: {"error": {"code", "message"}}.

ApiError(status, code, message, headers=None): raise it from any route or dependency.
error_response(status, code, message, headers=None, **extra) -> JSONResponse.
install_error_handlers(app): ApiError, SubmitError, FastAPI's validation errors (422
"validation_error", listing at most MAX_LISTED_ERRORS with their count), Postgres unreachable
(503 "database_unavailable"), Starlette's HTTP errors and anything unexpected (500 "internal_error").
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.jobs import SubmitError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # what a 503 tells clients to wait
IN_PROGRESS_RETRY_AFTER_S = 1  # what idempotency_in_progress tells clients to wait
MAX_LISTED_ERRORS = 20  # validation errors listed in an answer (their count is given too)
MAX_LOC_CHARS = 100  # of each part of an error's location (unknown field names come from clients)
# HTTP status of each submit error code; the rest are 422.
SUBMIT_STATUS = {
    "idempotency_conflict": 409,
    "idempotency_in_progress": 409,
    "queue_unavailable": 503,
    "storage_unavailable": 503,
}
# Codes for Starlette's own HTTP errors (unknown route, wrong method, ...).
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An HTTP error with a stable machine code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({**error_body(code, message), **extra}, status_code=status, headers=headers)


def submit_error_response(exc: SubmitError) -> JSONResponse:
    status = SUBMIT_STATUS.get(exc.code, 422)
    headers = None
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    elif exc.code == "idempotency_in_progress":
        headers = {"Retry-After": str(IN_PROGRESS_RETRY_AFTER_S)}
    return error_response(status, exc.code, exc.message, headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict], int]:
    """A readable message, the first MAX_LISTED_ERRORS errors without their inputs (they may hold
    images), and the number of errors."""
    errors = exc.errors()
    details = [
        {
            "loc": [str(part)[:MAX_LOC_CHARS] for part in err.get("loc", ())],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in errors[:MAX_LISTED_ERRORS]
    ]
    message = "; ".join(f"{'.'.join(d['loc']) or 'body'}: {d['msg']}" for d in details[:5])
    if len(errors) > 5:
        message += f" (and {len(errors) - 5} more)"
    return message or "invalid request", details, len(errors)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.code in ("unauthorized", "rate_limited"):
            request.app.state.metrics.rejected(exc.code)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(SubmitError)
    async def on_submit_error(request: Request, exc: SubmitError) -> JSONResponse:
        return submit_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details, count = _validation_message(exc)
        return error_response(422, "validation_error", message, details=details, error_count=count)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def on_database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable", extra={"path": request.url.path, "error": type(exc).__name__})
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        return error_response(503, "database_unavailable", "the database is unavailable; retry later", headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error" if exc.status_code < 500 else "internal_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"method": request.method, "path": request.url.path})
        return error_response(500, "internal_error", "internal server error")
