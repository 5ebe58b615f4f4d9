"""Every error leaves as JSON `{"error": {"code", "message"}}` with the right status; never a stack trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client can act on. `code` is a stable machine-readable string."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


def validation_error(message: str) -> ApiError:
    return ApiError(422, "validation_error", message)


def timeout_error(timeout_s: float) -> ApiError:
    """504: the request's deadline (MODERATION_REQUEST_TIMEOUT_S) passed, wherever it was waiting."""
    return ApiError(504, "timeout", f"no result within {timeout_s:g} s")


class ParamError(ApiError):
    """An ApiError that names the request parameter at fault (OpenAI's `param`)."""

    def __init__(self, status: int, code: str, message: str, param: str | None,
                 headers: dict[str, str] | None = None):
        super().__init__(status, code, message, headers)
        self.param = param


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large", 415: "unsupported_media_type",
                 422: "validation_error", 429: "too_many_requests", 503: "unavailable", 504: "timeout"}
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
                 429: "rate_limit_error"}
OPENAI_PREFIX = "/v1/"  # routes whose errors leave in OpenAI's shape


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def translate(request: Request, exc: Exception) -> ApiError:
    """The one error translator: any exception a route raises -> the ApiError a client is told."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        return validation_error(_describe_validation(exc))
    if isinstance(exc, StarletteHTTPException):
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return ApiError(exc.status_code, code, message, dict(exc.headers or {}))
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return ApiError(500, "internal_error", "internal server error; see the server log")


def error_response(err: ApiError, request: Request | None = None) -> JSONResponse:
    """This service's shape: {"error": {"code", "message"}}."""
    if request is not None:
        request.state.error_code = err.code  # read by the metrics middleware
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def openai_error(err: ApiError, request: Request) -> JSONResponse:
    """OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
    request.state.error_code = err.code
    kind = _OPENAI_TYPES.get(err.status, "server_error" if err.status >= 500 else "invalid_request_error")
    body = {"error": {"message": err.message, "type": kind, "param": getattr(err, "param", None), "code": err.code}}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def render_error(request: Request, exc: Exception) -> JSONResponse:
    """Translate, then render in the shape of the route's API (OpenAI's under /v1/)."""
    err = translate(request, exc)
    render = openai_error if request.url.path.startswith(OPENAI_PREFIX) else error_response
    return render(err, request)


def install_error_handlers(app: FastAPI) -> None:
    for exc_type in (ApiError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, render_error)
