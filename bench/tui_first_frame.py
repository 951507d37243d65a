"""Time from process start to the TUI's first painted frame (prints numbers, asserts nothing).

    python -m bench.tui_first_frame

Runs the real app headless in a fresh process with a scratch data directory: the model is not
loaded before the first frame (it loads in a worker afterwards), so this is the time a user waits
to see the window. Each run is a separate interpreter, so imports are counted.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import time, sys
t0 = float(sys.argv[1])
from assistant import settings as S
from tui.app import make_app
app = make_app(S.load(env={}), user="me", pack="general", onboarding=False)
def first_frame():
    print(f"FIRST_FRAME {time.time() - t0:.3f}", flush=True)
    import os
    os._exit(0)  # do not wait for the model load that starts after the first frame
app.call_after_refresh(first_frame)
app.run(headless=True, size=(100, 30))
"""


def main() -> None:
    times = []
    for _ in range(5):
        with tempfile.TemporaryDirectory() as home:
            env = dict(os.environ, ASSISTANT_HOME=home)
            import time

            out = subprocess.run([sys.executable, "-c", CHILD, str(time.time())], env=env, capture_output=True, text=True,
                                 timeout=120)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("FIRST_FRAME")), None)
            if line is None:
                print(out.stderr[-2000:])
                raise SystemExit(1)
            times.append(float(line.split()[1]))
    print(f"first frame after process start: median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s (5 runs)")


if __name__ == "__main__":
    main()
