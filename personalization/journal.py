"""The journal: every turn, rating and correction of one user, in SQLite (WAL).

It is the single source of training data. ``secure_delete`` is on, so deleted rows are zeroed on
disk rather than left in free pages. The schema is versioned with ``PRAGMA user_version``;
upgrades run in order when a journal is opened.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from assistant import paths
from assistant.errors import AssistantError

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._upgrade()
        except sqlite3.DatabaseError as exc:
            raise AssistantError(
                f"the journal {self.path} cannot be opened ({exc}). Move it aside to start a new one; "
                "your memories and adapters are unaffected."
            ) from exc

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

    # ------------------------------------------------------------ conversations
    def new_conversation(self, pack: str, title: str = "") -> Conversation:
        now = time.time()
        conv = Conversation(uuid.uuid4().hex[:12], pack, title, now, now)
        with self._lock:
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
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY updated DESC", args).fetchall()
        return [Conversation(*r) for r in rows]

    def rename_conversation(self, conv_id: str, title: str) -> None:
        with self._lock:
            self._db.execute("UPDATE conversations SET title=? WHERE id=?", (title, conv_id))

    def delete_conversation(self, conv_id: str) -> None:
        with self._lock, self._tx():
            self._db.execute("DELETE FROM turns WHERE conversation_id=?", (conv_id,))
            self._db.execute("DELETE FROM conversations WHERE id=?", (conv_id,))

    # ------------------------------------------------------------ turns
    def record(self, turn: Turn) -> Turn:
        with self._lock, self._tx():
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
        self._feedback(turn_id, "correction=?", correction.strip())

    def _feedback(self, turn_id: str, assignment: str, value: Any) -> None:
        with self._lock:
            cur = self._db.execute(f"UPDATE turns SET {assignment}, feedback_at=? WHERE id=?", (value, time.time(), turn_id))
        if cur.rowcount == 0:
            raise AssistantError(f"no turn {turn_id!r} in {self.user}'s journal")

    def turn(self, turn_id: str) -> Turn | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM turns WHERE id=?", (turn_id,)).fetchone()
        return _turn(row) if row else None

    def turns(self, conversation_id: str | None = None, pack: str | None = None, since: float = 0.0) -> list[Turn]:
        sql, args = "SELECT * FROM turns WHERE created >= ?", [since]
        if conversation_id:
            sql += " AND conversation_id=?"
            args.append(conversation_id)
        if pack:
            sql += " AND pack=?"
            args.append(pack)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created", args).fetchall()
        return [_turn(r) for r in rows]

    def feedback(self, pack: str, since: float = 0.0) -> list[Turn]:
        """Turns of ``pack`` with a rating or correction given after ``since``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM turns WHERE pack=? AND feedback_at IS NOT NULL AND feedback_at > ? ORDER BY feedback_at",
                (pack, since),
            ).fetchall()
        return [_turn(r) for r in rows]

    def delete_turns(self, pack: str | None = None) -> int:
        with self._lock, self._tx():
            if pack:
                n = self._db.execute("DELETE FROM turns WHERE pack=?", (pack,)).rowcount
                self._db.execute("DELETE FROM conversations WHERE pack=?", (pack,))
            else:
                n = self._db.execute("DELETE FROM turns").rowcount
                self._db.execute("DELETE FROM conversations")
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
        return n

    def __iter__(self) -> Iterator[Turn]:
        return iter(self.turns())


def _turn(row: tuple[Any, ...]) -> Turn:
    return Turn(
        id=row[0], conversation_id=row[1], pack=row[2], created=row[3], message=row[4],
        prompt=json.loads(row[5]), reply=row[6], memory_ids=json.loads(row[7]), adapter=row[8],
        rating=row[9], correction=row[10], feedback_at=row[11], source=row[12], finish_reason=row[13],
    )


def new_turn_id() -> str:
    return uuid.uuid4().hex[:16]
