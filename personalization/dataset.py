"""From the journal to training examples.

- a correction becomes (the context as sent -> the corrected answer);
- a positively rated answer becomes (context -> that answer);
- a negatively rated answer without a correction is kept out;
- a stated fact or preference becomes a few templated question -> answer examples;
- a replay mix (the pack's seed examples and earlier examples) guards against forgetting.

An example is chat messages plus the answer; the trainer puts loss on the answer tokens only.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence


@dataclass
class Example:
    messages: list[dict[str, str]]  # the context, ending with the user's message
    answer: str
    source: str  # "correction", "rating", "fact", "replay"
    turn_id: str = ""
    weight: float = 1.0
    expect_any: list[str] = field(default_factory=list)  # eval probes: keywords a right answer contains

    def key(self) -> str:
        return hashlib.sha1(json.dumps([self.messages, self.answer]).encode()).hexdigest()[:16]


@dataclass
class Dataset:
    train: list[Example] = field(default_factory=list)
    heldout: list[Example] = field(default_factory=list)  # the user's own examples kept for the gate
    replay: list[Example] = field(default_factory=list)
    heldout_is_separate: bool = True

    def hash(self) -> str:
        h = hashlib.sha1()
        for ex in self.train + self.heldout + self.replay:
            h.update(ex.key().encode())
        return h.hexdigest()[:16]


def _context(turn: Any, system: str) -> list[dict[str, str]]:
    """The context as it was sent, but with the current system prompt and without old turns.

    Only the final user message (with the memories it was given) is kept: the answer should
    come from that message, and short contexts train faster.
    """
    last_user = next((m["content"] for m in reversed(turn.prompt) if m["role"] == "user"), turn.message)
    return [{"role": "system", "content": system}, {"role": "user", "content": last_user}]


def from_turns(turns: Iterable[Any], system: str) -> list[Example]:
    out: list[Example] = []
    for turn in turns:
        if turn.correction:
            out.append(Example(_context(turn, system), turn.correction, "correction", turn.id, weight=1.0))
            # The plain message too, so the answer does not depend on recalled memories.
            if _context(turn, system)[-1]["content"] != turn.message:
                out.append(Example([{"role": "system", "content": system}, {"role": "user", "content": turn.message}],
                                   turn.correction, "correction", turn.id))
        elif turn.rating == 1 and turn.reply.strip():
            out.append(Example(_context(turn, system), turn.reply, "rating", turn.id))
    return out


_PRONOUNS = [
    (r"\bI am\b", "you are"), (r"\bI'm\b", "you're"), (r"\bI've\b", "you've"), (r"\bI'd\b", "you'd"),
    (r"\bI\b", "you"), (r"\bmy\b", "your"), (r"\bMy\b", "Your"), (r"\bme\b", "you"), (r"\bmine\b", "yours"),
    (r"\bmyself\b", "yourself"), (r"\bwe\b", "you"), (r"\bWe\b", "You"), (r"\bour\b", "your"), (r"\bOur\b", "Your"),
]


def second_person(text: str) -> str:
    """'I live in Lyon.' -> 'You live in Lyon.'"""
    out = text
    for pattern, repl in _PRONOUNS:
        out = re.sub(pattern, repl, out)
    return out[0].upper() + out[1:] if out else out


def from_facts(facts: Iterable[Any], system: str) -> list[Example]:
    """Templated questions about what the user stated, answered in the second person."""
    out: list[Example] = []
    for memory in facts:
        said = second_person(memory.text.rstrip(".!") + ".")
        questions = ["What do you remember about me?", "Tell me something you know about me."]
        m = re.search(r"\bmy ((?:\w+'s )?\w+)", memory.text, re.I)
        if m:
            questions.append(f"What did I tell you about my {m.group(1)}?")
        if memory.attribute == "residence":
            questions.append("Where do I live?")
        elif memory.attribute == "job":
            questions.append("What do I do for a living?")
        elif memory.attribute == "diet":
            questions.append("What is my diet?")
        elif memory.attribute.startswith("allergy:"):
            questions.append("What am I allergic to?")
        for q in questions:
            out.append(Example([{"role": "system", "content": system}, {"role": "user", "content": q}], said, "fact"))
    return out


def replay_examples(seed: Sequence[dict[str, Any]], system: str, n: int, rng: random.Random) -> list[Example]:
    chosen = rng.sample(list(seed), min(n, len(seed))) if seed else []
    return [Example([{"role": "system", "content": system}, {"role": "user", "content": s["prompt"]}], s["answer"], "replay")
            for s in chosen]


def build(
    turns: Iterable[Any], facts: Iterable[Any], seed: Sequence[dict[str, Any]], system: str, *,
    replay_ratio: float = 2.0, seed_value: int = 0, heldout_every: int = 4, min_replay: int = 12,
) -> Dataset:
    """The user's examples (every ``heldout_every``-th kept for the gate) plus a replay mix."""
    rng = random.Random(seed_value)
    own = from_turns(turns, system) + from_facts(facts, system)
    # Split by group (a turn, or a stated fact), deterministically by content, so the examples of
    # one correction never sit on both sides and stay on the same side across rounds.
    groups: dict[str, list[Example]] = {}
    for ex in own:
        groups.setdefault(ex.turn_id or ex.answer, []).append(ex)
    order = sorted(groups, key=lambda g: hashlib.sha1(g.encode()).hexdigest())
    data = Dataset()
    if len(order) >= heldout_every:
        for i, g in enumerate(order):
            (data.heldout if i % heldout_every == 0 else data.train).extend(groups[g])
    else:
        data.train = list(own)
        data.heldout = list(own)
        data.heldout_is_separate = False
    data.replay = replay_examples(seed, system, max(min_replay, int(len(data.train) * replay_ratio)), rng)
    return data
