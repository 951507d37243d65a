"""Answers that are right by construction.

A 135M model cannot hold a domain, and it does not read a long prompt carefully. So the turn
decides what kind of question it has, and for two kinds builds the answer from what is known
instead of hoping the model will:

- **about the user** ("Where do I live?", "What's my sister's name?", "Do you remember ..."):
  the answer is the user's own recalled words, turned to the second person ("You told me you
  live in Oslo."), newest value first; when nothing relevant is recalled, it says so plainly
  ("You haven't told me your sister's name yet.") and invents nothing;
- **about the domain**: the best sentences of the recalled notes lead the answer (the model
  continues from them), and every number in what the model adds is checked against the notes,
  the pack's safety rules, the memories and the question; a sentence with a number found in
  none of them is withheld, and the answer says so.

Pure functions; the turn loop (``assistant.core``) wires them to recall and the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

# ------------------------------------------------------------------------- routing
_ADVICE = re.compile(
    r"\b(should|could|can|may|might|shall|would|must) (i|we)\b|\bhow (do|can|should|would|could) (i|we)\b"
    r"(?! (usually|normally|always|typically))|\bis it (ok|okay|safe|fine|bad|alright|possible)\b|"
    r"\b(suggest|recommend|give me|make me|help me|show me|teach me|explain|ideas?|recipe)\b|\bfor (me|us)\b|"
    r"\bwhat (can|should|could) i\b|\bi('m| am) (making|cooking|roasting|baking|going|planning|thinking|trying)\b|"
    # what one must or may do, what happens if, why something happens: advice, not a fact about the user
    r"\b(do|does|would|will) (i|we) (have to|need|get to)\b|\b(am|are) (i|we) (bound|allowed|entitled|required|obliged|"
    r"liable|responsible|protected|covered|supposed)\b|^\s*(can|could|may|must) (my|a|an|the|they|he|she|someone)\b|"
    r"\bif (i|we)\b|\bwhat happens\b|\bhelps? (me|us)\b|\bshould (it|they|this|that|he|she)\b|^\s*why\b|"
    r"^\s*(who|what|which) can\b",
    re.I,
)
_SELF_QUESTION = re.compile(
    r"\b(my|mine|our)\b|\b(do|did|am|was|have|had|were|are) (i|we)\b|\b(i|we) (usually|normally|always|typically)\b|"
    r"\b(about|of) me\b|\bdo you (remember|know|recall)\b|\bwhat did i\b|\bremind me\b|\bwho am i\b",
    re.I,
)
_QUESTION = re.compile(
    r"\?\s*$|^(what|which|who|whom|whose|when|where|why|how|is|are|am|was|were|do|does|did|have|has|can|could|"
    r"remind|tell me|describe|define|explain|compare)\b|"
    r"^(name|list) (a|an|the|some|one|two|three|four|five|\d+|any|my|all|every)\b", re.I,
)


# "List the ingredients in grams from now on." is an instruction for every answer, not a question.
_STANDING = re.compile(r"\b(from now on|always|never|every time|in future|going forward)\b", re.I)


def is_question(text: str) -> bool:
    t = text.strip()
    if _QUESTION.search(t) is None:
        return False
    return t.endswith("?") or not _STANDING.search(t)


def is_personal_question(text: str) -> bool:
    """A question asking for something about the user (not advice that merely mentions them)."""
    t = text.strip()
    if not is_question(t) or not _SELF_QUESTION.search(t):
        return False
    return _ADVICE.search(t) is None


# ------------------------------------------------------------------------- person
_SWAP = [
    (r"\bI am\b", "you are"), (r"\bI'm\b", "you're"), (r"\bI've\b", "you've"), (r"\bI'd\b", "you'd"),
    (r"\bI'll\b", "you'll"), (r"\bI was\b", "you were"), (r"\bI\b", "you"), (r"\bmy\b", "your"),
    (r"\bmine\b", "yours"), (r"\bmyself\b", "yourself"), (r"\bme\b", "you"), (r"\bwe are\b", "you are"),
    (r"\bwe're\b", "you're"), (r"\bwe've\b", "you've"), (r"\bwe were\b", "you were"), (r"\bwe\b", "you"),
    (r"\bour\b", "your"), (r"\bours\b", "yours"), (r"\bus\b", "you"), (r"\bam\b", "are"),
]
_SWAP_RE = [(re.compile(p, re.I), r) for p, r in _SWAP]
_LEAD_IN = re.compile(
    r"^(?:(?:hi|hello|hey)[,!]?\s+(?:there[,!]?\s+)?|(?:big |good |some |great )?news[:,!]\s*|by the way,?\s*|btw,?\s*|"
    r"actually,?\s*|so,?\s*|well,?\s*|oh,?\s*|also,?\s*|fun fact:?\s*|just so you know,?\s*|for the record,?\s*|"
    r"[A-Z][a-z]+ here[.,!]\s+)+",
    re.I,
)


def second_person(text: str) -> str:
    """The user's own sentence as said back to them: "I live in Oslo." -> "you live in Oslo."."""
    out = _LEAD_IN.sub("", text.strip())
    tokens = re.split(r"([A-Za-z]+(?:'[A-Za-z]+)?)", out.replace("’", "'"))
    swapped = []
    for tok in tokens:
        new = tok
        if re.fullmatch(r"[A-Za-z']+", tok or ""):
            for pattern, repl in _SWAP_RE:
                if pattern.fullmatch(tok):
                    new = repl
                    break
        swapped.append(new)
    out = "".join(swapped)
    # two-word forms ("I am", "we are") were split: fix the verb after "you"
    out = re.sub(r"\byou am\b", "you are", out)
    out = re.sub(r"\byou was\b", "you were", out)
    out = re.sub(r"\byou has\b", "you have", out)
    return out[:1].lower() + out[1:] if out[:2] != "I " else out


def _indirect(question: str) -> str:
    """ "What is my sister's name?" -> "your sister's name"; "Where do I live?" -> "where you live"."""
    q = re.sub(r"[?.!\s]+$", "", question.strip())
    q = re.sub(r"^(?:and|so|also|hey|ok|okay|please)[, ]+", "", q, flags=re.I)
    q = re.sub(r"^(?:do|can) you (?:remember|recall|know|tell me)\s*(?:if|whether)?\s*", "", q, flags=re.I)
    q = re.sub(r"^(?:tell me|remind me)\s*", "", q, flags=re.I)
    m = re.match(r"^(what|who|which|whose)(?: \w+)? ?(?:is|are|was|were|'s)\s+((?:my|our)\b.+)$", q, re.I)
    if m:
        return second_person(m.group(2))
    m = re.match(r"^(what|what's|whats)\s+((?:my|our)\b.+)$", q, re.I)
    if m:
        return second_person(m.group(2))
    m = re.match(r"^((?:what|which|where|when|who|how)(?: \w+){0,3}?) (?:do|does|did) (i|we) (.+)$", q, re.I)
    if m:
        return f"{m.group(1).lower()} you {second_person(m.group(3))}"
    m = re.match(r"^((?:what|which|where|when|who|how)(?: \w+){0,3}?) (?:am|was) i (.+)$", q, re.I)
    if m:
        return f"{m.group(1).lower()} you are {second_person(m.group(2))}"
    m = re.match(r"^(?:do|did|have|am|was) (i|we) (.+)$", q, re.I)
    if m:
        return "whether you " + second_person(m.group(2))
    if re.match(r"^(?:what|which|where|who|how|when)\b", q, re.I) and len(q.split()) <= 12:
        return second_person(q[0].lower() + q[1:])
    return "that"


def wants_answer(text: str) -> bool:
    """A question, or a request for advice, as opposed to a plain statement."""
    return is_question(text) or _ADVICE.search(text) is not None or "?" in text


_IMPERATIVE = re.compile(r"^(?:please\s+|from now on,?\s+)*(keep|always|never|use|answer|give|don'?t|do not|avoid|stop|call|reply|write|include)\b", re.I)


def acknowledge(texts: Sequence[str]) -> str:
    """The reply to a statement that told us something: what will be remembered, in the second person."""
    facts, rules = [], []
    for t in (t.strip().rstrip(" .!") for t in texts if t.strip()):
        m = _IMPERATIVE.match(t)
        if m:
            rule = re.sub(r"^(?:please\s+|from now on,?\s+)*", "", t, flags=re.I)
            rule = re.sub(r"\byour\b", "my", rule, flags=re.I)
            rule = re.sub(r",?\s*please$", "", rule, flags=re.I)
            rules.append(rule[0].lower() + rule[1:])
        else:
            facts.append(second_person(t))
    parts = []
    if facts:
        parts.append("Got it, I'll remember that " + "; ".join(facts) + ".")
    if rules:
        parts.append(("Got it, I will " if not facts else "And I will ") + " and ".join(rules) + ".")
    return " ".join(parts)


def abstain_text(question: str) -> str:
    what = _indirect(question)
    return (f"You haven't told me {what} yet. If you tell me, I'll remember it."
            if what != "that" else "You haven't told me that yet. If you tell me, I'll remember it.")


def personal_answer(texts: Sequence[str]) -> str:
    """What the user told us, in their words turned to the second person."""
    said = [second_person(t).rstrip(" .!") for t in texts if t.strip()]
    if not said:
        return ""
    if len(said) == 1:
        return f"You told me {said[0]}."
    return "You told me " + "; ".join(said[:-1]) + f"; and {said[-1]}."


# ------------------------------------------------------------------------- numbers
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)*(?:\s?/\s?\d+)?)")
_LIST_MARK = re.compile(r"^\s*\d+[.)]\s", re.M)


def numbers(text: str) -> set[str]:
    """The numbers in ``text``, normalised (thousands separators dropped, '1/2' kept)."""
    text = _LIST_MARK.sub(" ", text)
    out = set()
    for raw in _NUMBER.findall(text):
        n = re.sub(r"\s", "", raw).rstrip(".,")
        n = re.sub(r"(?<=\d),(?=\d{3}\b)", "", n)
        out.add(n.replace(",", "."))
        for part in re.split(r"[/-]", n):  # a range's or fraction's parts count on their own
            out.add(part)
    return out


@dataclass
class NumberCheck:
    text: str
    withheld: list[str] = field(default_factory=list)  # the numbers that were not supported


def check_numbers(answer: str, support: Iterable[str]) -> NumberCheck:
    """Withhold every sentence of ``answer`` that states a number found in none of ``support``."""
    allowed: set[str] = set()
    for s in support:
        allowed |= numbers(s)
    kept: list[str] = []
    withheld: list[str] = []
    for sentence in re.split(r"(?<=[.!?])(?<!^\d[.])(?<!^\d\d[.])[ \t]+|\n+", answer, flags=re.M):
        bad = sorted(n for n in numbers(sentence) if n not in allowed and n.split(".")[0] not in allowed)
        if bad:
            withheld += bad
        elif sentence.strip():
            kept.append(sentence.strip())
    return NumberCheck(" ".join(kept), withheld)


WITHHELD_NOTE = re.compile(r"\(I left out (?:a figure|\d+ figures) that my notes do not support\.\)")


def withheld_note(nums: Sequence[str]) -> str:
    """Said when sentences were withheld (the figures themselves are not repeated: they may be wrong)."""
    n = len(dict.fromkeys(nums))
    return f"(I left out {'a figure' if n == 1 else f'{n} figures'} that my notes do not support.)"


def stated_numbers(answer: str) -> set[str]:
    """The numbers an answer states as facts (the count in the withheld-figures note is not one)."""
    return numbers(WITHHELD_NOTE.sub(" ", answer))
