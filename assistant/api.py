"""The local API: an OpenAI-compatible server, on loopback by default.

Endpoints (every one but ``/health`` needs ``Authorization: Bearer KEY``; see ``api_keys``):

    GET    /v1/models                 the domain packs, as models            (any valid key)
    POST   /v1/chat/completions       chat, streaming (SSE) or not           (scope chat)
    GET    /v1/memories?user=&q=&k=   list, or search by meaning             (scope memory:read)
    POST   /v1/memories               {text, kind, user}                     (scope memory:write)
    DELETE /v1/memories/{id}?user=    forget one memory                      (scope memory:write)
    POST   /v1/feedback               {completion_id, rating|correction, user} (scope feedback)

Choices made here:

* ``model`` is a pack id. ``user`` picks whose memory, adapter and journal apply (default
  ``chat.user``).
* A request is stateless, as in OpenAI's API: earlier user/assistant pairs in ``messages`` become
  the chat's history, the last message must be the user's and is the new turn. Client ``system``
  messages are appended to the pack's persona (the pack's safety rules still follow them).
* Chat recalls (and learns) memories only for keys that hold ``memory:read``; the answer then
  lists the memories it used in an extra ``memories`` field.
* Every model, memory-store and journal call that may touch the model runs on one worker thread
  (generation is serial anyway: the engine has one lock), so the event loop never blocks and
  requests queue in arrival order.
* Completion ids are ``chatcmpl-<turn id>``. A streamed answer's turn id is only known at its end,
  so a stream gets its own id; its last chunk carries ``turn_id``, and ``/v1/feedback`` accepts the
  stream id (while the server runs), ``chatcmpl-<turn id>`` or the bare turn id.
* Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``.
* The audit log (``api/audit.log``, JSON lines) records app, method, endpoint, status, time and
  duration; never message text or query strings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, StreamingResponse

from assistant import api_keys, paths
from assistant.errors import AssistantError, ConfigError, MemoryStoreError, PackError, PromptError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


# ------------------------------------------------------------------------------ errors
class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None):
    return JSONResponse(body, status_code=status, headers=headers)


def _error_response(exc: ApiError):
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return _json_response(exc.status, error_body(exc.message, exc.type, exc.code, exc.param), headers)


def _from_assistant_error(exc: AssistantError) -> ApiError:
    msg = str(exc)
    if isinstance(exc, PromptError) and ("context" in msg or "too long" in msg):
        return ApiError(400, msg, code="context_length_exceeded", param="messages")
    if isinstance(exc, PackError):
        return ApiError(404, msg, code="model_not_found", param="model")
    if isinstance(exc, ConfigError):
        return ApiError(400, msg, code="invalid_value")
    if isinstance(exc, MemoryStoreError) and msg.startswith("no memory"):
        return ApiError(404, msg, code="not_found")
    if msg.startswith("no turn"):
        return ApiError(404, msg, code="not_found", param="completion_id")
    return ApiError(400, msg)


# ------------------------------------------------------------------------------ request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ChatRequest(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | int | None = Field(default=None, ge=0, le=5)
    top_p: float | int | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None


class MemoryRequest(_Body):
    text: str
    kind: Literal["fact", "preference", "episode"] = "fact"
    user: str | None = None


class FeedbackRequest(_Body):
    completion_id: str
    rating: int | None = None
    correction: str | None = None
    user: str | None = None


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return ApiError(422, f"invalid request: {loc or 'body'}: {first.get('msg', 'wrong type')}", code="invalid_type",
                    param=loc or None)


async def _parse(request: Any, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from exc


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, "only text content parts are supported", param="messages")
        parts.append(part["text"])
    return "".join(parts)


def split_messages(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]], str]:
    """OpenAI messages -> (client system text, history pairs, the new user message)."""
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if m.role in ("system", "developer"):
            system.append(_text_of(m.content))
        elif m.role in ("user", "assistant"):
            turns.append((m.role, _text_of(m.content)))
        else:
            raise ApiError(400, f"messages[{i}]: role {m.role!r} is not supported (use system, user or assistant)",
                           param=f"messages.{i}.role")
    if not turns or turns[-1][0] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    history: list[tuple[str, str]] = []
    pending_user: str | None = None
    for role, text in turns[:-1]:
        if role == "user":
            if pending_user is not None:  # two user messages in a row: join them
                pending_user += "\n" + text
            else:
                pending_user = text
        else:
            history.append((pending_user or "", text))
            pending_user = None
    last = turns[-1][1]
    if pending_user is not None:
        last = pending_user + "\n" + last
    return "\n".join(s for s in system if s.strip()), history, last


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _memories(reply: Any) -> list[dict[str, Any]]:
    return [
        {"id": m.short_id, "memory_id": m.memory_id, "kind": m.kind, "text": m.text, "citation": m.citation or None}
        for m in reply.memories
    ]


def _memory_json(m: Any) -> dict[str, Any]:
    out = {"id": m.id, "object": "memory", "text": m.text, "kind": m.kind, "created": m.created, "pack": m.pack or None}
    if m.similarity is not None:
        out["similarity"] = round(m.similarity, 4)
    return out


# ------------------------------------------------------------------------------ middleware
ROUTE_SCOPES: list[tuple[str, str, str | None, bool]] = [
    # method, path, scope (None: any valid key), prefix match
    ("GET", "/v1/models", None, False),
    ("POST", "/v1/chat/completions", "chat", False),
    ("GET", "/v1/memories", "memory:read", False),
    ("POST", "/v1/memories", "memory:write", False),
    ("DELETE", "/v1/memories/", "memory:write", True),
    ("POST", "/v1/feedback", "feedback", False),
]
PUBLIC = {"/health"}


def _needed_scope(method: str, path: str) -> str | None:
    for m, p, scope, prefix in ROUTE_SCOPES:
        if method == m and (path.startswith(p) if prefix else path.rstrip("/") == p):
            return scope
    return None


class Audit:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, **entry: Any) -> None:
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError:
                pass  # auditing must not take the API down


class GuardMiddleware:
    """Body size limit, key check and scopes, and the audit log, in one pure ASGI layer."""

    def __init__(self, app: Any, *, keys_path: Path, audit: Audit, max_body: int) -> None:
        self.app, self.keys_path, self.audit, self.max_body = app, keys_path, audit, max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        method, path = scope["method"], scope["path"]
        state = {"status": 0, "app": None}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            await send(message)

        async def reject(exc: ApiError) -> None:
            await _error_response(exc)(scope, receive, send_wrapper)

        try:
            if path in PUBLIC:
                await self.app(scope, receive, send_wrapper)
                return
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await reject(ApiError(413, f"the request body is over {self.max_body} bytes", code="request_too_large"))
                return
            auth = headers.get("authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            found = api_keys.check(token, path=self.keys_path) if token else None
            if found is None:
                await reject(ApiError(401, "a valid API key is needed: send 'Authorization: Bearer KEY' "
                                           "(create one with `assistant api-key create NAME --scopes ...`)",
                                      "authentication_error", "invalid_api_key"))
                return
            app_name, scopes = found
            state["app"] = app_name
            needed = _needed_scope(method, path)
            if needed is not None and needed not in scopes:
                await reject(ApiError(403, f"the key of {app_name!r} lacks the scope {needed!r}",
                                      "permission_error", "insufficient_scope"))
                return
            # Read the body here (bounded), then replay it to the app.
            chunks: list[bytes] = []
            size = 0
            more = True
            while more and method in ("POST", "PUT", "PATCH", "DELETE"):
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body = message.get("body", b"")
                size += len(body)
                if size > self.max_body:
                    await reject(ApiError(413, f"the request body is over {self.max_body} bytes", code="request_too_large"))
                    return
                chunks.append(body)
                more = message.get("more_body", False)
            data = b"".join(chunks)
            replayed = False

            async def replay() -> dict[str, Any]:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": data, "more_body": False}
                return await receive()

            scope.setdefault("state", {})
            scope["state"]["app_name"] = app_name
            scope["state"]["scopes"] = scopes
            await self.app(scope, replay, send_wrapper)
        finally:
            self.audit.write(
                time=round(time.time(), 3), app=state["app"], method=method, endpoint=path,
                status=state["status"] or 500, ms=round((time.perf_counter() - t0) * 1000, 1),
            )


# ------------------------------------------------------------------------------ the app
class _Worker:
    """One thread for everything that touches the model, the memory stores or adapters."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assistant-api")

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


def make_app(assistant: Any, *, keys_path: Path | None = None, audit_path: Path | None = None) -> FastAPI:
    """The FastAPI app around ``assistant`` (an ``assistant.core.Assistant``)."""
    from contextlib import asynccontextmanager


    settings = assistant.settings
    keys_path = Path(keys_path) if keys_path else api_keys.keys_file()
    audit = Audit(Path(audit_path) if audit_path else paths.api_dir() / "audit.log")
    worker = _Worker()
    stream_ids: OrderedDict[str, tuple[str, str]] = OrderedDict()  # stream id -> (user, turn id)
    ids_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(_app: Any):
        yield
        worker.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="personal assistant", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.assistant = assistant
    app.state.worker = worker

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(AssistantError)
    async def _assistant_error(_request: Request, exc: AssistantError):
        return _error_response(_from_assistant_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error_response(ApiError(422, f"invalid request: {loc or 'body'}: {first.get('msg', 'wrong type')}",
                                        code="invalid_type", param=loc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(ApiError(exc.status_code, str(exc.detail), type_, code=str(exc.status_code)))

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception):
        return _error_response(ApiError(500, f"internal error: {type(exc).__name__}", "server_error", "internal_error"))

    def _user(name: str | None) -> str:
        try:
            return paths.check_user_name(name or settings.chat.user)
        except ConfigError as exc:
            raise ApiError(400, str(exc), code="invalid_user", param="user") from exc

    def _pack(model: str) -> Any:
        packs = assistant.catalog.packs
        if model not in packs:
            raise ApiError(404, f"the model {model!r} does not exist: use a pack id ({', '.join(sorted(packs))})",
                           code="model_not_found", param="model")
        return packs[model]

    def _store(user: str) -> Any:
        store = assistant.memory(user)
        if store is None:
            raise ApiError(409, "memory is switched off in the settings (memory.enabled)", code="memory_disabled")
        return store

    # ---------------------------------------------------------------- routes
    @app.get("/health")
    async def health():
        return {"status": "ok", "model_loaded": assistant.engine_loaded}

    @app.get("/v1/models")
    async def models():
        packs = await worker.run(lambda: assistant.catalog.packs)
        return {
            "object": "list",
            "data": [
                {"id": p.id, "object": "model", "created": 0, "owned_by": p.source, "name": p.name,
                 "description": p.description, "version": p.version}
                for p in sorted(packs.values(), key=lambda p: p.id)
            ],
        }

    def _start_chat(req: ChatRequest, scopes: list[str]) -> tuple[Any, str, dict[str, Any]]:
        if req.n != 1:
            raise ApiError(400, "only n=1 is supported", param="n")
        pack = _pack(req.model)
        user = _user(req.user)
        system, history, message = split_messages(req.messages)
        chat = assistant.chat(user, pack.id, use_memory="memory:read" in scopes, source="api")
        if system:
            chat.pack = dataclasses.replace(pack, persona=pack.persona.strip() + "\n\n" + system)
        chat.history = history
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        overrides = {
            "temperature": req.temperature, "top_p": req.top_p, "seed": req.seed,
            "max_new_tokens": req.max_completion_tokens or req.max_tokens,
        }
        if stop:
            overrides["stop"] = stop
        return chat, message, overrides

    def _usage(reply: Any) -> dict[str, int]:
        p, c = reply.stats.prompt_tokens, reply.stats.completion_tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await _parse(request, ChatRequest)
        scopes = request.state.scopes
        if req.stream:
            return await _stream(request, req, scopes)

        def run() -> Any:
            chat, message, overrides = _start_chat(req, scopes)
            reply = chat.send(message, **overrides)
            reply.collect()
            return reply

        reply = await worker.run(run)
        body: dict[str, Any] = {
            "id": f"chatcmpl-{reply.turn_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "system_fingerprint": None,
            "choices": [{
                "index": 0, "message": {"role": "assistant", "content": reply.text},
                "finish_reason": _finish(reply.stats.finish_reason), "logprobs": None,
            }],
            "usage": _usage(reply),
            "turn_id": reply.turn_id,
        }
        if "memory:read" in scopes:
            body["memories"] = _memories(reply)
        return body

    async def _stream(request: Request, req: ChatRequest, scopes: list[str]):
        from assistant.engine import CancelToken

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = CancelToken()
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731

        def run() -> None:
            try:
                if cancel.cancelled:
                    put(("error", ApiError(499, "cancelled")))
                    return
                chat, message, overrides = _start_chat(req, scopes)
                reply = chat.send(message, cancel=cancel, **overrides)
                for chunk in reply:
                    put(("chunk", chunk))
                put(("done", reply))
            except BaseException as exc:  # noqa: BLE001 - reported to the client
                put(("error", exc))

        future = worker.run(run)
        task = asyncio.ensure_future(future)
        first = await queue.get()
        if first[0] == "error":
            await task
            exc = first[1]
            if isinstance(exc, ApiError):
                raise exc
            if isinstance(exc, AssistantError):
                raise _from_assistant_error(exc)
            raise exc
        stream_id = "chatcmpl-" + uuid.uuid4().hex[:16]
        created = int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            body = {"id": stream_id, "object": "chat.completion.chunk", "created": created, "model": req.model,
                    "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def events():
            item = first
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    kind, value = item
                    if kind == "chunk":
                        if value:
                            yield chunk({"content": value})
                    elif kind == "done":
                        reply = value
                        with ids_lock:
                            stream_ids[stream_id] = (_user(req.user), reply.turn_id)
                            while len(stream_ids) > 10000:
                                stream_ids.popitem(last=False)
                        extra: dict[str, Any] = {"turn_id": reply.turn_id}
                        if "memory:read" in scopes:
                            extra["memories"] = _memories(reply)
                        yield chunk({}, _finish(reply.stats.finish_reason), **extra)
                        if include_usage:
                            body = {"id": stream_id, "object": "chat.completion.chunk", "created": created,
                                    "model": req.model, "choices": [], "usage": _usage(reply)}
                            yield f"data: {json.dumps(body)}\n\n"
                        break
                    else:  # an error after the stream started: report it in-band
                        exc = value
                        err = _from_assistant_error(exc) if isinstance(exc, AssistantError) else \
                            ApiError(500, f"internal error: {type(exc).__name__}", "server_error")
                        yield f"data: {json.dumps(error_body(err.message, err.type, err.code, err.param))}\n\n"
                        break
                    item = await queue.get()
                yield "data: [DONE]\n\n"
            finally:
                cancel.cancel()  # no-op when finished; stops generation when the client went away

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ---------------------------------------------------------------- memories
    @app.get("/v1/memories")
    async def list_memories(user: str | None = None, q: str | None = None, k: int = 10):
        uname = _user(user)
        if not 1 <= k <= 100:
            raise ApiError(422, "k must be between 1 and 100", code="invalid_value", param="k")

        def run() -> list[Any]:
            store = _store(uname)
            return store.search(q, k=k) if q else store.list()

        found = await worker.run(run)
        return {"object": "list", "user": uname, "data": [_memory_json(m) for m in found]}

    @app.post("/v1/memories", status_code=201)
    async def add_memory(request: Request):
        req = await _parse(request, MemoryRequest)
        uname = _user(req.user)
        if not req.text.strip():
            raise ApiError(400, "the memory text is empty", param="text")

        def run() -> Any:
            from memory.extract import _attribute

            return _store(uname).add(req.text, req.kind, attribute=_attribute(req.text))

        return _memory_json(await worker.run(run))

    @app.delete("/v1/memories/{memory_id}")
    async def forget_memory(memory_id: str, user: str | None = None):
        uname = _user(user)
        await worker.run(lambda: _store(uname).forget([memory_id]))
        return {"id": memory_id, "object": "memory.deleted", "deleted": True}

    # ---------------------------------------------------------------- feedback
    @app.post("/v1/feedback")
    async def feedback(request: Request):
        from starlette.concurrency import run_in_threadpool

        req = await _parse(request, FeedbackRequest)
        if req.rating is None and req.correction is None:
            raise ApiError(400, "give a rating (+1 or -1), a correction, or both", param="rating")
        if req.rating is not None and req.rating not in (1, -1):
            raise ApiError(422, "rating must be 1 or -1", code="invalid_value", param="rating")
        if req.correction is not None and not req.correction.strip():
            raise ApiError(400, "the correction is empty", param="correction")
        uname = _user(req.user)
        cid = req.completion_id.strip()
        with ids_lock:
            aliased = stream_ids.get(cid)
        if aliased is not None:
            uname, turn_id = (req.user and uname) or aliased[0], aliased[1]
        else:
            turn_id = cid[len("chatcmpl-"):] if cid.startswith("chatcmpl-") else cid

        def run() -> dict[str, Any]:
            journal = assistant.journal(uname)
            turn = journal.turn(turn_id)
            if turn is None:
                raise ApiError(404, f"no completion {cid!r} in {uname}'s journal", code="not_found",
                               param="completion_id")
            if req.rating is not None:
                journal.rate(turn_id, req.rating)
            if req.correction is not None:
                journal.correct(turn_id, req.correction)
            assistant.notify_turn(uname, turn.pack)
            return {"object": "feedback", "completion_id": f"chatcmpl-{turn_id}", "turn_id": turn_id, "user": uname,
                    "rating": req.rating, "correction": req.correction is not None}

        return await run_in_threadpool(run)

    app.add_middleware(GuardMiddleware, keys_path=keys_path, audit=audit, max_body=settings.api.max_body_bytes)
    return app


def serve(settings: Any, host: str | None = None, port: int | None = None, allow_remote: bool = False,
          progress: Any = None) -> int:
    """Load the model, then serve until interrupted (uvicorn)."""
    import uvicorn

    from assistant.core import Assistant

    host = host or settings.api.host
    port = settings.api.port if port is None else port
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(f"refusing to serve on {host}: only loopback (127.0.0.1) unless you add --allow-remote")
    assistant = Assistant(settings, progress=progress)
    _ = assistant.engine  # load now, so the first request is not slow
    app = make_app(assistant)
    # Learning rounds start by themselves once enough feedback has gathered and users are idle.
    assistant.learner.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        assistant.learner.stop()
    return 0
