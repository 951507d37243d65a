"""One error type for the API and one table from the core's errors to HTTP statuses."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from assistant.errors import AssistantError, ConfigError, MemoryStoreError, PackError, PromptError, StoreBusyError


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


def from_assistant_error(exc: AssistantError) -> ApiError:
    from assistant.grammar import GrammarError

    msg = str(exc)
    if isinstance(exc, StoreBusyError):  # another process (the TUI, a CLI command) is writing: try again
        return ApiError(503, msg, "server_error", code="store_busy")
    if isinstance(exc, PromptError) and ("context" in msg or "too long" in msg):
        return ApiError(400, msg, code="context_length_exceeded", param="messages")
    if isinstance(exc, PackError):
        return ApiError(404, msg, code="model_not_found", param="model")
    if isinstance(exc, ConfigError):
        return ApiError(400, msg, code="invalid_value")
    if isinstance(exc, GrammarError):
        return ApiError(400, msg, code="invalid_schema", param="response_format")
    if isinstance(exc, MemoryStoreError) and msg.startswith("no memory"):
        return ApiError(404, msg, code="not_found")
    if msg.startswith("no turn"):
        return ApiError(404, msg, code="not_found", param="completion_id")
    return ApiError(400, msg)


def as_api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AssistantError):
        return from_assistant_error(exc)
    return ApiError(500, f"internal error: {type(exc).__name__}", "server_error", "internal_error")
