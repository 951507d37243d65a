"""Every on-disk path of the project, from one place.

One environment variable, ``ASSISTANT_HOME``, moves everything (tests point it at ``tmp_path``).
Without it the platform's user data directory is used. Nothing here creates directories at
import time: callers ask for a path and create it when they write.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

APP_NAME = "personal-assistant"
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def home() -> Path:
    """The data directory: ``$ASSISTANT_HOME`` or the platform's user data dir."""
    env = os.environ.get("ASSISTANT_HOME")
    if env:
        return Path(env).expanduser().resolve()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / APP_NAME


def config_file() -> Path:
    return home() / "config.toml"


def models_dir() -> Path:
    return home() / "models"


def user_packs_dir() -> Path:
    return home() / "packs"


def repo_data_dir() -> Path:
    """Shipped assets (packs, guard set, benchmark suites). Never user data."""
    return Path(__file__).resolve().parent.parent / "data"


def check_user_name(user: str) -> str:
    """User names become directory names: keep them to a safe alphabet."""
    from assistant.errors import ConfigError

    if not _USER_RE.match(user or ""):
        raise ConfigError(
            f"invalid user name {user!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return user


def users_dir() -> Path:
    return home() / "users"


def user_dir(user: str) -> Path:
    return users_dir() / check_user_name(user)


def journal_file(user: str) -> Path:
    return user_dir(user) / "journal.sqlite3"


def memory_dir(user: str) -> Path:
    return user_dir(user) / "memory"


def adapters_dir(user: str, pack: str) -> Path:
    return user_dir(user) / "adapters" / pack


def api_dir() -> Path:
    return home() / "api"
