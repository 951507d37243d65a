"""The TUI's keys, chosen not to clash with terminal multiplexers and terminals.

Avoided on purpose:

- ctrl+b: tmux's prefix key (the bad-answer key used to be ctrl+b: inside tmux it never arrived).
- ctrl+a: GNU screen's command key (and "start of line" in the prompt).
- ctrl+s / ctrl+q: XON/XOFF flow control in a terminal that has it on (``stty ixon``). The app
  turns flow control off while it runs (Textual does, like ``stty -ixon``), so ctrl+q (quit) and
  ctrl+s (save in an editor) do arrive; nothing else depends on them.
- ctrl+z: suspends the app (``fg`` brings it back), as in any terminal program; undo in an editor.
- ctrl+c: stops an answer while one is streaming (as in the line chat); otherwise copies the
  prompt's selection (and says how to quit).
- ctrl+w, ctrl+u, ctrl+k, ctrl+e, ctrl+d, ctrl+x, ctrl+v: editing keys of the prompt.

Every action can be remapped in config.toml (``[tui.keys] action = "key"``); a remapped key that
the running multiplexer swallows is warned about at start.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Mapping, Sequence

# (action, default key, description): ids for `settings.tui.keys` remapping.
KEYS: list[tuple[str, str, str]] = [
    ("cancel", "escape", "stop the answer (ctrl+c too)"),
    ("rate_up", "ctrl+g", "good answer (+1)"),
    ("rate_down", "ctrl+o", "bad answer (-1)"),
    ("correct", "ctrl+r", "correct the answer"),
    ("continue", "f6", "continue an answer that stopped at the token limit"),
    ("copy", "ctrl+y", "copy the answer"),
    ("compose", "ctrl+t", "write a multi-line message"),
    ("new_chat", "ctrl+n", "new chat"),
    ("help", "f1", "help"),
    ("memories", "f2", "memories"),
    ("conversations", "f3", "conversations"),
    ("packs", "f4", "switch pack"),
    ("learning", "f5", "learning and adapters"),
    ("screenshot", "f12", "save a screenshot (SVG)"),
    ("quit", "ctrl+q", "quit"),
]
OTHER_KEYS: list[tuple[str, str, str]] = [
    ("submit", "enter", "send the message"),
    ("history", "up / down", "previous / next message you sent"),
    ("commands", "/good /bad /correct /continue", "typed in the prompt: the same as the keys"),
    ("stop", "ctrl+c", "stop the answer while it streams"),
    ("suspend", "ctrl+z", "suspend (fg brings it back)"),
    ("select", "click an answer", "show the notes and memories it used"),
    ("(editor)", "ctrl+s", "save in the correction / memory editor"),
    ("(memories)", "ctrl+e, del", "edit / forget the highlighted memory"),
    ("(conversations)", "ctrl+r, del", "rename / delete the highlighted conversation"),
    ("(learning)", "ctrl+l", "learn from your feedback now"),
    ("(learning)", "enter, ctrl+o", "use the highlighted adapter version (or the base model)"),
    ("select", "click a suggestion", "put a starter question in the prompt"),
    ("palette", "ctrl+p", "command palette"),
]
SHOWN = {"cancel", "rate_up", "rate_down", "correct", "help", "memories", "conversations", "learning", "quit"}

_TMUX_KEY = re.compile(r"^(?:C-|\^)(.)$")


def _tmux_prefixes(env: Mapping[str, str]) -> list[str]:
    """tmux's prefix keys (prefix and prefix2) as Textual key names; ctrl+b when tmux cannot be asked."""
    try:
        out = subprocess.run(["tmux", "show-options", "-gv", "prefix"], capture_output=True, text=True, timeout=1,
                             env=dict(env)).stdout.split()
        out += subprocess.run(["tmux", "show-options", "-gv", "prefix2"], capture_output=True, text=True, timeout=1,
                              env=dict(env)).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    keys = []
    for raw in out or ["C-b"]:
        match = _TMUX_KEY.match(raw)
        if match:
            keys.append(f"ctrl+{match.group(1).lower()}")
    return keys or ["ctrl+b"]


def multiplexer_keys(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Keys the running terminal multiplexer takes for itself: {key: "tmux's prefix", ...}."""
    env = os.environ if env is None else env
    taken: dict[str, str] = {}
    if env.get("TMUX"):
        for key in _tmux_prefixes(env):
            taken[key] = "tmux's prefix key"
    if env.get("STY"):
        taken["ctrl+a"] = "GNU screen's command key"
    return taken


def clashes(rows: Sequence[tuple[str, str, str]], taken: Mapping[str, str]) -> list[str]:
    """Warnings for actions bound to a key in ``taken``."""
    out = []
    for action, keys, _desc in rows:
        for key in keys.split(","):
            if key.strip() in taken:
                out.append(f"{key.strip()} ({action}) is {taken[key.strip()]}: it will not reach the app; "
                           f'remap it in config.toml: [tui.keys] {action} = "..."')
    return out
