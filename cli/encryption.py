"""`assistant encryption on|off|status|unlock|lock|passphrase`: registration is import-light."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from assistant.errors import EncryptionError
from cli.common import command_group

NEW_ENV = "ASSISTANT_NEW_PASSPHRASE"  # `encryption passphrase`: the new one, when not typed


def _ask(what: str, env: str, confirm: bool) -> str:
    """A passphrase from ``env``, else typed twice (or once) at the terminal."""
    secret = os.environ.get(env)
    if secret:
        return secret
    if not sys.stdin.isatty():
        raise EncryptionError(f"no {what}: set {env}, or run this in a terminal to type it")
    import getpass

    secret = getpass.getpass(f"{what}: ")
    if confirm and getpass.getpass(f"{what} again: ") != secret:
        raise EncryptionError("the two passphrases differ; nothing was changed")
    return secret


def cmd_encryption(args: argparse.Namespace) -> int:
    from assistant import crypto, encryption
    from cli.common import settings_from

    action = args.enc_cmd
    if action == "status":
        print("\n".join(encryption.status()))
        return 0
    if action == "on":
        fresh = crypto.read_state() is None
        secret = _ask("passphrase", crypto.ENV, confirm=fresh)
        crypto.check_passphrase(secret)
        lines = encryption.turn_on(secret, settings_from(args))
        if args.keyring:
            crypto.keyring_set(secret)
            lines.append("kept the passphrase in the OS keyring (`assistant encryption lock` removes it)")
        elif fresh and not os.environ.get(crypto.ENV):
            lines.append(f"from now on, set {crypto.ENV} (or run `assistant encryption unlock`) to use this data")
        print("\n".join(lines + [encryption.NOT_ENCRYPTED]))
        return 0
    if action == "off":
        if not args.yes:
            raise EncryptionError("this writes every journal, memory and adapter back in plain form: add --yes")
        print("\n".join(encryption.turn_off(settings_from(args))))
        return 0
    if action == "unlock":
        secret = _ask("passphrase", crypto.ENV, confirm=False)
        crypto.data_key(passphrase=secret)  # a wrong one is refused here
        crypto.keyring_set(secret)
        print("the passphrase is in the OS keyring: this data directory opens without "
              f"{crypto.ENV} until `assistant encryption lock`")
        return 0
    if action == "lock":
        gone = crypto.keyring_delete()
        print("removed the passphrase from the OS keyring" if gone else "no passphrase was in the OS keyring")
        return 0
    if action == "passphrase":
        old = crypto.find_passphrase()
        if not old:
            raise EncryptionError(crypto.unlock_hint())
        crypto.rewrap(old, _ask("new passphrase", NEW_ENV, confirm=True))
        print(f"new passphrase set ({crypto.state_path()} rewritten; nothing else changes). "
              f"Update {crypto.ENV} or run `assistant encryption unlock` again.")
        return 0
    raise EncryptionError(f"unknown encryption command {action}")  # pragma: no cover


def register(sub: Any) -> None:
    p, esub = command_group(sub, "encryption", "encrypt the data directory at rest (opt-in), or see its state", "enc_cmd")
    e = esub.add_parser("on", help="encrypt journals, memories and adapters (passphrase from ASSISTANT_PASSPHRASE or typed)")
    e.add_argument("--keyring", action="store_true", help="also keep the passphrase in the OS keyring")
    e = esub.add_parser("off", help="decrypt everything and remove encryption.json")
    e.add_argument("--yes", action="store_true")
    esub.add_parser("status", help="what is encrypted, per user (needs no passphrase)")
    esub.add_parser("unlock", help="check the passphrase and keep it in the OS keyring")
    esub.add_parser("lock", help="remove the passphrase from the OS keyring")
    esub.add_parser("passphrase", help=f"change the passphrase (the new one from {NEW_ENV} or typed)")
    p.set_defaults(func=cmd_encryption)
