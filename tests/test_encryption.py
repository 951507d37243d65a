"""Encryption at rest: with it on, no user text is readable in any file of the data directory;
a wrong or missing passphrase changes nothing and says how to unlock; turning it on (and off)
for existing data keeps every turn, memory and adapter. Real SQLCipher, chromadb and embedder,
a tiny random model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("sqlcipher3")  # the `encryption` extra (scripts/install.sh installs it)

from assistant import crypto
from assistant import settings as settings_mod
from assistant.adapters import WEIGHTS, AdapterStore
from assistant.core import Assistant
from assistant.errors import LockedError, WrongPassphraseError
from assistant.journal import Journal, Turn, new_turn_id
from cli.main import main
from personalization import trainer
from tests.conftest import make_tiny_model

PASS = "correct horse battery staple"
SECRET = "ZEBRA9931"  # a locker code: in turns, a correction, memories, an export
SISTER = "Ingeborg"
# Needles are searched for in any case inside base64 ciphertext, where a short word turns up by
# chance (a 4-letter one about once per megabyte): every searched word is 8 letters or more.
CITY = "Lillehammer"


pytestmark = pytest.mark.slow  # processes, servers, the terminal UI or the real embedder at every step


def _files_with(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` holding ``needle`` in its bytes (any case): SQLite free pages,
    WAL, chromadb's HNSW files, everything."""
    low = needle.lower().encode()
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and low in p.read_bytes().lower()]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def _settings():
    settings = settings_mod.load(env={})
    settings.learning.enabled = False
    return settings


def _fill(home: Path, tiny_tokenizer, settings) -> dict:
    """Turns, feedback, memories (one superseded) and a published adapter version for alice."""
    journal = Journal("alice")
    conv = journal.new_conversation("general")
    prompt = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": f"My locker code is {SECRET}."}]
    t1 = journal.record(Turn(new_turn_id(), conv.id, "general", time.time(), f"My locker code is {SECRET}.", prompt,
                             f"Noted: {SECRET}."))
    journal.correct(t1.id, f"I will remember {SECRET}.")
    journal.close()
    from memory.store import MemoryStore

    store = MemoryStore("alice", settings.memory)
    store.add(f"My locker code is {SECRET}.", "fact", attribute="my:locker code", source_turn=t1.id)
    store.add(f"My sister's name is {SISTER}.", "fact", attribute="my:sister's name")
    store.add("I live in Paris.", "fact", attribute="residence")
    store.add(f"I live in {CITY}.", "fact", attribute="residence")
    memories = sorted((m.id, m.text, m.attribute, m.superseded_by) for m in store.list(include_superseded=True))
    store.close()
    adapters = AdapterStore("alice", "general")
    staged = adapters.staging_dir()
    trainer.create(make_tiny_model(tiny_tokenizer), settings.learning).save_pretrained(str(staged))
    version = adapters.publish(staged, {"created": time.time(), "ledger": {"turns": [t1.id], "memories": []}})
    return {"turn": t1.id, "memories": memories, "version": version}


def _read_back(settings) -> dict:
    from memory.store import MemoryStore

    journal = Journal("alice")
    turns = [(t.id, t.message, t.reply, t.correction, t.prompt) for t in journal.turns()]
    journal.close()
    store = MemoryStore("alice", settings.memory)
    memories = sorted((m.id, m.text, m.attribute, m.superseded_by) for m in store.list(include_superseded=True))
    best = store.search("What is my sister called?", k=1)[0].text
    store.close()
    return {"turns": turns, "memories": memories, "best": best}


def _deltas(tiny_tokenizer, version: str) -> dict:
    return AdapterStore("alice", "general").deltas(version, make_tiny_model(tiny_tokenizer))


def test_with_encryption_on_no_user_text_is_readable_anywhere(home, tiny_engine, tiny_tokenizer, monkeypatch, capsys):
    monkeypatch.setenv(crypto.ENV, PASS)
    assert main(["encryption", "on"]) == 0
    settings = _settings()
    data = _fill(home, tiny_tokenizer, settings)
    assistant = Assistant(settings, engine=tiny_engine)
    chat = assistant.chat("alice", "general")
    reply = chat.send(f"My sister {SISTER} keeps the spare key to locker {SECRET}.")
    "".join(reply)
    assistant.journal("alice").rate(reply.turn_id, 1)
    assistant.forget_user_handles("alice")
    export = home / "export.json"
    assert main(["memory", "export", "--user", "alice", "--out", str(export)]) == 0
    for needle in (SECRET, SISTER, "locker code", "sister's name", CITY):
        assert _files_with(home, needle) == [], needle
    # ...and everything reads back through the program
    back = _read_back(settings)
    assert any(SECRET in t[1] for t in back["turns"]) and any(t[3] == f"I will remember {SECRET}." for t in back["turns"])
    assert back["best"] == f"My sister's name is {SISTER}."
    assert {m[1]: m[3] != "" for m in back["memories"]}["I live in Paris."]  # superseded through the attribute token
    weights = (AdapterStore("alice", "general").path(data["version"]) / WEIGHTS).read_bytes()
    assert crypto.is_sealed_blob(weights) and b"lora_A" not in weights
    assert _deltas(tiny_tokenizer, data["version"])
    resumed = trainer.resume(make_tiny_model(tiny_tokenizer), AdapterStore("alice", "general").path(data["version"]))
    assert sum(p.numel() for p in resumed.parameters() if p.requires_grad) > 0
    sealed_export = json.loads(export.read_text())
    assert sealed_export["format"] == crypto.ENVELOPE and SECRET not in export.read_text()
    status = capsys.readouterr() and (main(["encryption", "status"]), capsys.readouterr().out)[1]
    assert "alice: journal encrypted, memories encrypted, adapters 1/1 encrypted" in status
    assert "embeddings" in status


def test_turning_encryption_on_then_off_keeps_every_turn_memory_and_adapter(home, tiny_tokenizer, monkeypatch, capsys):
    settings = _settings()
    data = _fill(home, tiny_tokenizer, settings)
    before = _read_back(settings)
    deltas = _deltas(tiny_tokenizer, data["version"])
    assert _files_with(home, SECRET) and _files_with(home, SISTER)  # plain before
    from memory.store import MemoryStore

    held = MemoryStore("alice", settings.memory)  # open elsewhere (a TUI) while it is converted
    monkeypatch.setenv(crypto.ENV, PASS)
    assert main(["encryption", "on"]) == 0
    out = capsys.readouterr().out
    assert "alice: journal encrypted, memories encrypted, 1 adapter version(s) encrypted" in out
    assert len(held.list()) == 3  # it reopened the converted store, with the key
    bees = held.add("I keep beehives in Tromsø.", "fact")
    assert _files_with(home, SECRET) == [] and _files_with(home, SISTER) == [] and _files_with(home, "beehives") == []
    held.forget([bees.id])
    held.close()
    assert not list(home.rglob("*.convert")) and not list(home.rglob("memory.old"))
    assert _read_back(settings) == before
    after = _deltas(tiny_tokenizer, data["version"])
    assert after.keys() == deltas.keys() and all((after[k] == deltas[k]).all() for k in deltas)
    assert main(["encryption", "on"]) == 0  # again: nothing left to do, nothing lost
    assert _read_back(settings) == before
    assert main(["encryption", "off"]) == 2  # needs --yes
    assert main(["encryption", "off", "--yes"]) == 0
    assert not crypto.state_path().exists()
    monkeypatch.delenv(crypto.ENV)
    assert _read_back(settings) == before  # plain again, no passphrase needed
    assert _files_with(home, SECRET)


@pytest.fixture
def encrypted(home, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv(crypto.ENV, PASS)
    assert main(["encryption", "on"]) == 0
    settings = _settings()
    _fill(home, tiny_tokenizer, settings)
    return settings


def test_a_wrong_passphrase_is_refused_and_changes_nothing(home, encrypted, monkeypatch, capsys):
    from memory.store import MemoryStore

    before = _snapshot(home)
    monkeypatch.setenv(crypto.ENV, "not the passphrase")
    for opener in (lambda: Journal("alice"), lambda: MemoryStore("alice", encrypted.memory),
                   lambda: Assistant(encrypted)):
        with pytest.raises(WrongPassphraseError, match="wrong passphrase.*nothing was read or changed"):
            opener()
    capsys.readouterr()
    assert main(["memory", "list", "--user", "alice"]) == 77
    assert "wrong passphrase" in capsys.readouterr().err
    assert main(["encryption", "on"]) == 77
    assert _snapshot(home) == before


def test_without_the_passphrase_startup_says_how_to_unlock(home, encrypted, monkeypatch, capsys):
    before = _snapshot(home)
    monkeypatch.delenv(crypto.ENV)
    with pytest.raises(LockedError, match="ASSISTANT_PASSPHRASE.*assistant encryption unlock"):
        Assistant(encrypted)
    capsys.readouterr()
    assert main(["memory", "list", "--user", "alice"]) == 77
    err = capsys.readouterr().err
    assert "is encrypted: set ASSISTANT_PASSPHRASE" in err and "nothing was read or changed" in err.lower()
    assert main(["encryption", "status"]) == 0  # status needs no key
    assert "passphrase: not given" in capsys.readouterr().out
    assert _snapshot(home) == before


def test_the_os_keyring_unlocks_when_installed(home, encrypted, monkeypatch, capsys):
    kept: dict = {}

    class FakeKeyring:
        def get_password(self, service, name):
            return kept.get((service, name))

        def set_password(self, service, name, value):
            kept[(service, name)] = value

        def delete_password(self, service, name):
            kept.pop((service, name))

    monkeypatch.setattr(crypto, "_keyring", lambda: FakeKeyring())
    assert main(["encryption", "unlock"]) == 0  # ASSISTANT_PASSPHRASE is checked, then kept
    monkeypatch.delenv(crypto.ENV)
    assert len(_read_back(encrypted)["turns"]) == 1
    assert main(["encryption", "lock"]) == 0 and kept == {}
    with pytest.raises(LockedError):
        Journal("alice")


def test_encrypted_export_opens_with_the_passphrase_in_another_data_directory(home, encrypted, tmp_path, monkeypatch,
                                                                              capsys):
    from memory.store import MemoryStore

    out = tmp_path / "memories.json"
    assert main(["memory", "export", "--user", "alice", "--out", str(out)]) == 0
    assert SECRET not in out.read_text()
    other = tmp_path / "other-home"
    other.mkdir()
    monkeypatch.setenv("ASSISTANT_HOME", str(other))  # encrypted under another passphrase
    monkeypatch.setenv(crypto.ENV, "a different passphrase")
    assert main(["encryption", "on"]) == 0
    capsys.readouterr()
    assert main(["memory", "import", "--user", "bob", str(out)]) == 77
    assert "nothing was imported" in capsys.readouterr().err
    monkeypatch.setenv(crypto.EXPORT_ENV, PASS)
    assert main(["memory", "import", "--user", "bob", str(out)]) == 0
    store = MemoryStore("bob", encrypted.memory)
    assert SISTER in " ".join(m.text for m in store.list())
    store.close()
    assert _files_with(other, SISTER) == []
    capsys.readouterr()
    assert main(["memory", "export", "--user", "bob", "--plain"]) == 0  # asked for in plain: as JSON
    assert json.loads(capsys.readouterr().out)["memories"]


def test_an_interrupted_conversion_loses_nothing_and_the_next_run_finishes(home, tiny_tokenizer, monkeypatch):
    from assistant import journal_db

    settings = _settings()
    _fill(home, tiny_tokenizer, settings)
    before = _read_back(settings)
    monkeypatch.setenv(crypto.ENV, PASS)

    def crash(tmp, path):
        raise KeyboardInterrupt  # the moment before the converted journal takes its name

    monkeypatch.setattr(journal_db, "_swap", crash)
    assert main(["encryption", "on"]) == 130  # "interrupted"
    monkeypatch.undo()
    monkeypatch.setenv("ASSISTANT_HOME", str(home))
    monkeypatch.setenv(crypto.ENV, PASS)
    assert journal_db.kind(home / "users" / "alice" / "journal.sqlite3") == "plain"  # the old one, whole
    assert _read_back(settings) == before  # opening converts it now
    assert journal_db.kind(home / "users" / "alice" / "journal.sqlite3") == "other"
    assert not list(home.rglob("*.convert"))
    assert _files_with(home, SECRET) == []


def test_encrypted_journal_without_encryption_json_is_refused_not_replaced(home, encrypted, monkeypatch):
    path = home / "users" / "alice" / "journal.sqlite3"
    (home / crypto.STATE_FILE).rename(home / "encryption.json.bak")
    monkeypatch.delenv(crypto.ENV)
    before = _snapshot(home)
    with pytest.raises(LockedError, match="encryption.json is missing"):
        Journal("alice")
    assert _snapshot(home) == before and not list(path.parent.glob("*.damaged-*"))


def test_damaged_encrypted_journal_keeps_its_readable_rows(home, encrypted, capsys):
    import os

    journal = Journal("alice")
    conv = journal.new_conversation("general")
    for i in range(60):
        journal.record(Turn(new_turn_id(), conv.id, "general", time.time(), f"message {i} " + "x" * 300, [], "ok"))
    journal.close()
    path = home / "users" / "alice" / "journal.sqlite3"
    data = bytearray(path.read_bytes())
    data[4096 * 9 : 4096 * 10] = os.urandom(4096)
    path.write_bytes(bytes(data))
    journal = Journal("alice")
    assert 30 <= len(journal.turns()) <= 61
    journal.close()
    assert "was damaged" in capsys.readouterr().err


def test_a_damaged_vector_index_is_rebuilt_from_the_sealed_records(home, encrypted, capsys):
    from memory.store import MemoryStore

    for f in (home / "users" / "alice" / "memory").rglob("*.bin"):
        f.unlink()
    store = MemoryStore("alice", encrypted.memory)
    assert store.search("What is my sister called?", k=1)[0].text == f"My sister's name is {SISTER}."
    moved = store.add("I live in Montpellier.", "fact", attribute="residence")  # supersedes the city by its token
    assert [m.text for m in store.list() if "live in" in m.text] == [moved.text]
    store.close()
    assert "rebuilt it from the store's 4 records" in capsys.readouterr().err
    assert _files_with(home, SISTER) == [] and _files_with(home, "Montpellier") == []


def test_forgetting_reaches_an_encrypted_journal_and_store(home, encrypted):
    from assistant import privacy
    from memory.store import MemoryStore

    receipt = privacy.forget("alice", encrypted, search=SECRET)
    assert len(receipt.memories) == 1 and len(receipt.turns_deleted) == 1
    store = MemoryStore("alice", encrypted.memory)
    assert SECRET not in " ".join(m.text for m in store.list(include_superseded=True))
    store.close()
    journal = Journal("alice")
    assert journal.turns() == []
    journal.close()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_tui_screenshots_go_outside_an_encrypted_data_directory(home, encrypted, tmp_path, monkeypatch):
    pytest.importorskip("textual")
    from tests.test_tui import SIZE, FakeEngine, ask, make

    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    (tmp_path / "me" / "Pictures").mkdir(parents=True)
    app = make(FakeEngine([f"Your locker is {SECRET}."]), user="alice")
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "hi")
        await pilot.press("f12")
        await pilot.pause()
        saved = [n.message for n in app._notifications if n.message.startswith("saved ")]
    assert saved and saved[0][len("saved "):].startswith(str(tmp_path / "me" / "Pictures"))
    assert _files_with(home, SECRET) == []


@pytest.mark.real
def test_real_model_chat_leaves_no_readable_text(home, real_engine, monkeypatch):
    monkeypatch.setenv(crypto.ENV, PASS)
    assert main(["encryption", "on"]) == 0
    assistant = Assistant(settings_mod.load(env={}), engine=real_engine)
    chat = assistant.chat("alice", "general")
    "".join(chat.send(f"My sister's name is {SISTER} and my locker code is {SECRET}."))
    reply = chat.send("What's my sister's name?")
    assert SISTER in "".join(reply)
    assistant.forget_user_handles("alice")
    assert _files_with(home, SECRET) == [] and _files_with(home, SISTER) == []
