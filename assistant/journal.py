"""The journal: every turn, rating and correction of one user, in SQLite (WAL).

It is the single source of training data. ``secure_delete`` is on, so deleted rows are zeroed on
disk rather than left in free pages. The schema is versioned with ``PRAGMA user_version``;
upgrades run in order when a journal is opened.

Writes run under the user's cross-process lock (``memory/locking.py``). A journal that SQLite
cannot read is moved aside (``journal.sqlite3.damaged-<time>``) and its readable rows are copied
into a fresh one. ``scrub`` is how forgetting reaches the journal: it deletes or rewrites every
row quoting a forgotten text, then vacuums and checkpoints so no free page or WAL frame keeps it.
When the data directory is encrypted the file is an SQLCipher database (``journal_db.py``).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from assistant import crypto, journal_db, paths
from assistant.errors import AssistantError, TurnNotFoundError
from memory.locking import user_lock

FORGOTTEN = "[forgotten]"

SCHEMA_VERSION = 1
_UPGRADES = {
    1: """
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY, pack TEXT NOT NULL, title TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL, updated REAL NOT NULL
    );
    CREATE TABLE turns (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        pack TEXT NOT NULL,
        created REAL NOT NULL,
        message TEXT NOT NULL,
        prompt TEXT NOT NULL,          -- the messages as sent to the model, JSON
        reply TEXT NOT NULL,
        memory_ids TEXT NOT NULL DEFAULT '[]',
        adapter TEXT,
        rating INTEGER,                -- +1 / -1 / NULL
        correction TEXT,
        feedback_at REAL,
        source TEXT NOT NULL DEFAULT 'chat',
        finish_reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX turns_conv ON turns(conversation_id, created);
    CREATE INDEX turns_feedback ON turns(pack, feedback_at);
    """,
}


@dataclass
class Turn:
    id: str
    conversation_id: str
    pack: str
    created: float
    message: str
    prompt: list[dict[str, str]]
    reply: str
    memory_ids: list[str] = field(default_factory=list)
    adapter: str | None = None
    rating: int | None = None
    correction: str | None = None
    feedback_at: float | None = None
    source: str = "chat"
    finish_reason: str = ""


@dataclass
class Conversation:
    id: str
    pack: str
    title: str
    created: float
    updated: float


class Journal:
    """One user's journal. Thread-safe; one connection guarded by a lock."""

    def __init__(self, user: str, path: Path | None = None) -> None:
        self.user = user
        self.path = path or paths.journal_file(user)
        crypto.stores_key()  # locked or a wrong passphrase: refused before anything is touched
        paths.private_umask()
        paths.private_dir(self.path.parent)
        self._lock = threading.Lock()
        self.notices: list[str] = []
        self._key: crypto.DataKey | None = None
        try:
            self._connect()
        except journal_db.db_errors() as exc:
            self._salvage(exc)

    def _connect(self) -> None:
        key, seal = crypto.stores_key()
        with user_lock(self.path.parent):  # a plain journal is encrypted first when encryption is on
            self._key = journal_db.prepare(self.path, key, seal)
        if not self.path.exists():  # created 0600, so its -wal and -shm files are too
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        paths.make_private(self.path)
        self._db = journal_db.connect(self.path, self._key, check_same_thread=False, isolation_level=None, timeout=15)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA foreign_keys=ON")
            ok = self._db.execute("PRAGMA quick_check(1)").fetchone()
            if not ok or ok[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {ok[0] if ok else 'no answer'}")
            with user_lock(self.path.parent):
                self._upgrade()
        except BaseException:
            self._db.close()
            raise
        self._ino = _inode(self.path)

    def _salvage(self, cause: Exception) -> None:
        """Move a damaged journal aside and copy every row that can still be read into a new one."""
        with user_lock(self.path.parent):
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, Path(str(aside) + suffix))
            try:
                self._connect()
            except journal_db.db_errors() as exc:
                raise AssistantError(
                    f"the journal {self.path} cannot be opened ({exc}). Move it aside to start a new one; "
                    "your memories and adapters are unaffected."
                ) from exc
            saved = {table: _copy_rows(aside, self._db, table, self._key) for table in ("conversations", "turns")}
        self.notices.append(
            f"the journal {self.path.name} was damaged ({cause}); moved it to {aside.name} and kept "
            f"{saved['turns']} turn(s) and {saved['conversations']} conversation(s) that could still be read"
        )
        print(f"[journal] {self.notices[-1]}", file=sys.stderr, flush=True)

    def _fresh(self) -> None:
        """Reconnect when the file was replaced or deleted by another process (user delete)."""
        if _inode(self.path) != self._ino:
            try:
                self._db.close()
            except journal_db.any_errors():
                pass
            self._connect()

    def _upgrade(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise AssistantError(f"{self.path} was written by a newer version (schema {version}); upgrade this program")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            # One script, one transaction: a crash leaves the old schema or the new one.
            self._db.executescript(f"BEGIN IMMEDIATE;\n{_UPGRADES[v]}\nPRAGMA user_version={v};\nCOMMIT;")

    def _tx(self):
        db = self._db

        class _Tx:
            def __enter__(self_inner):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, exc_type, *_):
                db.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _read(self):
        """This journal's thread lock, reconnecting first if the file was replaced or deleted."""
        import contextlib

        journal = self

        @contextlib.contextmanager
        def held() -> Iterator[None]:
            with journal._lock:
                journal._fresh()
                yield

        return held()

    def _write(self):
        """The user's cross-process lock, then this journal's thread lock (in that order)."""
        import contextlib

        journal = self

        @contextlib.contextmanager
        def held() -> Iterator[None]:
            with user_lock(journal.path.parent), journal._lock:
                journal._fresh()
                yield

        return held()

    # ------------------------------------------------------------ conversations
    def new_conversation(self, pack: str, title: str = "") -> Conversation:
        now = time.time()
        conv = Conversation(uuid.uuid4().hex[:12], pack, title, now, now)
        with self._write():
            self._db.execute(
                "INSERT INTO conversations VALUES (?,?,?,?,?)", (conv.id, pack, title, now, now)
            )
        return conv

    def conversations(self, pack: str | None = None) -> list[Conversation]:
        sql = "SELECT id, pack, title, created, updated FROM conversations"
        args: tuple[Any, ...] = ()
        if pack:
            sql += " WHERE pack=?"
            args = (pack,)
        with self._read():
            rows = self._db.execute(sql + " ORDER BY updated DESC", args).fetchall()
        return [Conversation(*r) for r in rows]

    def rename_conversation(self, conv_id: str, title: str) -> None:
        with self._write():
            self._db.execute("UPDATE conversations SET title=? WHERE id=?", (title, conv_id))

    def delete_conversation(self, conv_id: str) -> None:
        with self._write():
            with self._tx():
                self._db.execute("DELETE FROM turns WHERE conversation_id=?", (conv_id,))
                self._db.execute("DELETE FROM conversations WHERE id=?", (conv_id,))
            self._checkpoint()  # the deleted rows must not wait in the WAL for a clean close

    # ------------------------------------------------------------ turns
    def record(self, turn: Turn) -> Turn:
        from assistant.text import clean_text

        turn.message, turn.reply = clean_text(turn.message), clean_text(turn.reply)
        turn.prompt = [{k: clean_text(v) for k, v in m.items()} for m in turn.prompt]
        with self._write(), self._tx():
            self._db.execute(
                "INSERT INTO turns VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    turn.id, turn.conversation_id, turn.pack, turn.created, turn.message,
                    json.dumps(turn.prompt), turn.reply, json.dumps(turn.memory_ids), turn.adapter,
                    turn.rating, turn.correction, turn.feedback_at, turn.source, turn.finish_reason,
                ),
            )
            title = turn.message.strip().splitlines()[0][:60] if turn.message.strip() else ""
            self._db.execute(
                "UPDATE conversations SET updated=?, title=CASE WHEN title='' THEN ? ELSE title END WHERE id=?",
                (turn.created, title, turn.conversation_id),
            )
        return turn

    def rate(self, turn_id: str, rating: int) -> None:
        if rating not in (1, -1):
            raise AssistantError("a rating is +1 (good) or -1 (bad)")
        self._feedback(turn_id, "rating=?", rating)

    def correct(self, turn_id: str, correction: str) -> None:
        if not correction.strip():
            raise AssistantError("a correction needs the better answer: /correct THE BETTER ANSWER")
        from assistant.text import clean_text

        self._feedback(turn_id, "correction=?", clean_text(correction).strip())

    def _feedback(self, turn_id: str, assignment: str, value: Any) -> None:
        with self._write():
            cur = self._db.execute(f"UPDATE turns SET {assignment}, feedback_at=? WHERE id=?", (value, time.time(), turn_id))
        if cur.rowcount == 0:
            raise TurnNotFoundError(f"no turn {turn_id!r} in {self.user}'s journal")

    def turn(self, turn_id: str) -> Turn | None:
        with self._read():
            row = self._db.execute("SELECT * FROM turns WHERE id=?", (turn_id,)).fetchone()
        return _turn(row) if row else None

    def turns(self, conversation_id: str | None = None, pack: str | None = None, since: float = 0.0) -> list[Turn]:
        sql = "SELECT * FROM turns WHERE created >= ?"
        args: list[float | str] = [since]
        if conversation_id:
            sql += " AND conversation_id=?"
            args.append(conversation_id)
        if pack:
            sql += " AND pack=?"
            args.append(pack)
        with self._read():
            rows = self._db.execute(sql + " ORDER BY created", args).fetchall()
        return [_turn(r) for r in rows]

    def feedback(self, pack: str, since: float = 0.0) -> list[Turn]:
        """Turns of ``pack`` with a rating or correction given after ``since``."""
        with self._read():
            rows = self._db.execute(
                "SELECT * FROM turns WHERE pack=? AND feedback_at IS NOT NULL AND feedback_at > ? ORDER BY feedback_at",
                (pack, since),
            ).fetchall()
        return [_turn(r) for r in rows]

    def delete_turns(self, pack: str | None = None) -> int:
        with self._write():
            with self._tx():
                if pack:
                    n = self._db.execute("DELETE FROM turns WHERE pack=?", (pack,)).rowcount
                    self._db.execute("DELETE FROM conversations WHERE pack=?", (pack,))
                else:
                    n = self._db.execute("DELETE FROM turns").rowcount
                    self._db.execute("DELETE FROM conversations")
            self._vacuum()
        return n

    # ------------------------------------------------------------ forgetting
    def scrub(self, needles: Iterable[str], memory_ids: Iterable[str] = (), turn_ids: Iterable[str] = (),
              words: Iterable[str] = ()) -> dict[str, Any]:
        """Delete the turns that said a forgotten text (or are named), rewrite those that quote it.

        A turn is deleted when its message contains a needle or its id is in ``turn_ids`` (the
        turn a forgotten memory came from). In every other turn the needle is replaced by
        ``[forgotten]`` in the prompt, reply and correction, and forgotten memory ids are dropped.
        ``words`` (the distinctive words of a forgotten text: a code, a name) are replaced in
        every field, the message included, since a reply or correction often quotes only them.
        Then the file is vacuumed and the WAL checkpointed and truncated.
        """
        pats = [_needle_re(n) for n in needles if n and n.strip()]
        word_pats = [_needle_re(w) for w in words if w and w.strip()]
        forgotten_ids, named = set(memory_ids), set(turn_ids)

        def hit(text: str | None, also_words: bool = True) -> bool:
            if not text:
                return False
            return any(p.search(text) for p in pats + (word_pats if also_words else []))

        def scrub_text(text: str) -> str:
            for p in pats + word_pats:
                text = p.sub(FORGOTTEN, text)
            return text

        deleted: list[str] = []
        rewritten: list[str] = []
        with self._write():
            with self._tx():
                rows = self._db.execute("SELECT * FROM turns").fetchall()
                for row in rows:
                    t = _turn(row)
                    if t.id in named or hit(t.message, also_words=False):
                        self._db.execute("DELETE FROM turns WHERE id=?", (t.id,))
                        deleted.append(t.id)
                        continue
                    prompt = json.dumps(t.prompt)
                    mids = [m for m in t.memory_ids if m not in forgotten_ids]
                    if hit(prompt) or hit(t.reply) or hit(t.correction) or hit(t.message) or mids != t.memory_ids:
                        new_prompt = [{k: scrub_text(v) if isinstance(v, str) else v for k, v in m.items()} for m in t.prompt]
                        self._db.execute(
                            "UPDATE turns SET message=?, prompt=?, reply=?, correction=?, memory_ids=? WHERE id=?",
                            (scrub_text(t.message), json.dumps(new_prompt), scrub_text(t.reply),
                             scrub_text(t.correction) if t.correction else t.correction, json.dumps(mids), t.id),
                        )
                        rewritten.append(t.id)
                retitled = 0
                for cid, title in self._db.execute("SELECT id, title FROM conversations").fetchall():
                    if hit(title):
                        self._db.execute("UPDATE conversations SET title=? WHERE id=?", (scrub_text(title), cid))
                        retitled += 1
                emptied = self._db.execute(
                    "DELETE FROM conversations WHERE id NOT IN (SELECT conversation_id FROM turns) "
                    "AND id IN (SELECT value FROM json_each(?))", (json.dumps(sorted({r[1] for r in rows if r[0] in deleted})),),
                ).rowcount
            self._vacuum()
        return {"turns_deleted": deleted, "turns_rewritten": rewritten, "titles_rewritten": retitled,
                "conversations_deleted": emptied}

    def _checkpoint(self) -> bool:
        """Copy the WAL into the file and truncate it; True when nothing was left behind."""
        for _ in range(50):
            busy, _log, _done = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return True
            time.sleep(0.05)  # a reader in another process: it finishes quickly
        return False

    def _vacuum(self) -> None:
        self._checkpoint()
        self._db.execute("VACUUM")
        self._checkpoint()

    def __iter__(self) -> Iterator[Turn]:
        return iter(self.turns())


def _turn(row: tuple[Any, ...]) -> Turn:
    return Turn(
        id=row[0], conversation_id=row[1], pack=row[2], created=row[3], message=row[4],
        prompt=json.loads(row[5]), reply=row[6], memory_ids=json.loads(row[7]), adapter=row[8],
        rating=row[9], correction=row[10], feedback_at=row[11], source=row[12], finish_reason=row[13],
    )


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _needle_re(needle: str) -> re.Pattern[str]:
    """``needle`` anywhere, case-insensitively, not as part of a longer word."""
    needle = needle.strip()
    left = r"(?<!\w)" if re.match(r"\w", needle) else ""
    right = r"(?!\w)" if re.search(r"\w$", needle) else ""
    return re.compile(left + re.escape(needle) + right, re.IGNORECASE)


def _copy_rows(damaged: Path, db: Any, table: str, key: crypto.DataKey | None = None) -> int:
    """Copy the rows of ``table`` that SQLite can still read from ``damaged`` into ``db``."""
    errors = journal_db.db_errors()
    try:
        src = journal_db.DamagedSource(damaged, key)
    except journal_db.any_errors():
        return 0
    saved = 0
    try:
        try:
            rows = src.execute(f"SELECT * FROM {table}").fetchall()
        except errors:
            rows = [r for rowid in _rowids(src, table) for r in _row(src, table, rowid)]
        width = len(db.execute(f"SELECT * FROM {table} LIMIT 0").description)
        for row in rows:
            if len(row) != width:
                continue
            try:
                db.execute(f"INSERT OR IGNORE INTO {table} VALUES ({','.join('?' * width)})", row)
                saved += 1
            except journal_db.any_errors():
                continue
    finally:
        src.close()
    return saved


def _rowids(src: Any, table: str) -> list[int]:
    """Row ids of ``table`` from whatever still reads: the table, its indexes, or a plain range."""
    found: set[int] = set()
    queries = [f"SELECT rowid FROM {table}"]
    try:
        indexes = src.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=?", (table,)).fetchall()
    except journal_db.db_errors():  # not a database at all: nothing to salvage
        return []
    for (name,) in indexes:
        queries.append(f'SELECT rowid FROM {table} INDEXED BY "{name}"')
    for q in queries:
        try:
            found |= {r[0] for r in src.execute(q).fetchall()}
        except journal_db.db_errors():
            continue
    if not found:
        try:
            top = src.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
        except journal_db.db_errors():
            top = 0
        found = set(range(1, min(top, 1_000_000) + 1))
    return sorted(found)


def _row(src: Any, table: str, rowid: int) -> list[tuple[Any, ...]]:
    try:
        row = src.execute(f"SELECT * FROM {table} WHERE rowid=?", (rowid,)).fetchone()
    except journal_db.db_errors():
        return []
    return [row] if row else []


def new_turn_id() -> str:
    return uuid.uuid4().hex[:16]
