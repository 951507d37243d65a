"""`assistant learn` and `assistant adapters` (registration imports nothing heavy)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from assistant.errors import AssistantError
from cli.common import command_group, count_arg


def _assistant(args: argparse.Namespace):
    from assistant.core import Assistant
    from cli.common import settings_from
    from personalization.learner import Learner

    return Assistant(settings_from(args), progress=lambda m: print(f"[{m}]", file=sys.stderr, flush=True),
                     learner=Learner)


def cmd_learn(args: argparse.Namespace) -> int:
    from assistant.paths import check_pack_name, check_user_name

    assistant = _assistant(args)
    user = check_user_name(args.user or assistant.settings.chat.user)
    pack = check_pack_name(args.pack or assistant.settings.chat.pack)
    learner = assistant.learner
    if args.status:
        st = learner.status(user, pack)
        print(f"{user}/{pack}: {st.pending} new example(s) since the last round "
              f"(a round starts by itself at {assistant.settings.learning.min_new_examples})")
        print(f"live adapter: {st.live or 'none (base model)'}; versions: {', '.join(st.versions) or 'none'}")
        if st.running:
            print(f"round running: {st.progress}")
        if st.last:
            print(f"last round: {'promoted ' + str(st.last.get('version')) if st.last.get('promoted') else 'rejected'}"
                  f" - {st.last.get('reason')}")
        return 0

    def progress(p: Any) -> None:
        print(f"\r  {p.phase}: step {p.step}/{p.total_steps}  loss {p.loss:.3f}  examples {p.examples}  "
              f"{p.elapsed_s:.0f} s, eta {p.eta_s:.0f} s   ", end="", file=sys.stderr, flush=True)

    result = learner.run_round(user, pack, on_progress=progress)
    print(file=sys.stderr)
    print(result.table())
    return 0


def cmd_pack_train(args: argparse.Namespace) -> int:
    from assistant.paths import check_pack_name
    from personalization.evaluate import pack_eval_score

    check_pack_name(args.name)  # an empty name must not fall back to the default pack
    assistant = _assistant(args)
    pack = assistant.pack(args.name)
    engine = assistant.engine
    limit = args.eval_limit
    before = pack_eval_score(engine, pack, limit=limit)
    print(f"{pack.id} eval before: {before['passed']}/{before['n']} = {before['pass_rate']:.0%}")

    def progress(p: Any) -> None:
        print(f"\r  step {p.step}/{p.total_steps}  loss {p.loss:.3f}  eta {p.eta_s:.0f} s   ", end="", file=sys.stderr, flush=True)

    result = assistant.learner.train_pack(pack.id, steps=args.steps, on_progress=progress)
    print(file=sys.stderr)
    print(result.table())
    if result.promoted:
        from assistant.adapters import pack_store

        store = pack_store(pack.id)
        engine.set_adapter(f"pack/{pack.id}/{result.version}", store.deltas(result.version, engine.model))
        after = pack_eval_score(engine, pack, limit=limit)
        print(f"{pack.id} eval after:  {after['passed']}/{after['n']} = {after['pass_rate']:.0%}")
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    from assistant import settings as settings_mod
    from assistant.adapters import AdapterStore

    settings = settings_mod.load(overrides={"chat.user": args.user, "chat.pack": args.pack})
    store = AdapterStore(settings.chat.user, settings.chat.pack)
    action = args.adapters_cmd
    current = store.current()
    if action == "list":
        versions = store.versions()
        if not versions:
            print(f"no adapters yet for {store.user}/{store.pack} (the base model is used)")
        for v in versions:
            meta = store.meta(v)
            gate = meta.get("gate", {}).get("candidate", {})
            mark = "*" if v == current else " "
            print(f"{mark} {v}  steps {meta.get('steps')}  held-out loss {gate.get('user_loss', float('nan')):.3f}  "
                  f"guard ppl {gate.get('guard_ppl', float('nan')):.2f}")
        return 0
    if action == "show":
        version = args.version or current
        if not version:
            raise AssistantError("no live adapter: name a version (see `assistant adapters list`)")
        print(json.dumps(store.meta(version), indent=2))
        return 0
    if action == "rollback":
        target = store.rollback(args.version)
        print(f"live adapter for {store.user}/{store.pack}: {target or 'none (base model)'}")
        return 0
    if action == "prune":
        removed = store.prune(args.keep if args.keep is not None else settings.learning.keep_versions)
        print(f"removed {', '.join(removed) if removed else 'nothing'}")
        return 0
    raise AssistantError(f"unknown action {action}")  # pragma: no cover


def register(sub: Any) -> None:
    p = sub.add_parser("learn", help="run a learning round now and print the gate's table (or --status)")
    p.add_argument("--user")
    p.add_argument("--pack")
    p.add_argument("--model")
    p.add_argument("--status", action="store_true", help="show pending examples, the last round and versions")
    p.set_defaults(func=cmd_learn)

    _register_pack_train(sub)

    p, asub = command_group(sub, "adapters", "list, show, roll back and prune a user's adapter versions", "adapters_cmd")
    asub.add_parser("list", help="versions, the live one starred")
    a = asub.add_parser("show", help="what the gate measured for a version (default: the live one)")
    a.add_argument("version", nargs="?")
    a = asub.add_parser("rollback", help="go back to the previous version, or to VERSION; 'none' for the base model")
    a.add_argument("version", nargs="?")
    a = asub.add_parser("prune", help="keep the last N versions plus the best and the live one")
    a.add_argument("--keep", type=count_arg(0, 10_000))
    for a in asub.choices.values():
        a.add_argument("--user")
        a.add_argument("--pack")
    p.set_defaults(func=cmd_adapters)


def _register_pack_train(sub: Any) -> None:
    """`assistant pack train NAME`: added to the existing `pack` command group."""
    pack_parser = sub.choices.get("pack")
    if pack_parser is None:
        return
    for action in pack_parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            p = action.add_parser("train", help="train the pack's starting adapter from train.jsonl (gated)")
            p.add_argument("name")
            p.add_argument("--steps", type=count_arg(1, 100_000), help="training steps (default: two passes over the examples)")
            p.add_argument("--eval-limit", type=count_arg(0, 100_000), default=40, dest="eval_limit",
                           help="eval probes scored before and after (greedy answers)")
            p.add_argument("--model")
            p.set_defaults(func=cmd_pack_train)
