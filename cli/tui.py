"""`assistant tui`: registration is import-light; textual loads only when the command runs."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_tui(args: argparse.Namespace) -> int:
    from assistant.core import Assistant
    from cli.common import settings_from

    settings = settings_from(args)
    from tui.app import make_app  # textual is imported here, not at registration

    app = make_app(settings, Assistant(settings), user=args.user, pack=args.pack)
    app.run()
    return int(app.return_code or 0)


def register(sub: Any) -> None:
    p = sub.add_parser("tui", help="the terminal chat app (the default with no command)")
    p.add_argument("--user", help="whose memory and adapter apply (default: chat.user in config, else the user last used in the TUI)")
    p.add_argument("--pack", help="domain pack (default: chat.pack in config)")
    p.add_argument("--model", help="model: 'default', a model folder or a .gguf file (overrides model.name)")
    p.set_defaults(func=cmd_tui)
