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
# One rule for every name that becomes a path component (users and packs): a safe alphabet,
# no separators, no leading dot (so never "." or ".."), bounded length.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_USER_RE = _NAME_RE  # older name, still read by the TUI's user list
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


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


def check_name(name: object, what: str = "user") -> str:
    """User and pack names become directory names: one safe alphabet for both."""
    from assistant.errors import UnsafeNameError

    shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80]) + "..."
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UnsafeNameError(
            f"invalid {what} name {shown}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', no '..')"
        )
    return name


def check_user_name(user: object) -> str:
    return check_name(user, "user")


def check_pack_name(pack: object) -> str:
    return check_name(pack, "pack")


def inside_home(path: Path | str) -> Path:
    """``path`` resolved, after checking it stays under the data directory (links followed).

    Call it before any write or delete that a name from outside (a flag, an API field, a
    manifest) helped to build.
    """
    from assistant.errors import UnsafeNameError

    root = home().resolve()
    resolved = Path(os.path.abspath(path))
    try:
        resolved = resolved.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop: refuse rather than guess
        raise UnsafeNameError(f"{path} cannot be resolved (a symbolic link loop?); nothing was changed") from exc
    if resolved != root and root not in resolved.parents:
        raise UnsafeNameError(f"{path} is outside the data directory {root}; nothing was changed")
    return resolved


def private_umask() -> None:
    """New files and folders of this process are the user's alone (0600 / 0700)."""
    if os.name == "posix":
        os.umask(0o077)


def make_private(path: Path) -> None:
    """Folders 0700 and files 0600 under ``path`` (itself included); missing paths are skipped."""
    if os.name != "posix":
        return
    path = Path(path)
    items = [path] + (list(path.rglob("*")) if path.is_dir() else [])
    for item in items:
        try:
            if item.is_symlink():
                continue
            os.chmod(item, PRIVATE_DIR if item.is_dir() else PRIVATE_FILE)
        except OSError:
            pass


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents under the data directory) as 0700 folders."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    root = home()
    for p in missing + ([root] if root.exists() else []):
        if p == root or root in p.parents:
            try:
                os.chmod(p, PRIVATE_DIR)
            except OSError:
                pass
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (best effort where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as 0600, atomically: a temporary file, fsync, rename, fsync the folder."""
    import threading

    path = Path(path)
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def users_dir() -> Path:
    return home() / "users"


def user_dir(user: str) -> Path:
    return users_dir() / check_user_name(user)


def journal_file(user: str) -> Path:
    return user_dir(user) / "journal.sqlite3"


def memory_dir(user: str) -> Path:
    return user_dir(user) / "memory"


def adapters_dir(user: str, pack: str) -> Path:
    return user_dir(user) / "adapters" / check_pack_name(pack)


def pack_adapters_dir(pack: str) -> Path:
    return home() / "pack-adapters" / check_pack_name(pack)


def knowledge_dir(pack: str) -> Path:
    return home() / "knowledge" / check_pack_name(pack)


def lock_file(user: str) -> Path:
    return user_dir(user) / ".lock"


def api_dir() -> Path:
    return home() / "api"
