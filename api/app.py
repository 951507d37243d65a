"""``make_app(assistant)``: the FastAPI app, used by ``serve``, the tests and the benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from assistant.errors import AssistantError, ConfigError


def make_app(assistant: Any, *, keys_path: Path | None = None, audit_path: Path | None = None) -> Any:
    """The FastAPI app around ``assistant`` (an ``assistant.core.Assistant``)."""
    from personalization.learner import attach

    attach(assistant)  # feedback through the API is learned from like the TUI's
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from api import chat, routes
    from api import keys as api_keys
    from api.auth import Audit, GuardMiddleware
    from api.deps import Ctx
    from api.errors import ApiError, error_response, from_assistant_error
    from assistant import paths

    keys_path = Path(keys_path) if keys_path else api_keys.keys_file()
    audit = Audit(Path(audit_path) if audit_path else paths.api_dir() / "audit.log")
    ctx = Ctx(assistant)

    @asynccontextmanager
    async def lifespan(_app: Any):
        yield
        ctx.worker.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="personal assistant", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.state.assistant = assistant
    app.state.worker = ctx.worker

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(AssistantError)
    async def _assistant_error(_request: Request, exc: AssistantError):
        return error_response(from_assistant_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(ApiError(422, f"invalid request: {loc or 'body'}: {first.get('msg', 'wrong type')}",
                                       code="invalid_type", param=loc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(exc.status_code, str(exc.detail), type_, code=str(exc.status_code)))

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception):
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}", "server_error", "internal_error"))

    app.include_router(chat.router)
    app.include_router(routes.router)
    app.add_middleware(GuardMiddleware, keys_path=keys_path, audit=audit, max_body=assistant.settings.api.max_body_bytes)
    return app


def serve(settings: Any, host: str | None = None, port: int | None = None, allow_remote: bool = False,
          progress: Any = None) -> int:
    """Load the model, then serve until interrupted (uvicorn)."""
    import uvicorn

    from api.auth import is_loopback
    from assistant.core import Assistant

    host = host or settings.api.host
    port = settings.api.port if port is None else port
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(f"refusing to serve on {host}: only literal loopback addresses (127.0.0.1, ::1, localhost) "
                          "unless you add --allow-remote")
    from personalization.learner import Learner

    assistant = Assistant(settings, progress=progress, learner=Learner)
    _ = assistant.engine  # load now, so the first request is not slow
    app = make_app(assistant)
    # Learning rounds start by themselves once enough feedback has gathered and users are idle.
    assistant.learner.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        assistant.learner.stop()
    return 0
