"""From the journal to training examples, preference pairs and the gate's held-out probes.

- a correction becomes (the context as sent -> the corrected answer), with and without the
  memories it was given, and a pair (chosen = the correction, rejected = the reply it replaced);
- a positively rated answer becomes (context -> that answer);
- a negatively rated answer gives a pair when a positively rated answer to a similar question
  exists (chosen = that answer); otherwise it is kept out;
- a stated fact becomes questions of its own (built from its attribute and words, so no question
  has two answers) -> the fact in the second person;
- a stated style preference ("under three sentences", "bullet points", "metric units") becomes
  pairs: a journal reply rewritten to follow it (chosen) over the reply as it was (rejected);
- a replay mix from the pack's seed examples guards against forgetting.

Every one of the user's examples is trained. The gate scores *probes* instead: the same taught
items under phrasings that were never trained (a fact's held-out questions, the corrected question
reworded by templates), each with and without the recalled memory.

Every example carries its source ids (``turn_id``, ``memory_id``) for the training ledger.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from personalization import phrasings, style


@dataclass
class Example:
    messages: list[dict[str, str]]  # the context, ending with the user's message
    answer: str  # the target (for a pair: the chosen answer)
    source: str  # "correction", "rating", "fact", "style", "replay", "probe:..."
    turn_id: str = ""
    weight: float = 1.0
    expect_any: list[str] = field(default_factory=list)  # eval probes: keywords a right answer contains
    memory_id: str = ""
    rejected: str = ""  # non-empty: a preference pair, ``answer`` preferred over this

    @property
    def is_pair(self) -> bool:
        return bool(self.rejected)

    def key(self) -> str:
        return hashlib.sha1(json.dumps([self.messages, self.answer, self.rejected]).encode()).hexdigest()[:16]


@dataclass
class Dataset:
    train: list[Example] = field(default_factory=list)  # every supervised example of the user's
    heldout: list[Example] = field(default_factory=list)  # probes for the gate (untrained phrasings)
    replay: list[Example] = field(default_factory=list)
    pairs: list[Example] = field(default_factory=list)  # preference pairs
    heldout_is_separate: bool = True
    left_out: list[str] = field(default_factory=list)  # why examples were not learned (``screen``)
    ledger_of: tuple[Any, Any] = ((), ())  # (turns, facts) a version will have seen (adapters.training_ledger)

    def hash(self) -> str:
        h = hashlib.sha1()
        for ex in self.train + self.pairs + self.heldout + self.replay:
            h.update(ex.key().encode())
        return h.hexdigest()[:16]

    def sources(self) -> dict[str, list[str]]:
        """The journal turns and memories this round trains on (for the training ledger)."""
        own = self.train + self.pairs
        return {"turn_ids": sorted({e.turn_id for e in own if e.turn_id}),
                "memory_ids": sorted({e.memory_id for e in own if e.memory_id})}


def _msgs(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _last_user(turn: Any) -> str:
    return next((m["content"] for m in reversed(turn.prompt) if m["role"] == "user"), turn.message)


def _context(turn: Any, system: str) -> list[dict[str, str]]:
    """The context as it was sent, but with the current system prompt and without old turns.

    Only the final user message (with the memories it was given) is kept: the answer should
    come from that message, and short contexts train faster.
    """
    return _msgs(system, _last_user(turn))


def _contexts(turn: Any, system: str) -> list[list[dict[str, str]]]:
    """The context as sent and, when memories were recalled, the plain message too."""
    out = [_context(turn, system)]
    if _last_user(turn) != turn.message:
        out.append(_msgs(system, turn.message))
    return out


def from_turns(turns: Iterable[Any], system: str) -> list[Example]:
    out: list[Example] = []
    for turn in turns:
        if turn.correction:
            for ctx in _contexts(turn, system):
                out.append(Example(ctx, turn.correction, "correction", turn.id))
        elif turn.rating == 1 and turn.reply.strip():
            out.append(Example(_context(turn, system), turn.reply, "rating", turn.id))
    return out


def pairs_from_turns(turns: Sequence[Any], system: str) -> list[Example]:
    """Preference pairs: a correction over the reply it replaced; a +1 answer over a -1 answer
    to a similar question (in the -1 turn's context)."""
    out: list[Example] = []
    liked = [t for t in turns if t.rating == 1 and not t.correction and t.reply.strip()]
    for turn in turns:
        if turn.correction and turn.reply.strip() and turn.reply.strip() != turn.correction.strip():
            for ctx in _contexts(turn, system):
                out.append(Example(ctx, turn.correction, "correction", turn.id, rejected=turn.reply))
        elif turn.rating == -1 and not turn.correction and turn.reply.strip():
            near = phrasings.nearest(turn.message, [t.message for t in liked], threshold=0.5)
            if near:
                good = liked[near[0]]
                out.append(Example(_context(turn, system), good.reply, "rating", turn.id, rejected=turn.reply))
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


def _with_memory(memory: Any, question: str) -> str:
    from assistant.prompt import Recalled, user_block

    return user_block(question, [Recalled("m1", getattr(memory, "id", ""), getattr(memory, "kind", "fact"), memory.text)])


def _fact_items(facts: Iterable[Any], heldout: bool) -> list[tuple[str, str, Any]]:
    items = []
    for memory in facts:
        said = second_person(memory.text.rstrip(".!") + ".")
        train, held = phrasings.fact_questions(memory.text, getattr(memory, "attribute", "") or "")
        for q in (held if heldout else train):
            items.append((q, said, memory))
    return phrasings.unique_answers(items)


def from_facts(facts: Iterable[Any], system: str) -> list[Example]:
    """Questions of each fact's own (from its attribute and words) -> the fact, second person;
    the first also with the fact given as a recalled memory."""
    out: list[Example] = []
    seen: set[str] = set()
    for q, said, memory in _fact_items(list(facts), heldout=False):
        mid = getattr(memory, "id", "")
        out.append(Example(_msgs(system, q), said, "fact", memory_id=mid))
        if mid not in seen:
            seen.add(mid)
            out.append(Example(_msgs(system, _with_memory(memory, q)), said, "fact", memory_id=mid))
    return out


def _padded(seed: Sequence[dict[str, Any]], i: int, extra: int = 2) -> str:
    """Seed answer ``i`` run on into the answers after it (the pack's file keeps a topic
    together): a reply that goes on past what was asked."""
    return " ".join(seed[(i + k) % len(seed)]["answer"].strip() for k in range(extra + 1))


def _seed_pair(rule: Any, seed: Sequence[dict[str, Any]], i: int) -> tuple[str, str] | None:
    """(chosen, rejected) on seed example ``i`` for one style rule: a reply cut to the length
    asked for over the reply run on; the answer as a list, or in metric units, over it as written."""
    answer = seed[i]["answer"].strip()
    rejected = _padded(seed, i) if rule.name == "max_sentences" else answer
    chosen = rule.apply(rejected).strip()
    return (chosen, rejected) if chosen and chosen != rejected else None


def style_pairs(turns: Sequence[Any], facts: Iterable[Any], system: str, limit: int = 8,
                seed: Sequence[dict[str, Any]] = (), per_rule: int = 8, rng: random.Random | None = None) -> list[Example]:
    """For each stated style rule: journal replies rewritten to follow it over the replies as
    they were, and pairs on ``per_rule`` of the pack's seed questions (the rule holds for any
    question, not only those the user asked), half of them with the preference as a recalled memory."""
    out: list[Example] = []
    for memory in facts:
        for rule in style.rules(memory.text):
            made = 0
            for turn in reversed(list(turns)):  # the most recent replies first
                text = (turn.correction or turn.reply or "").strip()
                if not text or turn.rating == -1 and not turn.correction:
                    continue
                chosen = rule.apply(text).strip()
                if chosen and chosen != text:
                    out.append(Example(_msgs(system, turn.message), chosen, "style", turn.id,
                                       memory_id=getattr(memory, "id", ""), rejected=text))
                    made += 1
                if made >= limit:
                    break
            order = list(range(len(seed)))
            (rng or random.Random(0)).shuffle(order)
            made = 0
            for i in order:
                pair = _seed_pair(rule, seed, i)
                if pair is None:
                    continue
                question = seed[i]["prompt"]
                if made % 2:
                    question = _with_memory(memory, question)
                out.append(Example(_msgs(system, question), pair[0], "style", memory_id=getattr(memory, "id", ""),
                                   rejected=pair[1]))
                made += 1
                if made >= per_rule:
                    break
    return out


def probes(turns: Sequence[Any], facts: Sequence[Any], system: str, per_item: int = 2) -> list[Example]:
    """The gate's probes: every taught item under phrasings that were never trained, plain and
    with the recalled memory (a fact's own memory; a correction's memories as they were sent)."""
    out: list[Example] = []
    for q, said, memory in _fact_items(facts, heldout=True):
        mid = getattr(memory, "id", "")
        out.append(Example(_msgs(system, q), said, "probe:fact", memory_id=mid))
        out.append(Example(_msgs(system, _with_memory(memory, q)), said, "probe:fact+memory", memory_id=mid))
    for turn in turns:
        target = turn.correction or (turn.reply if turn.rating == 1 else "")
        if not target.strip():
            continue
        kind = "correction" if turn.correction else "rating"
        sent = _last_user(turn)
        for q in phrasings.reword(turn.message, per_item, salt=turn.id):
            out.append(Example(_msgs(system, q), target, f"probe:{kind}", turn.id))
            if sent != turn.message and turn.message in sent:
                out.append(Example(_msgs(system, sent.replace(turn.message, q)), target, f"probe:{kind}+memory", turn.id))
    return out


def replay_examples(seed: Sequence[dict[str, Any]], system: str, n: int, rng: random.Random) -> list[Example]:
    chosen = rng.sample(list(seed), min(n, len(seed))) if seed else []
    return [Example(_msgs(system, s["prompt"]), s["answer"], "replay", turn_id=str(s.get("id", ""))) for s in chosen]


def build(
    turns: Iterable[Any], facts: Iterable[Any], seed: Sequence[dict[str, Any]], system: str, *,
    replay_ratio: float = 2.0, seed_value: int = 0, min_replay: int = 12, max_probes: int = 48,
) -> Dataset:
    """All of the user's examples and pairs, the gate's probes, and a replay mix in proportion."""
    rng = random.Random(seed_value)
    turns = list(turns)
    facts = list(facts)
    data = Dataset()
    data.train = from_turns(turns, system) + from_facts(facts, system)
    data.pairs = pairs_from_turns(turns, system) + style_pairs(turns, facts, system, seed=seed, rng=rng)
    held = probes(turns, facts, system)
    trained = {json.dumps(e.messages) for e in data.train + data.pairs}
    held = [e for e in held if json.dumps(e.messages) not in trained]
    if len(held) > max_probes:  # scoring generates answers: a fixed, spread sample
        held = sorted(held, key=lambda e: hashlib.sha1(e.key().encode()).hexdigest())[:max_probes]
    if held:
        data.heldout = held
    else:  # nothing could be reworded (e.g. only ratings): scored on the trained examples, marked so
        data.heldout = [e for e in data.train if not e.is_pair][:max_probes]
        data.heldout_is_separate = False
    n_own = len(data.train) + len(data.pairs)
    data.replay = replay_examples(seed, system, max(min_replay, int(n_own * replay_ratio)), rng) if n_own else []
    return data
