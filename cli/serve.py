"""`assistant serve` and `assistant api-key ...` (imported by cli.main; keep the imports light)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from assistant.errors import AssistantError

SCOPES_HELP = "comma-separated: chat, memory:read, memory:write, feedback"


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    import api
    from api import keys as api_keys
    from assistant import settings as settings_mod

    settings = settings_mod.load(overrides={"model.name": args.model, "chat.user": args.user})
    host = args.host or settings.api.host
    port = settings.api.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise AssistantError(f"--port {port}: use a TCP port (0-65535)")
    if not api.is_loopback(host):
        if not args.allow_remote:
            raise AssistantError(
                f"refusing to serve on {host}: the API listens on loopback (127.0.0.1) only. "
                "Add --allow-remote if other machines must reach it."
            )
        _err(f"warning: serving on {host}:{port}, reachable from other machines. Anyone there who holds an API key "
             "can read and change this assistant's memories; traffic is not encrypted (plain HTTP).")
    if not api_keys.list():
        _err("note: no API keys yet, so every request will be refused: "
             "create one with `assistant api-key create NAME --user USER --scopes chat`")
    _err(f"loading the model, then serving on http://{host}:{port}/v1 (Ctrl-C stops)")
    return api.serve(settings, host, port, allow_remote=args.allow_remote, progress=lambda m: _err(f"[{m}]"))


def _default_user() -> str:
    from assistant import settings as settings_mod

    return settings_mod.load().chat.user


def cmd_api_key(args: argparse.Namespace) -> int:
    from api import keys as api_keys

    action = args.api_key_cmd
    if action == "create":
        users = ",".join(args.user) if args.user else _default_user()
        bound = api_keys.parse_users(users)
        if bound == [api_keys.ALL_USERS] and not args.yes_every_user:
            raise AssistantError("--user '*' lets this key act for every user on this machine: "
                                 "add --yes-every-user to confirm, or name the users (--user alice,bob)")
        scopes = api_keys.parse_scopes(args.scopes)
        key = api_keys.create(args.name, scopes, users=bound)
        print(key)
        who = "every user" if bound == [api_keys.ALL_USERS] else ", ".join(bound)
        _err(f"created a key for {args.name!r} acting for {who}, with scopes {', '.join(scopes)}. "
             "It is shown only now: store it; only its hash is kept.")
        return 0
    if action == "list":
        keys = api_keys.list()
        if not keys:
            _err("no API keys: create one with `assistant api-key create NAME --user USER --scopes chat`")
        for k in keys:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(k["created"] or 0))
            users = ",".join(k["users"]) if k.get("users") else f"{_default_user()} (made before keys had users)"
            print(f"{k['name']:20} {created}  {','.join(k['scopes']):40} users: {users}")
        return 0
    if action == "revoke":
        api_keys.revoke(args.name)
        print(f"revoked the key of {args.name!r}")
        return 0
    raise AssistantError(f"unknown api-key command {action}")  # pragma: no cover


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI-compatible local API (loopback only by default)")
    p.add_argument("--host", help="address to listen on (default: api.host in config, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: api.port in config, 8765)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (prints a warning)")
    p.add_argument("--model", help="model: 'default', a model folder or a .gguf file (overrides model.name)")
    p.add_argument("--user", help="the user for requests that name none (default: chat.user in config)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api-key", help="create, list and revoke per-app API keys for the local API (only here: "
                                       "no API call creates or widens a key)")
    ksub = p.add_subparsers(dest="api_key_cmd", metavar="ACTION", required=True)
    k = ksub.add_parser("create", help="create a key for an app (printed once)")
    k.add_argument("name", help="the app's name")
    k.add_argument("--scopes", default="chat", help=SCOPES_HELP + " (default: chat)")
    k.add_argument("--user", action="append", metavar="USER",
                   help="the user(s) the key may act for: a name, an e-mail, a comma-separated list, or '*' "
                        "(every user, needs --yes-every-user); repeatable (default: chat.user in config)")
    k.add_argument("--yes-every-user", action="store_true", help="confirm a key for --user '*'")
    ksub.add_parser("list", help="list apps with keys and their scopes")
    k = ksub.add_parser("revoke", help="revoke an app's key")
    k.add_argument("name")
    p.set_defaults(func=cmd_api_key)
