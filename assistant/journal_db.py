"""How the journal's SQLite file is opened: plain ``sqlite3``, or SQLCipher (``sqlcipher3``) when
the data directory is encrypted (see assistant/crypto.py). The only importer of sqlcipher3.

SQLCipher encrypts every page of the file, its free pages and its WAL included, with the raw key
that ``crypto.DataKey.sqlcipher_key`` derives, so it runs no key derivation of its own.

``prepare`` brings a journal to the form the data directory asks for before it is opened: a plain
one is converted when encryption is on (``sqlcipher_export`` into ``journal.sqlite3.convert``,
checked, fsynced, renamed over the old file, whose blocks are zeroed), an encrypted one when
encryption is being turned off. A crash leaves the old file or the new one, never half.
"""

from __future__ import annotations

import functools
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

from assistant import crypto, paths
from assistant.errors import AssistantError, LockedError

SQLITE_HEADER = b"SQLite format 3\x00"
TABLES = ("conversations", "turns")


def require_sqlcipher() -> Any:
    try:
        from sqlcipher3 import dbapi2
    except ImportError:
        raise AssistantError(
            "this data directory's journal is encrypted and needs SQLCipher: run `pip install sqlcipher3` "
            "(scripts/install.sh installs it); nothing was read or changed"
        ) from None
    return dbapi2


@functools.cache
def _errors(name: str) -> tuple[type[Exception], ...]:
    """sqlite3's exception class ``name`` and sqlcipher3's (separate classes), when it is installed."""
    try:
        from sqlcipher3 import dbapi2
    except ImportError:
        return (getattr(sqlite3, name),)
    return (getattr(sqlite3, name), getattr(dbapi2, name))


def db_errors() -> tuple[type[Exception], ...]:
    """``DatabaseError`` of sqlite3 and of sqlcipher3."""
    return _errors("DatabaseError")


def any_errors() -> tuple[type[Exception], ...]:
    """``Error`` of sqlite3 and of sqlcipher3."""
    return _errors("Error")


def connect(target: str | Path, key: crypto.DataKey | None, **kwargs: Any) -> Any:
    """A DB-API connection: sqlite3 for a plain file, sqlcipher3 keyed for an encrypted one."""
    if key is None:
        return sqlite3.connect(target, **kwargs)
    return _cipher_connect(target, key, **kwargs)


def _cipher_connect(target: str | Path, key: crypto.DataKey | None, **kwargs: Any) -> Any:
    """A sqlcipher3 connection, keyed, or unkeyed for a plain file (ATTACH ... KEY needs one)."""
    db = require_sqlcipher().connect(str(target), **kwargs)
    try:
        if key is not None:
            db.execute(f'PRAGMA key = "{key.sqlcipher_key}"')  # hex digits only: safe to format in
        db.execute("PRAGMA cipher_log_level = NONE")  # errors reach the caller as exceptions
    except BaseException:
        db.close()
        raise
    return db


class DamagedSource:
    """A read-only connection to a damaged journal that reconnects after every error: SQLCipher
    keeps a page's failed authentication for the rest of a connection's life, so one bad page
    would stop the row-by-row salvage there. Rows are fetched as the statement runs."""

    def __init__(self, path: Path, key: crypto.DataKey | None) -> None:
        self._target, self._key = f"file:{path}?mode=ro", key
        self._db = connect(self._target, key, uri=True)

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> "_Rows":
        try:
            return _Rows(self._db.execute(sql, args).fetchall())
        except db_errors():
            self._db.close()
            self._db = connect(self._target, self._key, uri=True)
            raise

    def close(self) -> None:
        self._db.close()


class _Rows(list):
    def fetchall(self) -> list[Any]:
        return list(self)

    def fetchone(self) -> Any:
        return self[0] if self else None


def kind(path: Path) -> str:
    """"new" (missing or empty), "plain" (an SQLite header) or "other" (encrypted, or damaged)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return "new"
    if not head:
        return "new"
    return "plain" if head == SQLITE_HEADER else "other"


def looks_encrypted(path: Path) -> bool:
    """Whether ``path`` reads like random bytes (an SQLCipher file), not like damaged SQLite or text."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    if len(head) < 1024 or os.path.getsize(path) % 512:
        return False
    counts = [0] * 256
    for b in head:
        counts[b] += 1
    entropy = -sum(c / len(head) * math.log2(c / len(head)) for c in counts if c)
    return entropy > 7.5


def prepare(path: Path, key: crypto.DataKey | None, seal: bool) -> crypto.DataKey | None:
    """The key to open ``path`` with, after converting the file to the form asked for (under the
    caller's user lock). Refuses, changing nothing, an encrypted-looking file without a key."""
    _drop_stale(path)
    found = kind(path)
    if key is None:
        if found == "other" and looks_encrypted(path):
            raise LockedError(
                f"{path} looks encrypted, but {crypto.state_path()} is missing: restore that file (it "
                "holds the wrapped key) from a backup of the data directory. Nothing was read or changed."
            )
        return None
    if seal:
        if found == "plain":
            convert(path, key, to_sealed=True)
        return key
    if found == "other":
        try:
            convert(path, key, to_sealed=False)
        except db_errors():
            return key  # damaged: opened with the key, it goes through the salvage path
        return None
    return None


def _drop_stale(path: Path) -> None:
    """A conversion's copy left by a crash before it took the journal's name (the journal is whole)."""
    tmp = path.with_name(path.name + ".convert")
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)


def convert(path: Path, key: crypto.DataKey, to_sealed: bool) -> None:
    """Rewrite the journal at ``path`` encrypted (or plain) through ``sqlcipher_export``."""
    tmp = path.with_name(path.name + ".convert")
    _drop_stale(path)
    os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    src = _cipher_connect(path, None if to_sealed else key, isolation_level=None)
    try:
        src.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        version = int(src.execute("PRAGMA user_version").fetchone()[0])
        counts = [src.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES]
        src.execute("ATTACH DATABASE ? AS target KEY ?", (str(tmp), key.sqlcipher_key if to_sealed else ""))
        src.execute("SELECT sqlcipher_export('target')")
        src.execute(f"PRAGMA target.user_version = {version}")
        src.execute("DETACH DATABASE target")
    except BaseException:
        src.close()
        tmp.unlink(missing_ok=True)
        raise
    src.close()
    _check(tmp, key if to_sealed else None, counts)
    _swap(tmp, path)


def _check(tmp: Path, key: crypto.DataKey | None, counts: list[int]) -> None:
    """The converted copy holds every row; fsynced before it may take the journal's name."""
    db = connect(tmp, key, isolation_level=None)
    try:
        ok = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        got = [db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES]
    finally:
        db.close()
    if ok != "ok" or got != counts:
        tmp.unlink(missing_ok=True)
        raise AssistantError(f"converting the journal {tmp.name} failed ({ok}, rows {got} of {counts}); nothing was changed")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` over ``path``, then zero the old file's bytes (through a kept descriptor)."""
    old = os.open(path, os.O_RDWR)
    try:
        os.replace(tmp, path)
        for suffix in ("-wal", "-shm"):  # the old file's (checkpointed, empty); the new one makes its own
            Path(str(path) + suffix).unlink(missing_ok=True)
        paths.fsync_dir(path.parent)
        crypto.overwrite(old)
    finally:
        os.close(old)
