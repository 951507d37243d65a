"""Facts about other processes that the stores' marks and locks need (foundation: imports nothing of the project)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists, also when it belongs to another user (signal 0 is refused)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
