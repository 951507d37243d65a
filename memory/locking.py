"""One writer per user across processes, and readers that notice another process's writes.

The TUI, `serve` and a CLI command may all open one user's stores at once. Every write to a
user's memory store or journal runs under an exclusive ``flock`` on ``users/<user>/.lock``
(waiting a bounded time, then failing with "in use by PID N, try again"). After each write the
writer bumps ``users/<user>/.generation``; a reader compares it with the value it saw last and,
when another process changed the store, reopens before it reads, so it never serves a memory
that was forgotten elsewhere nor holds handles to a folder that a rebuild swapped away.

The lock is re-entrant within a process (the privacy service holds it around a memory forget
and a journal rewrite), and a process that dies releases it: the kernel drops its ``flock``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from pathlib import Path
from typing import Iterator

from assistant.errors import StoreBusyError

DEFAULT_WAIT_S = 15.0
LOCK_NAME = ".lock"
GENERATION_NAME = ".generation"

_registry_lock = threading.Lock()
_locks: dict[str, "_ProcessLock"] = {}


class _ProcessLock:
    """The flock of one lock file, shared by every thread of this process, re-entrant."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.thread_lock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None

    def acquire(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        if not self.thread_lock.acquire(timeout=max(wait_s, 0.001)):
            raise StoreBusyError(f"{self.path.parent.name}'s data is busy in this process; try again in a moment")
        if self.depth:
            self.depth += 1
            return
        try:
            self._flock(deadline)
        except BaseException:
            self.thread_lock.release()
            raise
        self.depth = 1

    def _flock(self, deadline: float) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    who = f"PID {holder}" if holder else "another process"
                    raise StoreBusyError(
                        f"{self.path.parent.name}'s memory and journal are in use by {who}; try again in a moment"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0 and self.fd is not None:
            import fcntl

            fd, self.fd = self.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self.thread_lock.release()


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _process_lock(path: Path) -> _ProcessLock:
    key = str(path)
    with _registry_lock:
        if key not in _locks:
            _locks[key] = _ProcessLock(path)
        return _locks[key]


@contextlib.contextmanager
def user_lock(folder: Path, wait_s: float | None = None) -> Iterator[None]:
    """Hold the exclusive lock of the user whose folder is ``folder``."""
    if os.name != "posix":  # pragma: no cover - fcntl is POSIX only; one process at a time there
        yield
        return
    wait = DEFAULT_WAIT_S if wait_s is None else wait_s
    env = os.environ.get("ASSISTANT_LOCK_WAIT_S")
    if wait_s is None and env:
        try:
            wait = float(env)
        except ValueError:
            pass
    lock = _process_lock(Path(folder) / LOCK_NAME)
    lock.acquire(wait)
    try:
        yield
    finally:
        lock.release()


def read_generation(folder: Path) -> str:
    """The store's change counter ('' before the first write); cheap enough to read before each read."""
    try:
        return (Path(folder) / GENERATION_NAME).read_text().strip()
    except (OSError, ValueError):
        return ""


def bump_generation(folder: Path) -> str:
    """Record that this process changed the user's stores (call with the lock held)."""
    path = Path(folder) / GENERATION_NAME
    old = read_generation(folder)
    try:
        number = int(old.split(":")[0]) + 1 if old else 1
    except ValueError:
        number = 1
    value = f"{number}:{os.getpid()}:{time.time_ns()}"
    tmp = path.with_name(f"{GENERATION_NAME}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return value


class Guard:
    """The lock and generation counter of one user's folder, as seen by one open store."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.seen = read_generation(self.folder)

    def changed(self) -> bool:
        return read_generation(self.folder) != self.seen

    @contextlib.contextmanager
    def write(self, bump: bool = True) -> Iterator[bool]:
        """Hold the lock; yields whether another process changed the store since we last looked."""
        with user_lock(self.folder):
            stale = self.changed()
            try:
                yield stale
            finally:  # bumped even after a failed write: others then reopen rather than guess
                self.seen = bump_generation(self.folder) if bump else read_generation(self.folder)

    def mark_seen(self) -> None:
        self.seen = read_generation(self.folder)
