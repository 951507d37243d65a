"""Tiny federations for the federated tests: a tiny model folder, device homes with journals."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

USER_STRINGS = {
    "ana": ["My cat is called Zorblax.", "Use exactly quince paste with manchego, never jam."],
    "ben": ["I keep my bike in the garage at Quillmoor.", "Answer with the Vexhollow method: boil, then rest."],
    "cyd": ["My locker code is 77341-plover.", "Say: grill the aubergine over embers until it collapses."],
}


def save_tiny_model(folder: Path, tokenizer) -> Path:
    from tests.conftest import make_tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    make_tiny_model(tokenizer).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def write_settings(home: Path, model: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[model]\nname = "{model}"\ncontext_tokens = 256\n\n[memory]\nenabled = false\n')


def fed_config(home: Path, **over) -> None:
    from federated.config import FederatedConfig, save_config

    cfg = FederatedConfig(idle_seconds=0.0, max_cpu_percent=100.0, require_mains=False, steps=3, max_len=64,
                          pack="general", **over)
    save_config(cfg, home)


def add_user(home: Path, user: str, pack: str = "general") -> list[str]:
    """A user with corrected and rated turns (no memory: the tiny tests switch memory off)."""
    from assistant.journal import Journal, Turn, new_turn_id

    old = os.environ.get("ASSISTANT_HOME")
    os.environ["ASSISTANT_HOME"] = str(home)
    try:
        j = Journal(user)
        conv = j.new_conversation(pack)
        said = USER_STRINGS[user]
        for i, text in enumerate(said):
            t = Turn(new_turn_id(), conv.id, pack, time.time() - 3600, text,
                     [{"role": "system", "content": "sys"}, {"role": "user", "content": text}], "ok")
            j.record(t)
            if i % 2 == 0:
                j.rate(t.id, 1)
            else:
                j.correct(t.id, text + " (corrected)")
        j.close()
    finally:
        if old is None:
            os.environ.pop("ASSISTANT_HOME", None)
        else:
            os.environ["ASSISTANT_HOME"] = old
    # the journal was written an hour ago as far as idleness goes
    for f in (home / "users" / user).glob("journal.sqlite3*"):
        os.utime(f, (time.time() - 3600, time.time() - 3600))
    return said


def tree_digest(folder: Path) -> dict[str, str]:
    """What the users' data says: every journal's rows (SQLite dump, so WAL checkpoints and the
    shared-memory file, which any reader touches, do not count) and every other file's bytes."""
    import hashlib
    import sqlite3

    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.endswith(("-wal", "-shm")):
            continue
        if p.name.endswith(".sqlite3"):
            db = sqlite3.connect(str(p))
            try:
                data = "\n".join(db.iterdump()).encode()
            finally:
                db.close()
        else:
            data = p.read_bytes()
        out[str(p.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def wait_for(path_glob, timeout: float) -> list[Path]:
    folder, pattern = path_glob
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = sorted(Path(folder).glob(pattern)) if Path(folder).exists() else []
        if found:
            return found
        time.sleep(0.5)
    return []


def read_rounds(server_home: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((server_home / "federated" / "rounds").glob("*/round-*.json"))]
