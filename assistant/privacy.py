"""The privacy service: forgetting and deleting that reach every store of a user's data.

``forget`` removes memories from the vector store (rebuilt without them, see memory/store.py),
deletes the journal turns that said them and rewrites the turns that quote them (prompts,
replies, corrections), vacuums the journal, and takes every adapter version that trained on them
out of service: the live one rolls back to the newest version that never saw them (or to the base
model), the versions that saw them are deleted, and the next learning round is queued. It returns
a receipt of what was removed from where. ``delete_user`` closes the caller's open handles, then
removes the user's folder.

Everything runs under the user's cross-process lock, so another process (the TUI, `serve`) never
sees half of it and reopens its stores afterwards (memory/locking.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from assistant import paths
from assistant.errors import AssistantError, MemoryNotFoundError, MemoryStoreError


@dataclass
class Receipt:
    user: str
    memories: list[tuple[str, str]] = field(default_factory=list)  # (id, text) removed from the memory store
    turns_deleted: list[str] = field(default_factory=list)
    turns_rewritten: list[str] = field(default_factory=list)
    conversations_deleted: int = 0
    adapters: list[str] = field(default_factory=list)  # what happened to adapter versions
    files: list[str] = field(default_factory=list)  # other files removed
    deleted_user: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user, "memories": [m[0] for m in self.memories], "turns_deleted": self.turns_deleted,
            "turns_rewritten": self.turns_rewritten, "conversations_deleted": self.conversations_deleted,
            "adapters": self.adapters, "files": self.files, "deleted_user": self.deleted_user,
        }

    def text(self) -> str:
        if self.deleted_user:
            return "\n".join([f"deleted user {self.user}:"] + [f"  {line}" for line in self.files])
        lines = [f"forgot {len(self.memories)} memories" + "".join(f"\n  {mid} {text[:80]}" for mid, text in self.memories)]
        if self.memories or self.turns_deleted or self.turns_rewritten:
            lines.append(f"journal: {len(self.turns_deleted)} turn(s) deleted, {len(self.turns_rewritten)} rewritten"
                         f"{f', {self.conversations_deleted} empty conversation(s) removed' if self.conversations_deleted else ''};"
                         " vacuumed")
        lines += [f"adapters: {a}" for a in self.adapters]
        lines += [f"removed {f}" for f in self.files]
        return "\n".join(lines)


# what a forget that removed every version of a user's adapter leaves applying
NO_OWN_VERSION = "none of their own (the pack's starting adapter applies, else the base model)"


def forget(
    user: str, settings: Any, *, ids: Sequence[str] = (), search: str | None = None, everything: bool = False,
    assistant: Any = None,
) -> Receipt:
    """Forget memories (by id, by search text, or all) everywhere they reached. See the module doc."""
    from memory.locking import user_lock

    user = paths.check_user_name(user)
    receipt = Receipt(user)
    folder = paths.user_dir(user)
    paths.inside_home(folder)
    with user_lock(folder):  # the same lock file path as the stores use (memory/locking.py)
        store, own_store = _memory(user, settings, assistant)
        try:
            chosen = _choose(store, ids, search, everything)
            # Other memories quoting a chosen one (an episode summing up that conversation) go too.
            needles = [m.text for m in chosen] + ([search] if search and len(search.strip()) >= 3 else [])
            chosen_ids = {m.id for m in chosen}
            if needles and not everything:
                from assistant.journal import _needle_re

                pats = [_needle_re(n) for n in needles]
                chosen += [m for m in store.list(include_superseded=True)
                           if m.id not in chosen_ids and any(p.search(m.text) for p in pats)]
            receipt.memories = [(m.id, m.text) for m in chosen]
            forgotten_ids = {m.id for m in chosen}
            source_turns = {m.source_turn for m in chosen if m.source_turn}
            # The memories go last: a crash before that leaves them in place, so forgetting them
            # again (by id or search) redoes every step; the journal and adapter steps repeat safely.
            # (Removed first, a crash left the journal quoting a memory no forget could name.)
            journal, own_journal = _journal(user, assistant)
            try:
                if everything:
                    needles = [m.text for m in chosen]
                words = sorted({w for m in chosen for w in distinctive_words(m.text)})
                done = journal.scrub(needles, forgotten_ids, source_turns, words) if chosen else {}
            finally:
                if own_journal:
                    journal.close()
            receipt.turns_deleted = list(done.get("turns_deleted", []))
            receipt.turns_rewritten = list(done.get("turns_rewritten", []))
            receipt.conversations_deleted = int(done.get("conversations_deleted", 0))
            if chosen:
                since = min((m.created for m in chosen if m.created), default=None)
                touched = set(receipt.turns_deleted) | set(receipt.turns_rewritten) | source_turns
                receipt.adapters = unlearn(user, touched, forgotten_ids, since)
            if everything:
                store.forget_all()
            elif chosen:
                store.forget([m.id for m in chosen])
        finally:
            if own_store:
                store.close()
        if chosen:
            receipt.files = _drop_damaged_copies(folder, needles)
    if assistant is not None:
        _after_forget(assistant, user)
    return receipt


def distinctive_words(text: str) -> list[str]:
    """Words of a memory that identify it on their own: codes (with digits), names, CAPITALS."""
    import re

    out = []
    for i, m in enumerate(re.finditer(r"[A-Za-z0-9][\w'-]*", text)):
        w = m.group(0)
        sentence_start = i == 0 or text[: m.start()].rstrip().endswith((".", "!", "?"))
        if len(w) >= 4 and any(c.isdigit() for c in w):
            out.append(w)
        elif len(w) >= 4 and w.isupper():
            out.append(w)
        elif len(w) >= 3 and w[0].isupper() and not sentence_start and w.lower() not in ("i'm", "i've", "i'll"):
            out.append(w)
    return out


def _choose(store: Any, ids: Sequence[str], search: str | None, everything: bool) -> list[Any]:
    if everything:
        return store.list(include_superseded=True)
    if search is not None:
        if not search.strip():
            raise MemoryStoreError("say what to forget: --search needs some text")
        hits = [m for m in store.search(search, k=50, include_superseded=True) if (m.similarity or 0) >= 0.5]
        hits += [m for m in store.list(include_superseded=True) if search.lower() in m.text.lower() and m not in hits]
        return hits
    chosen = []
    for mid in dict.fromkeys(ids):
        m = store.get(mid)
        if m is None:
            raise MemoryNotFoundError(f"no memory {mid!r} for user {store.user!r} (see `assistant memory list`); nothing was forgotten")
        chosen.append(m)
    return chosen


def _memory(user: str, settings: Any, assistant: Any) -> tuple[Any, bool]:
    if assistant is not None and assistant.memory(user) is not None:
        return assistant.memory(user), False
    from memory.store import MemoryStore

    return MemoryStore(user, settings.memory), True


def _journal(user: str, assistant: Any) -> tuple[Any, bool]:
    if assistant is not None:
        return assistant.journal(user), False
    from assistant.journal import Journal

    return Journal(user), True


def _after_forget(assistant: Any, user: str) -> None:
    """Drop what the running assistant keeps in memory about this user (KV caches, live adapter)."""
    engine = getattr(assistant, "_engine", None)
    for name in ("clear_shared_prefix", "clear_sessions"):
        fn = getattr(engine, name, None) if engine is not None else None
        if callable(fn):
            try:
                fn()
            except Exception:
                pass


def unlearn(user: str, turn_ids: set[str], memory_ids: set[str], since: float | None) -> list[str]:
    """Take every adapter version of ``user`` that saw these turns or memories out of service."""
    from assistant.adapters import AdapterStore, saw

    out: list[str] = []
    root = paths.user_dir(user) / "adapters"
    for pack_dir in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            store = AdapterStore(user, paths.check_pack_name(pack_dir.name))
        except AssistantError:
            continue
        versions = store.versions()
        tainted = []
        for v in versions:
            try:
                meta = store.meta(v)
            except (AssistantError, ValueError):
                meta = {}
            if saw(meta, turn_ids, memory_ids, since):
                tainted.append(v)
        if not tainted:
            continue
        try:
            live = store.current()
        except AssistantError:
            live = None
        clean = [v for v in versions if v not in tainted]
        if live in tainted:
            target = clean[-1] if clean else None
            store.set_current(target)
            out.append(f"{store.pack}: live version {live} had learned it; rolled back to {target or NO_OWN_VERSION}")
        for v in tainted:
            store.delete(v)
        out.append(f"{store.pack}: deleted version(s) {', '.join(tainted)} that trained on it")
        _queue_retrain(store)
        out.append(f"{store.pack}: the next learning round retrains without it")
    return out


def _queue_retrain(store: Any) -> None:
    """Make the next learning round due at once (the learner counts feedback since last_round_at)."""
    state_file = store.root / "state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    state["last_round_at"] = 0.0
    state["retrain_requested"] = {"at": time.time(), "reason": "forgotten data"}
    tmp = state_file.with_name("state.json.tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, state_file)


def _drop_damaged_copies(folder: Path, needles: Sequence[str]) -> list[str]:
    """Damaged journals moved aside (see Journal._salvage) that still hold a forgotten text."""
    removed = []
    for p in sorted(folder.glob("journal.sqlite3.damaged-*")):
        try:
            data = p.read_bytes().lower()
        except OSError:
            continue
        if any(n.strip() and n.strip().lower().encode() in data for n in needles):
            p.unlink()
            removed.append(p.name)
    return removed


def delete_user(user: str, assistant: Any = None) -> Receipt:
    """Remove every trace of ``user``: memory, journal, adapters, under the user's lock."""
    from memory.locking import user_lock

    user = paths.check_user_name(user)
    folder = paths.user_dir(user)
    paths.inside_home(folder)
    if not folder.exists():
        raise AssistantError(f"no user {user!r} in {paths.users_dir()}")
    receipt = Receipt(user, deleted_user=True)
    if assistant is not None:
        assistant.forget_user_handles(user)
    with user_lock(folder):
        receipt.files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".lock")
        # Rename first so a crash leaves either the user or nothing that looks like one.
        trash = paths.inside_home(folder.with_name(f".deleting-{user}"))
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(folder, trash)
    shutil.rmtree(trash)
    if assistant is not None:
        _after_forget(assistant, user)
    return receipt
