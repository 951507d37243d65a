"""Encryption at rest, opt-in: the one owner of keys and of the ``cryptography`` library.

A data directory is encrypted when ``<home>/encryption.json`` exists. That file holds no secret:
the scrypt parameters and salt, and the data key wrapped (AES-256-GCM) under the key scrypt
derives from the passphrase. Unwrapping it is the passphrase check; a wrong passphrase fails
there, before any store is opened, so nothing is read or changed. The passphrase comes from
``ASSISTANT_PASSPHRASE`` or, when the ``keyring`` package is installed and has a usable backend,
from the OS keyring (``assistant encryption unlock`` puts it there).

From the data key come (HKDF-SHA256, one label each):
- the AEAD key (AES-256-GCM, a random 96-bit nonce per message): memory texts, adapter weights,
  exports; the associated data names what a ciphertext is, so one cannot stand in for another;
- the token key (HMAC-SHA256): equality tokens for the memory metadata the store filters on;
- the journal's SQLCipher key, given raw (``x'..'``), so SQLCipher derives nothing itself.

``state`` is "on" (every store is converted to its encrypted form when it is opened) or
"decrypting" (``assistant encryption off`` is under way: stores go back to plain form, and the
file is removed once all have). Wrapping the data key means a new passphrase re-encrypts
nothing but this file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from assistant import paths
from assistant.errors import EncryptionError, LockedError, WrongPassphraseError

STATE_FILE = "encryption.json"
ENV = "ASSISTANT_PASSPHRASE"
EXPORT_ENV = "ASSISTANT_EXPORT_PASSPHRASE"  # an export's passphrase, when not this data directory's
TEXT_PREFIX = "enc1:"  # a sealed text: this prefix, then base64url(nonce | ciphertext | tag)
TOKEN_PREFIX = "tok1:"
BLOB_MAGIC = b"PAENC1\n"  # a sealed file: these bytes, then nonce | ciphertext | tag
KEYRING_SERVICE = "personal-assistant"
ENVELOPE = "personal-assistant-encrypted"
KDF_DEFAULT = {"name": "scrypt", "n": 2**15, "r": 8, "p": 1}  # ~0.15 s and 32 MiB, once a process
_WRAP_AAD = b"personal-assistant data key v1"
_NONCE = 12
_cache: dict[tuple[str, str, bytes], "DataKey"] = {}
_cache_lock = threading.Lock()
_keyring_seen: dict[str, str | None] = {}  # data directory -> passphrase, asked once a process


class DataKey:
    """The data directory's key, unwrapped; everything sealed or opened goes through it."""

    def __init__(self, dek: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(_subkey(dek, b"aead"))
        self._token_key = _subkey(dek, b"token")
        self._sqlcipher = _subkey(dek, b"sqlcipher")

    def seal(self, data: bytes, context: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return BLOB_MAGIC + nonce + self._aead.encrypt(nonce, data, context.encode())

    def open(self, blob: bytes, context: str) -> bytes:
        from cryptography.exceptions import InvalidTag

        if not is_sealed_blob(blob):
            raise EncryptionError(f"{context}: not an encrypted value of this program")
        body = blob[len(BLOB_MAGIC):]
        try:
            return self._aead.decrypt(body[:_NONCE], body[_NONCE:], context.encode())
        except InvalidTag:
            raise EncryptionError(
                f"{context}: the encrypted data does not open with this data directory's key "
                "(damaged, or copied from another data directory); nothing was changed"
            ) from None

    def seal_text(self, text: str, context: str) -> str:
        body = self.seal(text.encode("utf-8"), context)[len(BLOB_MAGIC):]
        return TEXT_PREFIX + base64.urlsafe_b64encode(body).decode("ascii")

    def open_text(self, text: str, context: str) -> str:
        """A sealed text opened; a plain one (written before encryption was on) as it is."""
        if not is_sealed_text(text):
            return text
        try:
            body = base64.urlsafe_b64decode(text[len(TEXT_PREFIX):].encode("ascii"))
        except ValueError:
            raise EncryptionError(f"{context}: a damaged encrypted text") from None
        return self.open(BLOB_MAGIC + body, context).decode("utf-8")

    def token(self, text: str, context: str) -> str:
        """The same token for the same text (so a store can filter on it); reveals only equality."""
        mac = hmac.new(self._token_key, context.encode() + b"\0" + text.encode("utf-8"), hashlib.sha256)
        return TOKEN_PREFIX + mac.hexdigest()[:32]

    @property
    def sqlcipher_key(self) -> str:
        return "x'" + self._sqlcipher.hex() + "'"


def _subkey(dek: bytes, label: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"personal-assistant " + label).derive(dek)


def is_sealed_text(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(TEXT_PREFIX)


def is_sealed_blob(data: bytes) -> bool:
    return data[: len(BLOB_MAGIC)] == BLOB_MAGIC


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text).encode("ascii"), validate=True)
    except ValueError:
        raise EncryptionError(f"{what} is damaged (not base64); restore it from a backup") from None


# ------------------------------------------------------------------ the state file
def state_path(home: Path | None = None) -> Path:
    return (home or paths.home()) / STATE_FILE


def read_state(home: Path | None = None) -> dict[str, Any] | None:
    """encryption.json, checked; None when the data directory is not encrypted."""
    path = state_path(home)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EncryptionError(f"cannot read {path}: {exc}") from exc
    try:
        state = json.loads(raw)
        ok = (isinstance(state, dict) and state.get("version") == 1 and state.get("state") in ("on", "decrypting")
              and isinstance(state.get("kdf"), dict) and isinstance(state.get("wrapped_key"), str))
    except ValueError:
        ok = False
    if not ok:
        raise EncryptionError(
            f"{path} is damaged or from a newer version; restore it from a backup (without it the "
            "encrypted data cannot be opened). Nothing was read or changed."
        )
    return state


def mode(home: Path | None = None) -> str:
    """"off", "on" or "decrypting"."""
    state = read_state(home)
    return "off" if state is None else str(state["state"])


def unlock_hint(home: Path | None = None) -> str:
    keyring = ("run `assistant encryption unlock` to keep it in the OS keyring" if keyring_available() else
               "`pip install keyring` and run `assistant encryption unlock` to keep it in the OS keyring")
    return (f"this data directory ({home or paths.home()}) is encrypted: set {ENV} to its passphrase "
            f"(for example `read -rs {ENV} && export {ENV}`), or {keyring}. Nothing was read or changed.")


def data_key(home: Path | None = None, passphrase: str | None = None) -> DataKey | None:
    """The unwrapped data key; None when the data directory is not encrypted.

    Raises ``LockedError`` without a passphrase and ``WrongPassphraseError`` with a wrong one,
    in both cases before anything is opened."""
    home = home or paths.home()
    state = read_state(home)
    if state is None:
        return None
    secret = passphrase if passphrase is not None else find_passphrase(home)
    if not secret:
        raise LockedError(unlock_hint(home))
    return open_key(state, secret, home)


def target_sealed(home: Path | None = None) -> bool:
    """Whether stores are to be kept encrypted (state "on"); "decrypting" turns them back."""
    state = read_state(home)
    return state is not None and state["state"] == "on"


def stores_key(home: Path | None = None) -> tuple[DataKey | None, bool]:
    """What a store needs when it opens: the key (None: not encrypted) and whether to seal."""
    key = data_key(home)
    return key, key is not None and target_sealed(home)


def open_key(state: dict[str, Any], passphrase: str, home: Path | None = None) -> DataKey:
    """Unwrap the data key of ``state`` (encryption.json or an export's envelope)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    where = str(home or paths.home())
    digest = hashlib.sha256(passphrase.encode("utf-8")).digest()
    cache_key = (where, state["wrapped_key"], digest)
    with _cache_lock:
        if cache_key in _cache:
            return _cache[cache_key]
    wrapped = _unb64(state["wrapped_key"], f"{state_path(home)} (wrapped_key)")
    kek = _derive(passphrase, state["kdf"])
    try:
        dek = AESGCM(kek).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _WRAP_AAD)
    except InvalidTag:
        raise WrongPassphraseError(
            f"wrong passphrase for {where} (from {ENV} or the OS keyring): nothing was read or changed. "
            f"Set {ENV} to the passphrase given to `assistant encryption on`."
        ) from None
    key = DataKey(dek)
    with _cache_lock:
        _cache[cache_key] = key
    return key


def _derive(passphrase: str, kdf: dict[str, Any]) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    try:
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        salt = _unb64(kdf["salt"], "the key derivation salt")
        if kdf.get("name") != "scrypt" or not (2**10 <= n <= 2**22 and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError(kdf)
    except (KeyError, TypeError, ValueError):
        raise EncryptionError(f"unknown or damaged key derivation settings {kdf!r}; restore encryption.json") from None
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _wrap(dek: bytes, passphrase: str) -> dict[str, Any]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    kdf = dict(KDF_DEFAULT, salt=_b64(os.urandom(16)))
    nonce = os.urandom(_NONCE)
    wrapped = nonce + AESGCM(_derive(passphrase, kdf)).encrypt(nonce, dek, _WRAP_AAD)
    return {"kdf": kdf, "wrapped_key": _b64(wrapped)}


def create(passphrase: str, home: Path | None = None) -> DataKey:
    """Start encrypting this data directory: a new data key, wrapped under ``passphrase``."""
    check_passphrase(passphrase)
    if read_state(home) is not None:
        raise EncryptionError(f"{state_path(home)} exists already: this data directory is encrypted")
    dek = os.urandom(32)
    state = {"version": 1, "state": "on", "created": time.time(), **_wrap(dek, passphrase)}
    paths.write_private(state_path(home), json.dumps(state, indent=2).encode())
    return open_key(state, passphrase, home)


def rewrap(old: str, new: str, home: Path | None = None) -> None:
    """A new passphrase for the same data key (nothing else is re-encrypted)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    check_passphrase(new)
    state = read_state(home)
    if state is None:
        raise EncryptionError("this data directory is not encrypted: run `assistant encryption on`")
    open_key(state, old, home)  # checks the old one
    wrapped = _unb64(state["wrapped_key"], "wrapped_key")
    dek = AESGCM(_derive(old, state["kdf"])).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], _WRAP_AAD)
    paths.write_private(state_path(home), json.dumps(dict(state, **_wrap(dek, new)), indent=2).encode())


def set_state(value: str, home: Path | None = None) -> None:
    state = read_state(home)
    if state is None:
        raise EncryptionError("this data directory is not encrypted")
    paths.write_private(state_path(home), json.dumps(dict(state, state=value), indent=2).encode())


def remove_state(home: Path | None = None) -> None:
    state_path(home).unlink(missing_ok=True)
    paths.fsync_dir(paths.home() if home is None else home)


def check_passphrase(passphrase: str) -> None:
    if len(passphrase) < 8:
        raise EncryptionError("a passphrase needs at least 8 characters (a few words is best)")


# ------------------------------------------------------------------ where the passphrase comes from
def find_passphrase(home: Path | None = None) -> str | None:
    """``ASSISTANT_PASSPHRASE``, else the OS keyring's entry for this data directory, else None."""
    secret = os.environ.get(ENV)
    if secret:
        return secret
    return keyring_get(home)


def _keyring() -> Any | None:
    """The ``keyring`` module when it is installed and has a real backend."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return None
    try:
        if isinstance(keyring.get_keyring(), fail.Keyring):
            return None
    except Exception:
        return None
    return keyring


def keyring_available() -> bool:
    return _keyring() is not None


def keyring_get(home: Path | None = None) -> str | None:
    where = str(home or paths.home())
    if where in _keyring_seen:
        return _keyring_seen[where]
    kr = _keyring()
    if kr is None:
        return None
    try:
        found = kr.get_password(KEYRING_SERVICE, where)
    except Exception:  # a locked or broken backend: as if it held nothing
        return None
    _keyring_seen[where] = found
    return found


def keyring_set(passphrase: str, home: Path | None = None) -> None:
    kr = _keyring()
    if kr is None:
        raise EncryptionError(f"no OS keyring here (install `keyring` with a backend); set {ENV} instead")
    kr.set_password(KEYRING_SERVICE, str(home or paths.home()), passphrase)
    _keyring_seen[str(home or paths.home())] = passphrase


def keyring_delete(home: Path | None = None) -> bool:
    _keyring_seen.pop(str(home or paths.home()), None)
    kr = _keyring()
    if kr is None:
        return False
    try:
        kr.delete_password(KEYRING_SERVICE, str(home or paths.home()))
    except Exception:
        return False
    return True


# ------------------------------------------------------------------ exports
def seal_export(text: str, key: DataKey, home: Path | None = None) -> str:
    """An export that opens with the passphrase alone: it carries the wrapped data key."""
    state = read_state(home) or {}
    envelope = {"format": ENVELOPE, "version": 1, "kdf": state.get("kdf"), "wrapped_key": state.get("wrapped_key"),
                "ciphertext": _b64(key.seal(text.encode("utf-8"), "export"))}
    return json.dumps(envelope, indent=2)


def is_envelope(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == ENVELOPE


def open_export(data: Any, home: Path | None = None) -> Any:
    """An export's JSON: a sealed one opened (with this data directory's passphrase), a plain one as it is."""
    if not is_envelope(data):
        return data
    secret = os.environ.get(EXPORT_ENV) or find_passphrase(home)
    if not secret:
        raise LockedError(f"this export is encrypted: set {EXPORT_ENV} (or {ENV}) to the passphrase of the data "
                          "directory it came from; nothing was imported")
    if not isinstance(data.get("kdf"), dict) or not isinstance(data.get("wrapped_key"), str):
        raise EncryptionError("the encrypted export is damaged (no key record); nothing was imported")
    try:
        key = open_key(data, secret, home)
    except WrongPassphraseError:
        raise WrongPassphraseError(f"the passphrase does not open this export: set {EXPORT_ENV} to the passphrase of "
                                   "the data directory it came from; nothing was imported") from None
    body = key.open(_unb64(data.get("ciphertext"), "the export"), "export")
    return json.loads(body.decode("utf-8"))


# ------------------------------------------------------------------ files
def replace_file(path: Path, data: bytes) -> None:
    """``path``'s content replaced by ``data`` atomically; the old content's bytes are zeroed."""
    path = Path(path)
    old = os.open(path, os.O_RDWR)
    try:
        paths.write_private(path, data)
        overwrite(old)
    finally:
        os.close(old)


def overwrite(fd: int) -> None:
    """Zero an open file's bytes before its last name goes: its plain text does not stay readable
    in the file's old blocks (no promise for copy-on-write file systems or flash wear levelling)."""
    size = os.fstat(fd).st_size
    os.lseek(fd, 0, os.SEEK_SET)
    block = b"\0" * 65536
    left = size
    while left > 0:
        left -= os.write(fd, block[: min(left, len(block))])
    os.fsync(fd)


def shred_tree(root: Path) -> None:
    """Zero every file under ``root``, then remove it."""
    import shutil

    for p in Path(root).rglob("*") if Path(root).is_dir() else []:
        if p.is_file() and not p.is_symlink():
            try:
                fd = os.open(p, os.O_WRONLY)
            except OSError:
                continue
            try:
                overwrite(fd)
            finally:
                os.close(fd)
    shutil.rmtree(root, ignore_errors=True)
