"""The grounding examples `assistant pack train` learns from (personalization.grounded): the
prompt a chat turn sends, answers that start from the notes' sentences, and honest answers where
the notes or the user's memories hold nothing."""

from __future__ import annotations

import random

import pytest

from assistant import grounding
from assistant import settings as settings_mod
from personalization import grounded


def test_the_answer_is_the_notes_sentences_then_what_the_seed_answer_adds():
    lead = "Raw chicken keeps 1 to 2 days in the fridge."
    answer = "No. Raw chicken keeps 1 to 2 days in a fridge. Freeze it if you will not cook it by then."
    assert grounded.continuation(lead, answer) == (
        "Raw chicken keeps 1 to 2 days in the fridge. Freeze it if you will not cook it by then.")


@pytest.fixture(scope="module")
def general_examples(tmp_path_factory):
    """The general pack's grounding examples, built once (embedding its seed questions takes a while)."""
    import os

    from memory import embedder
    from memory.knowledge import KnowledgeBase
    from tests.conftest import copy_pack

    root = tmp_path_factory.mktemp("grounded")
    old = os.environ.get("ASSISTANT_HOME")
    os.environ["ASSISTANT_HOME"] = str(root)
    try:
        from assistant import packs

        pack = packs.load(copy_pack("general", root / "packs"))
        emb = embedder.get()
        kb = KnowledgeBase(pack.id, emb)
        kb.sync(pack.knowledge_files())
        examples = grounded.build(pack.train_examples(), kb, emb, pack.system_prompt(), random.Random(0))
        yield pack, kb, examples
        kb.close()
    finally:
        if old is None:
            os.environ.pop("ASSISTANT_HOME", None)
        else:
            os.environ["ASSISTANT_HOME"] = old


def _user(example) -> str:
    return example.messages[-1]["content"]


@pytest.mark.slow
def test_seed_questions_are_asked_with_their_notes_and_answered_from_them(general_examples):
    pack, kb, examples = general_examples
    with_notes = [e for e in examples if e.source == "grounded:notes"]
    assert len(with_notes) >= 20
    by_file = {m.text: m.citation.split(" > ")[0] for m in kb.col.get()}
    for example in with_notes:
        text = _user(example)
        shown = [line[2:] for line in text.split("Notes to answer from:\n")[1].split("\n\n")[0].splitlines()]
        assert shown and all(s in by_file for s in shown)
        # the answer starts with a sentence of one of the notes shown
        first = example.answer.split(". ")[0]
        assert any(first in s for s in shown), (first, shown)
        assert text.endswith("My message: " + next(s["prompt"] for s in pack.train_examples()
                                                   if s["id"] == example.turn_id))
    # RAFT's distractors: some prompts also show a note from a file the answer does not come from
    mixed = [e for e in with_notes if len({by_file[s[2:]] for s in _user(e).split("\n") if s[2:] in by_file}) > 1]
    assert mixed


@pytest.mark.slow
def test_notes_that_do_not_answer_and_unknown_facts_give_honest_answers(general_examples):
    _pack, kb, examples = general_examples
    silent = [e for e in examples if e.source == "grounded:silent"]
    assert silent and all(e.answer == grounded.NOTES_SILENT for e in silent)
    told = [e for e in examples if e.source == "grounded:memory"]
    untold = [e for e in examples if e.source == "grounded:abstain"]
    assert told and untold
    for e in told:
        assert "What I told you about myself:" in _user(e) and e.answer.startswith("You told me ")
        fact = grounding.second_person(e.answer[len("You told me "):].rstrip("."))
        assert fact.lower() in grounding.second_person(_user(e)).lower()
    for e in untold:
        question = _user(e).split("My message: ")[1]
        assert e.answer == grounding.abstain_text(question)


@pytest.mark.real
def test_a_training_prompt_is_the_prompt_a_chat_turn_sends(general_examples, real_engine, home):
    """Same system prompt, same notes in the same words and order: what the adapter learns is
    what it is later asked."""
    from assistant.core import Assistant

    pack, _kb, examples = general_examples
    plain = [e for e in examples if e.source == "grounded:notes" and "What I told you" not in _user(e)]
    settings = settings_mod.load(env={})
    chat = Assistant(settings, engine=real_engine).chat("probe", pack.id)
    checked = 0
    for example in plain[:12]:
        question = _user(example).split("My message: ")[1]
        reply = chat.send(question, max_new_tokens=2)
        "".join(reply)
        turn = chat.journal.turns()[-1]
        chat.reset()
        if turn.prompt[0]["role"] != "system":  # answered without the model ("Where are my ...?")
            continue
        sent = next(m["content"] for m in reversed(turn.prompt) if m["role"] == "user")
        if sent == _user(example):
            checked += 1
        else:  # a distractor was put among the notes: the chat's notes are the others, in order
            notes = [ln for ln in _user(example).splitlines() if ln.startswith("- ")]
            assert all(ln in notes for ln in sent.splitlines() if ln.startswith("- ")), (sent, _user(example))
        assert turn.prompt[0]["content"] == example.messages[0]["content"]
    assert checked >= 3
