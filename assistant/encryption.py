"""Turning encryption at rest on or off for a whole data directory, and saying where it stands.

``turn_on`` writes ``encryption.json`` first (a new data key, wrapped under the passphrase), then
opens every user's journal, memory store and adapter versions, each of which converts itself when
it finds its plain form (``journal_db.prepare``, ``VectorCollection._open``,
``adapters.seal_weights``). Each conversion writes the new form beside the old and renames it into
place, so a crash leaves every store as it was or converted, never half; running ``on`` again (or
only opening a store) finishes the rest. ``turn_off`` is the same walk back: state "decrypting",
every store to its plain form, then ``encryption.json`` goes.

Like ``privacy.py``, this reaches the memory and learning packages (imported inside the functions).
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from assistant import crypto, paths
from assistant.errors import EncryptionError

NOT_ENCRYPTED = (
    "not encrypted: the memories' embeddings (numbers from which similar texts can be guessed), "
    "file names, sizes and times, pack knowledge and pack adapters (shipped data), config.toml, "
    "last_choice.json, the API's hashed keys and audit log (no message text)"
)


def users() -> list[str]:
    root = paths.users_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and paths._NAME_RE.fullmatch(p.name))


def turn_on(passphrase: str, settings: Any) -> list[str]:
    """Encrypt this data directory (or finish an interrupted `on`); lines saying what was done."""
    from assistant.journal_db import require_sqlcipher

    require_sqlcipher()  # missing: said now, before the data directory is marked encrypted
    state = crypto.read_state()
    if state is None:
        crypto.create(passphrase)
        lines = [f"created {crypto.state_path()} (the wrapped key; back it up with the data directory)"]
    else:
        crypto.open_key(state, passphrase)  # a wrong passphrase stops here, before anything changes
        if state["state"] != "on":
            crypto.set_state("on")
        lines = ["this data directory was encrypted already: finishing what was left plain"]
    return lines + convert_all(settings)


def turn_off(settings: Any) -> list[str]:
    """Decrypt every store, then remove encryption.json (the key must be unlocked)."""
    if crypto.read_state() is None:
        raise EncryptionError("this data directory is not encrypted; nothing to do")
    crypto.data_key()  # locked or wrong: stops here
    crypto.set_state("decrypting")
    lines = convert_all(settings)
    crypto.remove_state()
    if crypto.keyring_delete():
        lines.append("removed the passphrase from the OS keyring")
    return lines + [f"removed {crypto.state_path()}: the data directory is plain again"]


def convert_all(settings: Any) -> list[str]:
    """Bring every user's stores to the form encryption.json asks for."""
    return [line for user in users() for line in convert_user(user, settings)]


def convert_user(user: str, settings: Any) -> list[str]:
    """One user's journal, memory store and adapters, converted under the user's lock."""
    from assistant import adapters
    from assistant.journal import Journal
    from memory.locking import bump_generation, user_lock
    from memory.store import MemoryStore

    key, seal = crypto.stores_key()
    folder = paths.user_dir(user)
    word = "encrypted" if seal else "plain"
    done: list[str] = []
    with user_lock(folder):
        if paths.journal_file(user).exists():
            Journal(user).close()
            done.append(f"journal {word}")
        if paths.memory_dir(user).is_dir():
            MemoryStore(user, settings.memory).close()
            done.append(f"memories {word}")
        changed = 0
        for version in _versions(user):
            changed += adapters.seal_weights(version, key, seal)
        if changed:
            done.append(f"{changed} adapter version(s) {word}")
        bump_generation(folder)  # other processes reopen what they hold
    return [f"{user}: {', '.join(done) or 'nothing stored yet'}"]


def _versions(user: str) -> list[Path]:
    from assistant.adapters import WEIGHTS, AdapterStore

    root = paths.user_dir(user) / "adapters"
    out = []
    for pack_dir in sorted(root.iterdir()) if root.is_dir() else []:
        if not pack_dir.is_dir() or not paths._NAME_RE.fullmatch(pack_dir.name):
            continue
        store = AdapterStore(user, pack_dir.name)
        out += [store.path(v) for v in store.versions() if (store.path(v) / WEIGHTS).is_file()]
    return out


def export_text(store: Any, plain: bool = False) -> str:
    """``assistant memory export``: the JSON, sealed when the data directory is encrypted (a
    sealed export opens with the passphrase alone, anywhere) unless ``plain`` is asked for."""
    from memory.store import export_json

    text = export_json(store)
    key, seal = crypto.stores_key()
    return crypto.seal_export(text, key) if key is not None and seal and not plain else text


def import_data(path: Path) -> Any:
    """An export's content, plain or sealed (opened with ASSISTANT_PASSPHRASE or the keyring)."""
    from assistant.errors import AssistantError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AssistantError(f"cannot read {path}: {exc}") from exc
    return crypto.open_export(data)


def status() -> list[str]:
    """Where the data directory stands, read from the files alone (no key needed)."""
    mode = crypto.mode()
    lines = [f"encryption: {mode} ({paths.home()})"]
    if mode == "off":
        return lines + ["turn it on with `assistant encryption on` (the passphrase from ASSISTANT_PASSPHRASE or a prompt)"]
    source = (crypto.ENV if os.environ.get(crypto.ENV) else
              "the OS keyring" if crypto.keyring_get() else None)
    lines.append(f"passphrase: from {source}" if source else "passphrase: not given (" + crypto.unlock_hint() + ")")
    for user in users():
        lines.append(f"  {user}: " + ", ".join(_user_forms(user)))
    lines.append(NOT_ENCRYPTED)
    return lines


def _user_forms(user: str) -> list[str]:
    from assistant.adapters import WEIGHTS, _sealed_file
    from assistant.journal_db import kind

    out = []
    journal = paths.journal_file(user)
    if journal.exists():
        out.append("journal " + {"plain": "PLAIN", "other": "encrypted", "new": "empty"}[kind(journal)])
    if paths.memory_dir(user).is_dir():
        out.append("memories " + ("encrypted" if _memory_sealed(paths.memory_dir(user)) else "PLAIN"))
    versions = _versions(user)
    if versions:
        sealed = sum(_sealed_file(v / WEIGHTS) for v in versions)
        out.append(f"adapters {sealed}/{len(versions)} encrypted")
    return out or ["nothing stored yet"]


def _memory_sealed(root: Path) -> bool:
    """Whether the chromadb collection in ``root`` is marked sealed (its metadata, read directly)."""
    try:
        con = sqlite3.connect(f"file:{root / 'chroma.sqlite3'}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT count(*) FROM collection_metadata WHERE key = 'sealed'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return bool(row and row[0])
