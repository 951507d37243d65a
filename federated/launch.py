"""Start Flower's SuperLink or SuperNode with a longer start window for app processes.

Flower gives a freshly claimed app task 30 s to start (import Flower, connect) before it hands
the task to another process; a slow or busy device (a phone, a laptop doing other work, this
2-core test machine at load average 20+) misses that and the task is claimed again and again.
``PA_FED_START_WINDOW_S`` (default 120 s) widens the window (and with it the heartbeat patience
of running tasks), set on the module globals Flower reads it from.

    python -m federated.launch flower-supernode ARGS...
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    which, rest = sys.argv[1], sys.argv[2:]
    window = float(os.environ.get("PA_FED_START_WINDOW_S", "120"))
    from flwr.supercore.corestate import in_memory_corestate, sql_corestate

    for module in (in_memory_corestate, sql_corestate):
        # flwr imports the constant into each module (not re-exported): patched here on purpose
        module.HEARTBEAT_DEFAULT_INTERVAL = max(window, 30.0)  # type: ignore[attr-defined]
    sys.argv = [which] + rest
    if which == "flower-supernode":
        from flwr.supernode.cli import flower_supernode as entry
    elif which == "flower-superlink":
        from flwr.superlink.cli import flower_superlink as entry
    else:
        raise SystemExit(f"unknown Flower entry point {which!r}")
    entry()  # Flower's entry points return None (they exit on errors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
