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


_GLAZES = """# House glazes

## Plum glaze

The plum glaze simmers for 17 minutes and takes 40 grams of brown sugar per litre of juice.

## Fig glaze

The fig glaze rests for 9 hours in the fridge before it is brushed on.
"""


def _mini_pack(root) -> None:
    """A pack whose facts no model can know: only its notes say them."""
    import json

    (root / "knowledge").mkdir(parents=True)
    (root / "knowledge" / "glazes.md").write_text(_GLAZES)
    (root / "pack.toml").write_text(
        'schema_version = 1\nid = "glazes"\nname = "Glazes"\nversion = "1.0.0"\n'
        'description = "The house glazes."\npersona = "You are the kitchen\'s glaze assistant. Answer briefly."\n'
        'disclaimer = ""\nsafety_rules = []\nstarter_questions = []\n')
    asks = [("How long does the plum glaze simmer?", "The plum glaze simmers for 17 minutes."),
            ("What is the simmering time of the plum glaze?", "It simmers for 17 minutes."),
            ("How much sugar goes in the plum glaze?", "40 grams of brown sugar per litre of juice."),
            ("Which sugar does the plum glaze take?", "Brown sugar, 40 grams per litre of juice."),
            ("How long must the fig glaze rest?", "The fig glaze rests for 9 hours in the fridge."),
            ("Where does the fig glaze rest before use?", "In the fridge, for 9 hours."),
            ("When can I brush on the fig glaze?", "After it has rested 9 hours in the fridge."),
            ("Plum glaze cooking time?", "17 minutes at a simmer.")]
    rows = [{"id": f"glazes-train-{i:03d}", "prompt": q, "answer": a} for i, (q, a) in enumerate(asks * 2)]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    probes = [{"id": "glazes-eval-001", "ask": "For how many minutes is the plum glaze simmered?", "expect_any": ["17"]},
              {"id": "glazes-eval-002", "ask": "How many hours does the fig glaze need to rest?", "expect_any": ["9"]}]
    (root / "eval.jsonl").write_text("\n".join(json.dumps(p) for p in probes) + "\n")


@pytest.mark.real
def test_pack_training_on_the_real_model_teaches_it_to_answer_from_the_notes_shown(real_engine, home):
    """`assistant pack train` on a pack whose facts only its notes hold: the gate promotes the
    grounding adapter, a new user's chat runs on it, and where the chat shows a note without
    starting the answer from it (a statement, not a question), the model now says what the note
    says; the base model, shown the same note, did so less often."""
    from assistant import paths
    from assistant.core import Assistant
    from personalization.learner import Learner

    _mini_pack(paths.user_packs_dir() / "glazes")
    settings = settings_mod.load(env={})
    assistant = Assistant(settings, engine=real_engine, learner=Learner)
    said = {"I want to make the plum glaze tonight.": "17", "I'm making the fig glaze for a party tomorrow.": "9"}

    def answers(use_adapter: bool) -> dict[str, str]:
        out = {}
        for message in said:
            chat = assistant.chat("newcomer", "glazes", use_adapter=use_adapter)
            reply = chat.send(message, temperature=0, max_new_tokens=40, seed=0)
            out[message] = reply.collect()
            assert any(m.kind == "knowledge" for m in reply.memories)  # the note was in the prompt
        return out

    try:
        before = answers(False)
        result = assistant.learner.train_pack("glazes", steps=24)
        assert result.promoted, result.table()
        after = answers(True)
        chat = assistant.chat("newcomer", "glazes")
        reply = chat.send("I want to make the plum glaze tonight.", temperature=0, max_new_tokens=8, seed=0)
        reply.collect()
        assert reply.adapter and reply.adapter.startswith("_pack/glazes/")  # a new user starts from it
        copied = [m for m, figure in said.items() if figure in after[m]]
        assert len(copied) == len(said), after
        assert sum(figure in before[m] for m, figure in said.items()) < len(copied), before
    finally:
        real_engine.set_adapter(None, None)
