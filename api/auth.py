"""Who may call: keys and scopes, the users a key is bound to, the audit log, loopback hosts.

Every request but ``/health`` needs ``Authorization: Bearer KEY``. A key carries scopes (what it
may do) and users (for whom: one user, a named set, or ``*``). A request for a user outside the
key's set is a 403, and the audit line records the refused user. Keys are created and widened
only with the CLI (``assistant api-key``); no endpoint changes keys.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from pathlib import Path
from typing import Any, MutableMapping

from api import keys as api_keys
from api.errors import ApiError, error_response

ROUTE_SCOPES: list[tuple[str, str, str | None, bool]] = [
    # method, path, scope (None: any valid key), prefix match
    ("GET", "/v1/models", None, True),
    ("POST", "/v1/chat/completions", "chat", False),
    ("POST", "/v1/completions", "chat", False),
    ("POST", "/v1/embeddings", "chat", False),
    ("GET", "/v1/memories", "memory:read", False),
    ("POST", "/v1/memories", "memory:write", False),
    ("DELETE", "/v1/memories/", "memory:write", True),
    ("POST", "/v1/feedback", "feedback", False),
]
PUBLIC = {"/health"}


def is_loopback(host: str) -> bool:
    """Only literal loopback addresses (127.0.0.0/8, ::1) and the name 'localhost'.

    A host *name* such as "127.example.com" is not loopback, whatever it starts with."""
    host = (host or "").strip()
    if host.lower() == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def user_folder(name: str) -> str:
    """The folder name for an app's user id (see ``api_keys.user_folder``); a bad id is a 400."""
    from assistant.errors import ConfigError

    try:
        return api_keys.user_folder(name)
    except ConfigError as exc:
        raise ApiError(400, str(exc), code="invalid_user", param="user") from exc


def resolve_user(state: Any, name: str | None, default_user: str) -> str:
    """The folder name of the user a request acts for, checked against the key's users."""
    allowed = list(getattr(state, "key_users", None) or [default_user])
    if name is None:
        if "*" not in allowed and len(allowed) == 1:
            user = allowed[0]  # a key bound to one user acts for that user by default
        else:
            user = default_user
    else:
        user = user_folder(name)
    state.audit_user = user
    if "*" not in allowed and user not in allowed:
        state.audit_denied = True
        raise ApiError(403, f"this key (app {getattr(state, 'app_name', '?')!r}) may not act for the user {user!r}: "
                            "it is bound to " + ", ".join(repr(u) for u in allowed)
                       + ". Create a key for that user with `assistant api-key create APP --user NAME`",
                       "permission_error", "user_not_allowed", "user")
    return user


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
        import os

        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as fh:
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
        status = {"code": 0}
        app_state = scope.setdefault("state", {})

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if path in PUBLIC:
                await self.app(scope, receive, send_wrapper)
                return
            problem, replay = await self._admit(scope, receive, method, path)
            if problem is not None:
                await error_response(problem)(scope, receive, send_wrapper)
            elif replay is not None:
                await self.app(scope, replay, send_wrapper)
        finally:
            entry = dict(time=round(time.time(), 3), app=app_state.get("app_name"), method=method, endpoint=path,
                         status=status["code"] or 500, ms=round((time.perf_counter() - t0) * 1000, 1))
            if app_state.get("audit_user"):
                entry["user"] = app_state["audit_user"]
            if app_state.get("audit_denied"):
                entry["denied"] = "user"
            self.audit.write(**entry)

    async def _admit(self, scope: dict[str, Any], receive: Any, method: str, path: str):
        """(an error to send, None) or (None, a receive that replays the bounded body)."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        too_big = ApiError(413, f"the request body is over {self.max_body} bytes", code="request_too_large")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return too_big, None
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        key = api_keys.find(token, path=self.keys_path) if token else None
        if key is None:
            return ApiError(401, "a valid API key is needed: send 'Authorization: Bearer KEY' "
                                 "(create one with `assistant api-key create NAME --user USER --scopes ...`)",
                            "authentication_error", "invalid_api_key"), None
        state = scope["state"]
        state["app_name"], state["scopes"], state["key_users"] = key.name, key.scopes, key.users
        needed = _needed_scope(method, path)
        if needed is not None and needed not in key.scopes:
            return ApiError(403, f"the key of {key.name!r} lacks the scope {needed!r}",
                            "permission_error", "insufficient_scope"), None
        chunks: list[bytes] = []
        size, more = 0, True
        while more and method in ("POST", "PUT", "PATCH", "DELETE"):
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                return too_big, None
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

        return None, replay
