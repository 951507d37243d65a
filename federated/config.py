"""A device's federation settings and state, in ``$ASSISTANT_HOME/federated/``.

    federated/config.toml   what the user set: budget, idle thresholds (unknown keys are an error)
    federated/joined.json   written by `assistant federate join`, removed by `leave`: the opt-in
    federated/budget.json   seconds trained per day (the minutes-per-day budget)

A device that never ran `join` has no ``joined.json`` and nothing in this package opens a
socket for it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from assistant import paths
from assistant.errors import AssistantError


class FederatedError(AssistantError):
    """A federation problem, with what to do about it."""


@dataclass
class FederatedConfig:
    minutes_per_day: float = 20.0  # training time a device gives the federation per day
    max_cpu_percent: float = 50.0  # other processes' CPU use above this: not idle
    require_mains: bool = True  # on battery (where the platform tells): not idle
    idle_seconds: float = 60.0  # no reply generated for this long before training starts
    steps: int = 8  # training steps per round on this device
    max_len: int = 256  # tokens per training example
    pack: str = "general"  # the pack this device federates


def fed_dir(home: Path | None = None) -> Path:
    return (home or paths.home()) / "federated"


def load_config(home: Path | None = None) -> FederatedConfig:
    path = fed_dir(home) / "config.toml"
    if not path.is_file():
        return FederatedConfig()
    import tomllib

    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FederatedError(f"{path}: {exc}. Fix the file or delete it to use the defaults.") from exc
    known = {f.name: f.type for f in fields(FederatedConfig)}
    out = FederatedConfig()
    for key, value in raw.items():
        if key not in known:
            raise FederatedError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        default = getattr(out, key)
        if isinstance(default, bool) != isinstance(value, bool) or not isinstance(value, (type(default), int)):
            raise FederatedError(f"{path}: {key} must be a {type(default).__name__}, got {value!r}")
        setattr(out, key, type(default)(value))
    if out.minutes_per_day < 0 or out.steps < 1 or out.max_len < 16:
        raise FederatedError(f"{path}: minutes_per_day >= 0, steps >= 1 and max_len >= 16 are required")
    return out


def save_config(cfg: FederatedConfig, home: Path | None = None) -> Path:
    path = fed_dir(home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for key, value in asdict(cfg).items():
        lines.append(f"{key} = {json.dumps(value)}" if not isinstance(value, bool) else f"{key} = {str(value).lower()}")
    _atomic_write(path, "\n".join(lines) + "\n")
    return path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- opt-in
def joined(home: Path | None = None) -> dict[str, Any] | None:
    """The join record (address, pack, when), or None when this device never opted in."""
    path = fed_dir(home) / "joined.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise FederatedError(f"{path} is damaged ({exc}); run `assistant federate leave` and join again") from exc


def record_join(address: str, pack: str, insecure: bool, root_certificates: str | None,
                home: Path | None = None) -> dict[str, Any]:
    rec = {"address": address, "pack": pack, "insecure": insecure, "root_certificates": root_certificates,
           "joined_at": time.time()}
    _atomic_write(fed_dir(home) / "joined.json", json.dumps(rec, indent=2))
    return rec


def leave(home: Path | None = None) -> bool:
    """Opt out. Only the join record goes: journals, memories and adapters stay as they are."""
    path = fed_dir(home) / "joined.json"
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------- budget
def _today() -> str:
    return time.strftime("%Y-%m-%d", time.localtime())


def budget_used_s(home: Path | None = None) -> float:
    path = fed_dir(home) / "budget.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0.0
    return float(data.get(_today(), 0.0))


def add_budget_used(seconds: float, home: Path | None = None) -> float:
    path = fed_dir(home) / "budget.json"
    total = budget_used_s(home) + max(0.0, seconds)
    _atomic_write(path, json.dumps({_today(): round(total, 3)}))
    return total


def budget_left_s(cfg: FederatedConfig, home: Path | None = None) -> float:
    return max(0.0, cfg.minutes_per_day * 60.0 - budget_used_s(home))
