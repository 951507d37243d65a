"""The hook a long-running front end (TUI, local server) calls at start: if this device opted in
with `assistant federate join`, start its SuperNode in the background; if it never did, return
None without touching the network (no socket, no Flower import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def start_if_joined(home: Path | None = None) -> Any:
    from federated import config as config_mod

    rec = config_mod.joined(home)
    if rec is None:
        return None
    from assistant import paths
    from federated import runtime

    return runtime.start_supernode(home or paths.home(), rec["address"], runtime.free_port(), bool(rec["insecure"]),
                                   rec.get("root_certificates"))
