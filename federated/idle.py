"""When a device may train for the federation: idle, on mains power, within its daily budget.

Signals, cheapest first:
- a *busy marker* ``federated/busy`` (a pid inside) that a front end holds while it generates a
  reply or the user types (``generating()``, ``touch_activity()``); a marker whose process died
  does not count;
- the journal: a turn recorded (or rated) in the last ``idle_seconds`` means someone is using
  the assistant (journals are SQLite in WAL mode, so their files' mtimes move with every turn);
- other processes' CPU use (psutil), beyond this process's own;
- the battery (psutil), where the platform reports one.

``IdleGuard.should_pause`` is what the trainer polls between steps (and every 50 ms while
paused), so training stops within one step of the user coming back.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

from assistant import paths
from assistant.process import pid_alive
from federated.config import FederatedConfig, add_budget_used, budget_left_s, fed_dir


def busy_marker(home: Path | None = None) -> Path:
    return fed_dir(home) / "busy"


@contextlib.contextmanager
def generating(home: Path | None = None) -> Iterator[None]:
    """Hold the busy marker while a reply is generated (for front ends in other processes)."""
    path = busy_marker(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def touch_activity(home: Path | None = None) -> None:
    """The user did something (a key press): training pauses for ``idle_seconds``."""
    path = fed_dir(home) / "activity"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


class Presence:
    """What a front end tells a SuperNode on the same machine: the user is typing, a reply is being
    generated. Silent on a device that never joined (it writes nothing under ``federated/``); the
    join record is looked up at most every ``recheck_s`` and a key press touches the activity
    file at most every ``every_s``, so typing costs nothing noticeable."""

    def __init__(self, home: Path | None = None, every_s: float = 0.5, recheck_s: float = 5.0) -> None:
        self.home = home
        self.every_s = every_s
        self.recheck_s = recheck_s
        self._touched = -every_s
        self._checked = -recheck_s
        self._joined = False

    def joined(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= self.recheck_s:
            self._checked = now
            self._joined = (fed_dir(self.home) / "joined.json").is_file()
        return self._joined

    def typing(self) -> None:
        now = time.monotonic()
        if now - self._touched >= self.every_s and self.joined():
            self._touched = now
            touch_activity(self.home)

    def generating(self) -> contextlib.AbstractContextManager[None]:
        return generating(self.home) if self.joined() else contextlib.nullcontext()


def _marker_busy(home: Path | None) -> bool:
    try:
        pid = int(busy_marker(home).read_text().strip() or "0")
    except (OSError, ValueError):
        return False
    return pid_alive(pid)


def _last_activity(home: Path | None) -> float:
    root = home or paths.home()
    newest = 0.0
    candidates = [fed_dir(home) / "activity"]
    users = root / "users"
    if users.is_dir():
        for user in users.iterdir():
            candidates += [user / "journal.sqlite3", user / "journal.sqlite3-wal"]
    for path in candidates:
        with contextlib.suppress(OSError):
            newest = max(newest, path.stat().st_mtime)
    return newest


class IdleGuard:
    """Answers "may I train now?"; counts the seconds trained against the daily budget."""

    def __init__(self, cfg: FederatedConfig, home: Path | None = None) -> None:
        self.cfg = cfg
        self.home = home
        self.reason = ""
        self._checked = 0.0
        self._paused = False
        self._started: float | None = None
        self._proc: Any = None  # a psutil.Process once the CPU is first measured

    def why_not(self) -> str:
        """'' when the device may train now, else the reason it may not."""
        if budget_left_s(self.cfg, self.home) - self._running_s() <= 0:
            return f"daily budget of {self.cfg.minutes_per_day:g} minutes used"
        if _marker_busy(self.home):
            return "a reply is being generated"
        quiet = time.time() - _last_activity(self.home)
        if quiet < self.cfg.idle_seconds:
            return f"the assistant was used {quiet:.0f} s ago"
        return self._machine_busy()

    def _machine_busy(self) -> str:
        try:
            import psutil
        except ImportError:  # psutil is a dependency; without it only the markers count
            return ""
        battery = None
        with contextlib.suppress(Exception):
            battery = psutil.sensors_battery()
        if self.cfg.require_mains and battery is not None and not battery.power_plugged:
            return "on battery power"
        if self._proc is None:
            self._proc = psutil.Process()
            self._proc.cpu_percent(None)
            psutil.cpu_percent(None)
            time.sleep(0.2)
        total = psutil.cpu_percent(None)  # all cores, since the last call
        own = self._proc.cpu_percent(None) / max(1, psutil.cpu_count() or 1)
        for child in self._proc.children(recursive=True):
            with contextlib.suppress(Exception):
                own += child.cpu_percent(None) / max(1, psutil.cpu_count() or 1)
        others = max(0.0, total - own)
        if others > self.cfg.max_cpu_percent:
            return f"other programs use {others:.0f}% of the CPU"
        return ""

    def should_pause(self) -> bool:
        """For the trainer: re-checked at most every 0.25 s."""
        now = time.monotonic()
        if now - self._checked >= 0.25:
            self._checked = now
            self.reason = self.why_not()
            self._paused = bool(self.reason)
            self._account(paused=self._paused)
        return self._paused

    def over_budget(self) -> bool:
        return budget_left_s(self.cfg, self.home) - self._running_s() <= 0

    def wait(self, timeout_s: float, poll_s: float = 0.5) -> bool:
        """Wait up to ``timeout_s`` for the device to become idle; True when it is."""
        end = time.monotonic() + timeout_s
        while True:
            self.reason = self.why_not()
            if not self.reason:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(poll_s)

    # -------------------------------------------------------------- budget bookkeeping
    def start(self) -> None:
        self._started = time.monotonic()

    def _running_s(self) -> float:
        return 0.0 if self._started is None else time.monotonic() - self._started

    def _account(self, paused: bool) -> None:
        if paused and self._started is not None:  # paused time is not training time
            add_budget_used(self._running_s(), self.home)
            self._started = None
        elif not paused and self._started is None:
            self._started = time.monotonic()

    def stop(self) -> float:
        """Charge the training time since ``start`` to today's budget; returns the seconds."""
        spent = self._running_s()
        if self._started is not None:
            add_budget_used(spent, self.home)
        self._started = None
        return spent
