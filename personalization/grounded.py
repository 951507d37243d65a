"""Grounding examples for a pack's starting adapter: retrieval-augmented fine-tuning (RAFT).

``assistant pack train`` teaches the model to answer from the notes it is shown, in the prompt
the chat sends (``assistant.answering.domain_notes`` picks the notes and the lead, the same
code a chat turn runs):

- each seed question with the notes recalled for it, often with an unrelated note put among
  them: the answer is the lead (the notes' sentences that answer it, which the chat starts the
  reply with) run on into the seed answer's sentences that the lead does not already say;
- some seed questions shown only unrelated notes: the answer says the notes do not cover it;
- synthetic facts about a user (made here from templates, no user's data) above some messages,
  and questions about them: the answer quotes the fact in the second person, or says it was not
  told, exactly as ``assistant.grounding`` builds those replies.

Everything is made by code from the pack's own files; no bigger model is involved.
"""

from __future__ import annotations

import random
import re
from typing import Any, Sequence

from assistant import grounding
from assistant.prompt import Recalled, user_block
from personalization.dataset import Example

NOTES_SILENT = "My notes don't cover that, so I won't guess at it."

# (what the user said, a question about it): the values are filled in at random.
_FACTS = [
    ("I live in {city}.", "Which town am I living in?"),
    ("My cat is called {name}.", "What is my cat's name?"),
    ("I work as a {job}.", "What is my job?"),
    ("I'm allergic to {allergen}.", "Which allergy do I have?"),
    ("My partner's name is {name}.", "Who is my partner?"),
    ("I have {count} children.", "How many kids do I have?"),
    ("My brother lives in {city}.", "Where does my brother live?"),
    ("I drive a {car}.", "What car do I have?"),
    ("My daughter is called {name}.", "What is my daughter called?"),
    ("I play the {instrument}.", "Which instrument do I play?"),
]
_VALUES = {
    "city": ["Bergen", "Porto", "Leeds", "Graz", "Tampere", "Quito", "Perth", "Lille", "Cork", "Pune"],
    "name": ["Ada", "Ravi", "Noor", "Mateo", "Ines", "Kofi", "Lena", "Tariq", "Yuki", "Bram"],
    "job": ["nurse", "welder", "teacher", "pilot", "librarian", "plumber", "chemist", "baker"],
    "allergen": ["peanuts", "shellfish", "penicillin", "pollen", "latex", "sesame"],
    "count": ["two", "three", "four"],
    "car": ["small hatchback", "pickup truck", "electric van", "station wagon"],
    "instrument": ["cello", "trumpet", "banjo", "flute", "drums"],
}


def _fact(rng: random.Random, i: int) -> tuple[str, str]:
    said, asked = _FACTS[i % len(_FACTS)]
    return re.sub(r"\{(\w+)\}", lambda m: rng.choice(_VALUES[m.group(1)]), said), asked


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2 or w.isdigit()}


def continuation(lead: str, answer: str) -> str:
    """The lead run on into the answer's sentences that it does not already say (a bare "No." or
    "Yes." is left out: after the lead it would read as a new answer)."""
    said = _words(lead)
    rest = []
    for sentence in re.split(r"(?<=[.!?])\s+", answer.strip()):
        words = _words(sentence)
        if words and len(words & said) < 0.6 * len(words):
            rest.append(sentence)
            said |= words
    return " ".join([lead.strip()] + rest).strip()


def _recalled(chunks: Sequence[Any], facts: Sequence[str]) -> list[Recalled]:
    out = [Recalled("", "", "fact", f) for f in facts]
    out += [Recalled("", c.id, "knowledge", c.text, c.citation) for c in chunks]
    return out


def build(seed: Sequence[dict[str, Any]], notes_base: Any, embedder: Any, system: str,
          rng: random.Random) -> list[Example]:
    """The grounding examples for a pack (see the module's docstring); ``seed`` is its train.jsonl."""
    from assistant.answering import domain_notes

    every = list(notes_base.col.get())
    out: list[Example] = []

    def add(message: str, chunks: Sequence[Any], facts: Sequence[str], answer: str, source: str, tid: str) -> None:
        text = user_block(message, _recalled(chunks, facts))
        out.append(Example([{"role": "system", "content": system}, {"role": "user", "content": text}],
                           answer, source, turn_id=tid))

    for i, ex in enumerate(seed):
        question, answer, tid = ex["prompt"], ex["answer"], ex.get("id", f"seed-{i}")
        facts = [_fact(rng, rng.randrange(len(_FACTS)))[0]] if rng.random() < 0.3 else []
        lead, notes = domain_notes(embedder, notes_base, question)
        shown = {c.id for c in notes}
        others = [c for c in every if c.id not in shown and c.citation.split(" > ")[0]
                  not in {n.citation.split(" > ")[0] for n in notes}]
        if i % 8 == 7 and others:
            # Only notes from other files: nothing here answers the question.
            add(question, rng.sample(others, min(2, len(others))), facts, NOTES_SILENT, "grounded:silent", tid)
            continue
        if not lead:
            add(question, [], facts, answer, "grounded:plain", tid)
            continue
        chunks = list(notes)
        if others and rng.random() < 0.5:
            chunks.insert(rng.randrange(len(chunks) + 1), rng.choice(others))
        add(question, chunks, facts, continuation(lead, answer), "grounded:notes", tid)
    for i in range(max(4, len(seed) // 8)):
        said, asked = _fact(rng, i)
        other = _fact(rng, i + 1 + rng.randrange(len(_FACTS) - 1))[0]
        if i % 2 == 0:
            facts = [said, other] if rng.random() < 0.5 else [other, said]
            add(asked, [], facts, grounding.personal_answer([said]), "grounded:memory", f"fact-{i}")
        else:
            add(asked, [], [other], grounding.abstain_text(asked), "grounded:abstain", f"fact-{i}")
    return out
