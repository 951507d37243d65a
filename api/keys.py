"""Per-app API keys for the local API.

A key is shown once, when it is created; only a salted SHA-256 hash of it is kept, in
``$ASSISTANT_HOME/api/keys.json`` (written atomically: temp file + ``os.replace``, mode 0600).
Each key belongs to a named app, is bound to users (one, a named set, or ``*`` for every user;
a key made before keys had users acts only for the default user) and carries scopes:

    chat           POST /v1/chat/completions (and GET /v1/models)
    memory:read    GET /v1/memories; chat answers may recall the user's memories
    memory:write   POST /v1/memories, DELETE /v1/memories/{id}
    feedback       POST /v1/feedback
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from assistant import paths
from assistant.errors import AssistantError

SCOPES = ("chat", "memory:read", "memory:write", "feedback")
KEY_PREFIX = "pa-"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SLUG_RE = re.compile(r"[^A-Za-z0-9_.-]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_lock = threading.Lock()
_cache: dict[str, Any] = {}  # path -> (mtime_ns, size, entries)


ALL_USERS = "*"


@dataclass(frozen=True)
class Key:
    name: str
    scopes: "builtins.list[str]"
    users: "builtins.list[str] | None"  # folder names, ["*"], or None: a key from before users (default user only)


def keys_file() -> Path:
    return paths.api_dir() / "keys.json"


def _hash(salt: str, key: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + key.encode("utf-8")).hexdigest()


def _read(path: Path) -> builtins.list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AssistantError(f"cannot read the API keys in {path} ({exc}): fix or delete the file, then create keys again") from exc
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, type([])):
        raise AssistantError(f"{path} is not an API key file: delete it and create keys again")
    return entries


def _write(path: Path, entries: Iterable[dict[str, Any]]) -> None:
    data = json.dumps({"version": 1, "keys": [dict(e) for e in entries]}, indent=2).encode("utf-8")
    paths.write_private(path, data)
    _cache.pop(str(path), None)


def parse_scopes(scopes: str | Iterable[str]) -> builtins.list[str]:
    """``"chat,memory:read"`` or a list -> a checked, de-duplicated list in canonical order."""
    items = [s.strip() for s in scopes.split(",")] if isinstance(scopes, str) else [str(s).strip() for s in scopes]
    items = [s for s in items if s]
    unknown = [s for s in items if s not in SCOPES]
    if unknown:
        raise AssistantError(f"unknown scope {unknown[0]!r}: use one or more of {', '.join(SCOPES)}")
    if not items:
        raise AssistantError(f"a key needs at least one scope: {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in items]


def user_folder(name: str) -> str:
    """An app's user id -> the user's folder name, safely and deterministically.

    A valid user name (letters, digits, '.', '_', '-') is kept as it is. Anything else, an
    e-mail address for example, becomes a readable slug plus a short hash of the exact id, so two
    ids never share a folder by accident: "alice@example.com" -> "alice_at_example.com-<10 hex>".
    """
    from assistant.errors import ConfigError

    if not isinstance(name, str) or not name.strip():
        raise ConfigError("the user id is empty: leave 'user' out or send a name")
    if len(name) > 256 or _CONTROL_RE.search(name):
        raise ConfigError(f"the user id {name[:40]!r} must be at most 256 characters without control characters")
    try:
        return paths.check_user_name(name)
    except ConfigError:
        pass
    slug = _SLUG_RE.sub("-", name.replace("@", "_at_")).strip("-._")[:40].strip("-._") or "user"
    digest = hashlib.sha256(name.encode("utf-8", errors="surrogatepass")).hexdigest()[:10]
    return f"{slug}-{digest}"


def parse_users(users: str | Iterable[str]) -> "builtins.list[str]":
    """``"alice,bob@example.com"`` or a list -> folder names (as the API maps them), or ``["*"]``."""
    items = [u.strip() for u in users.split(",")] if isinstance(users, str) else [str(u).strip() for u in users]
    items = [u for u in items if u]
    if not items:
        raise AssistantError("a key needs a user: --user NAME (several: --user alice,bob; every user: --user '*')")
    if ALL_USERS in items:
        return [ALL_USERS]
    out: builtins.list[str] = []
    for item in items:
        folder = user_folder(item)
        if folder not in out:
            out.append(folder)
    return out


def create(name: str, scopes: str | Iterable[str], *, users: str | Iterable[str] = ("me",),
           path: Path | None = None) -> str:
    """Create a key for app ``name`` acting for ``users``; returns the plaintext key (the only time
    it is seen). Only the CLI calls this: no API endpoint creates or widens keys."""
    if not _NAME_RE.match(name or ""):
        raise AssistantError(f"invalid app name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    checked = parse_scopes(scopes)
    bound = parse_users(users)
    path = path or keys_file()
    with _lock:
        entries = _read(path)
        if any(e.get("name") == name for e in entries):
            raise AssistantError(f"an API key named {name!r} exists already: revoke it first or pick another name")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        entries.append({"name": name, "salt": salt, "hash": _hash(salt, key), "scopes": checked, "users": bound,
                        "created": time.time()})
        _write(path, entries)
    return key


def list(*, path: Path | None = None) -> "builtins.list[dict[str, Any]]":  # noqa: A001 - the issue names it so
    """Apps with keys: name, scopes and creation time (never the hashes)."""
    return [
        {"name": e.get("name"), "scopes": e.get("scopes", []), "users": e.get("users"), "created": e.get("created", 0.0)}
        for e in _read(path or keys_file())
    ]


def revoke(name: str, *, path: Path | None = None) -> None:
    path = path or keys_file()
    with _lock:
        entries = _read(path)
        kept = [e for e in entries if e.get("name") != name]
        if len(kept) == len(entries):
            raise AssistantError(f"no API key named {name!r} (see `assistant api-key list`)")
        _write(path, kept)


def _entries_cached(path: Path) -> "builtins.list[dict[str, Any]]":
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    sig = (st.st_mtime_ns, st.st_size)
    hit = _cache.get(str(path))
    if hit is not None and hit[0] == sig:
        return hit[1]
    entries = _read(path)
    _cache[str(path)] = (sig, entries)
    return entries


def find(key: str | None, *, path: Path | None = None) -> Key | None:
    """The ``Key`` for a valid plaintext key, else None. Re-reads the file when it changes."""
    if not key or not isinstance(key, str):
        return None
    found = None
    for e in _entries_cached(path or keys_file()):
        try:
            ok = hmac.compare_digest(_hash(e["salt"], key), e["hash"])
        except (KeyError, TypeError, ValueError):
            continue
        if ok and found is None:
            users = e.get("users")
            found = Key(e["name"], [s for s in e.get("scopes", []) if s in SCOPES],
                        [str(u) for u in users] if isinstance(users, builtins.list) and users else None)
    return found


def check(key: str | None, *, path: Path | None = None) -> tuple[str, "builtins.list[str]"] | None:
    """``(app name, scopes)`` for a valid key, else None."""
    found = find(key, path=path)
    return (found.name, found.scopes) if found is not None else None
