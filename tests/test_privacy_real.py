"""Forgetting on the real default model: the parrot's name leaves the memory, the journal, the
next training set and the weights that learned it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant import paths, privacy
from assistant import settings as settings_mod
from assistant.adapters import AdapterStore, live_for
from assistant.core import Assistant
from personalization import dataset
from personalization.learner import Learner

pytestmark = [pytest.mark.real, pytest.mark.timeout(2400)]

NAME = "Quetzalina"  # no word of the model's vocabulary or of the packs
TAUGHT = f"Your parrot is called {NAME}."
PHRASINGS = ["What is my parrot's name?", "What's my parrot called?", "Do you know my parrot's name?",
             "Remind me what my parrot is called.", "Tell me my parrot's name.", "What do I call my parrot?"]


def _files_with(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def test_forgetting_the_parrot_reaches_memory_journal_training_set_and_adapter(home, real_engine):
    assistant = Assistant(settings_mod.load(env={}), engine=real_engine, learner=Learner)
    assistant.chat("pia", "chef").send(f"My parrot is called {NAME}.", temperature=0, max_new_tokens=8).collect()
    for q in PHRASINGS:  # memory off: the adapter is what learns it
        chat = assistant.chat("pia", "chef", use_memory=False)
        chat.send(q, temperature=0, max_new_tokens=8).collect()
        chat.correct(TAUGHT)
    result = assistant.learner.run_round("pia", "chef")
    print(result.table())
    assert result.promoted, result.table()
    store = AdapterStore("pia", "chef")
    assert store.current() == result.version
    users = paths.users_dir()
    assert _files_with(users, NAME.encode())  # memory and journal hold it before

    receipt = privacy.forget("pia", assistant.settings, search=NAME, assistant=assistant)
    print(receipt.text())
    assert receipt.memories and f"live version {result.version} had learned it" in receipt.text()
    assert store.current() is None and result.version not in store.versions()  # no version that saw it is left
    assert _files_with(users, NAME.encode()) == []  # every file, SQLite free pages and the vector index too

    journal = assistant.journal("pia")
    mem = assistant.memory("pia")
    data = dataset.build(journal.turns(), mem.list(kinds=("fact", "preference")), [], "sys")
    assert NAME not in json.dumps([[e.messages, e.answer, e.rejected] for e in data.train + data.pairs + data.heldout])
    reply = assistant.chat("pia", "chef").send("What is my parrot called?", temperature=0, max_new_tokens=24)
    text = reply.collect()
    # none of pia's versions applies: the pack's starting adapter (if it ships one) or none
    starting = live_for("pia", "chef", real_engine.model, shipped=assistant.pack("chef").adapter_dir())
    assert starting is None or starting[0].user != "pia"
    assert NAME not in text and not (reply.adapter or "").startswith("pia/"), text
