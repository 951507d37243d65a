"""`assistant memory ...`, `assistant user ...` and `assistant pack ...`: the user's stores and the packs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from assistant.errors import AssistantError
from cli.common import command_group, command_name, count_arg, settings_from


def cmd_memory(args: argparse.Namespace) -> int:
    from memory.store import MemoryStore

    settings = settings_from(args)
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
            from assistant import paths
            from assistant.encryption import export_text

            data = export_text(store, plain=args.plain)
            if args.out:
                paths.write_private(Path(args.out), data.encode())
                print(f"exported {len(store.export()['memories'])} memories to {args.out}")
            else:
                print(data)
        elif action == "import":
            from assistant.encryption import import_data

            print(f"imported {store.import_(import_data(Path(args.file)))} memories")
    finally:
        store.close()
    return 0




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

    settings = settings_from(args)
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
        for problem in problems:
            print(problem)
        if problems:
            print(f"{len(problems)} problem(s) in {args.path}")
            return 1
        pack = packs.load(Path(args.path))
        print(f"{args.path}: valid pack {pack.id!r} ({len(pack.knowledge_files())} knowledge documents, "
              f"{len(pack.train_examples())} training examples, {len(pack.eval_probes())} eval probes)")
        return 0
    if action == "new":
        root = packs.scaffold(args.name, Path(args.dir) if args.dir else Path.cwd())
        print(f"created {root}; check it with `{command_name()} pack validate {root}`")
        return 0
    if action == "install":
        pack = packs.install(Path(args.path))
        print(f"installed {pack.id} into {paths.user_packs_dir() / pack.id}")
        return 0
    raise AssistantError(f"unknown pack command {action}")  # pragma: no cover


def register(sub: Any) -> None:
    p, msub = command_group(sub, "memory", "see, search, add, edit, forget, export and import memories", "memory_cmd")
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

    p, usub = command_group(sub, "user", "manage users", "user_cmd")
    u = usub.add_parser("delete", help="remove every trace of a user")
    u.add_argument("name")
    u.add_argument("--yes", action="store_true")
    p.set_defaults(func=cmd_user)
    _register_user_list(usub)

    p, psub = command_group(sub, "pack", "list, validate, scaffold and install domain packs", "pack_cmd")
    psub.add_parser("list", help="list available packs (and broken ones)")
    q = psub.add_parser("validate", help="check a pack folder; exits non-zero on problems")
    q.add_argument("path")
    q = psub.add_parser("new", help="scaffold a new pack")
    q.add_argument("name")
    q.add_argument("--dir", help="where to create it (default: current folder)")
    q = psub.add_parser("install", help="copy a pack folder into your packs")
    q.add_argument("path")
    p.set_defaults(func=cmd_pack)
