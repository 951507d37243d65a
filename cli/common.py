"""What every command group shares: settings from the flags, the assistant, argument types, and how
answers and errors are printed. Light: nothing heavy is imported at module level."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def settings_from(args: argparse.Namespace):
    from assistant import settings as settings_mod

    overrides = {
        "model.name": getattr(args, "model", None),
        "chat.user": getattr(args, "user", None),
        "chat.pack": getattr(args, "pack", None),
    }
    return settings_mod.load(overrides=overrides)


def make_assistant(args: argparse.Namespace, quiet: bool = False):
    from assistant.core import Assistant
    from personalization.learner import Learner

    return Assistant(settings_from(args), progress=None if quiet else (lambda m: err(f"[{m}]")), learner=Learner)


def gen_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed, "max_new_tokens": args.max_tokens,
    }


def print_sources(reply: Any) -> None:
    """What the answer used, as the TUI's panel shows it: notes by file and heading, memories by text."""
    for notice in getattr(reply, "notices", ()):
        err(f"[notice] {notice}")
    if reply.sources:
        err("\n[sources]")
        for i, s in enumerate(reply.sources, 1):
            if s["kind"] == "knowledge":
                err(f"  [{i}] note: {s['file']} > {s['heading']}")
            else:
                err(f"  [{i}] your {s['kind']} ({s['id']}): {s['text'][:100]}")


def command_name() -> str:
    """How the user runs this program: `assistant` when it is on PATH, else the repo's ./run.sh."""
    import shutil

    if shutil.which("assistant"):
        return "assistant"
    run = Path(__file__).resolve().parent.parent / "run.sh"
    if run.is_file():
        return "./run.sh" if run.parent == Path.cwd() else str(run)
    return f"{Path(sys.executable).name} -m cli"


def ranged(kind: type, name: str) -> Callable[[str], Any]:
    """An argparse type that parses ``kind`` and checks the range shared with the settings."""
    from assistant.settings import in_range, range_text

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not in_range(name, value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {range_text(name)}")
        return value

    return parse


def count_arg(low: int, high: int = 1_000_000) -> Callable[[str], int]:
    """An argparse type for a whole number in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: it must be between {low} and {high}")
        return value

    return parse


def add_common(p: argparse.ArgumentParser, gen: bool = False) -> None:
    p.add_argument("--user", help="whose memory and adapter apply (default: chat.user in config)")
    p.add_argument("--pack", help="domain pack (default: chat.pack in config)")
    p.add_argument("--model", help="model: 'default', a model folder or a .gguf file (overrides model.name)")
    if gen:
        p.add_argument("--temperature", type=ranged(float, "temperature"), help="0 = greedy (reproducible); 0 to 5")
        p.add_argument("--top-p", type=ranged(float, "top_p"), dest="top_p", help="nucleus sampling, in (0, 1]")
        p.add_argument("--seed", type=ranged(int, "seed"))
        p.add_argument("--max-tokens", type=ranged(int, "max_new_tokens"), dest="max_tokens", help="1 to 8192")
        p.add_argument("--no-memory", action="store_true", help="answer without recalling or storing memories")
        p.add_argument("--no-adapter", action="store_true", help="use the base model without this user's adapter")


def command_group(sub: Any, name: str, help: str, dest: str) -> tuple[argparse.ArgumentParser, Any]:
    """A command with actions (`assistant memory list`): its parser and its required ACTION subparsers."""
    parser = sub.add_parser(name, help=help)
    return parser, parser.add_subparsers(dest=dest, metavar="ACTION", required=True)
