"""One error type for the API and one table from the core's errors to HTTP statuses."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from assistant.errors import (
    AssistantError,
    ConfigError,
    ContextTooLongError,
    LockedError,
    NotFoundError,
    PackError,
    StoreBusyError,
    TurnNotFoundError,
)


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse(error_body(exc.message, exc.type, exc.code, exc.param), status_code=exc.status,
                        headers=headers)


def unsupported(field: str, why: str = "") -> ApiError:
    """A field this server does not implement: a 400 that names it (never silently ignored)."""
    return ApiError(400, f"the field {field!r} is not supported by this server" + (f": {why}" if why else ""),
                    code="unsupported_parameter", param=field)


def _statuses() -> list[tuple[type[AssistantError], int, str | None, str | None]]:
    """The one table from the core's error types to (HTTP status, OpenAI code, param); first match wins."""
    from assistant.grammar import GrammarError

    return [
        (ContextTooLongError, 400, "context_length_exceeded", "messages"),
        (TurnNotFoundError, 404, "not_found", "completion_id"),
        (NotFoundError, 404, "not_found", None),
        (PackError, 404, "model_not_found", "model"),
        (GrammarError, 400, "invalid_schema", "response_format"),
        (ConfigError, 400, "invalid_value", None),
        (StoreBusyError, 503, "store_busy", None),
        (LockedError, 503, "locked", None),
    ]


def from_assistant_error(exc: AssistantError) -> ApiError:
    for kind, status, code, param in _statuses():
        if isinstance(exc, kind):
            return ApiError(status, str(exc), "server_error" if status >= 500 else "invalid_request_error", code, param)
    return ApiError(400, str(exc))


def as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AssistantError):
        return from_assistant_error(exc)
    return ApiError(500, f"internal error: {type(exc).__name__}", "server_error", "internal_error")
