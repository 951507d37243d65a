"""Questions built by code: per-fact questions from a fact's own attribute and words, and the
rewordings of a corrected question that the gate asks (never trained on).

Every fact gets its own questions (what is asked names the fact's attribute or topic), so one
question never has many different answers; ``unique_answers`` drops any question that still does.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

_STOP = set(
    "a an the is are was were be been of to in on at for and or your you my i me it its this that with "
    "we our us am do does did have has had not no so very really just also like love hate prefer "
    "can can't cannot don't never always usually what how when where which who why whom should would could "
    "will need get make tell know please".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")

# attribute -> (trained questions, held-out questions). {x}: the attribute's value or item.
_BY_ATTRIBUTE: dict[str, tuple[list[str], list[str]]] = {
    "residence": (["Where do I live?", "Which city do I live in?"],
                  ["Remind me where I live.", "Where is my home?"]),
    "job": (["What do I do for a living?", "What is my job?"],
            ["What's my profession?", "What work do I do?"]),
    "diet": (["What is my diet?", "What kind of diet do I follow?"],
             ["Do I follow a particular diet?", "How do I eat, diet-wise?"]),
    "household_size": (["How many people do I cook for?", "How big is my household?"],
                       ["How many of us are there at home?", "For how many people do I usually cook?"]),
    "budget": (["What is my budget?", "How much do I want to spend?"],
               ["What budget did I give you?", "How much am I willing to spend?"]),
    "marital_status": (["What is my relationship status?", "Am I married?"],
                       ["Do I have a spouse?", "Tell me my marital status."]),
    "answer_length": (["How long should your answers to me be?", "How do I like your answers?"],
                      ["What answer length do I prefer?", "How long do I want your replies?"]),
    "units": (["Which units should you use with me?", "What units do I prefer?"],
              ["Which measurement system do I like?", "In what units should you answer me?"]),
    "name": (["What is my name?", "What should you call me?"],
             ["Do you know my name?", "How should you address me?"]),
    "age": (["How old am I?", "What is my age?"],
            ["Do you know my age?", "Remind me how old I am."]),
    "allergy": (["What am I allergic to?", "Am I allergic to {x}?"],
                ["Do I have a {x} allergy?", "Is {x} a problem for me?"]),
    "my": (["What is my {x}?", "What did I tell you about my {x}?"],
           ["Do you remember my {x}?", "Can you tell me my {x}?", "Remind me: what is my {x}?"]),
}


def topic(text: str, words: int = 3) -> str:
    """The last few content words of a statement: 'I love spicy Thai food.' -> 'spicy Thai food'."""
    found = [w for w in _WORD.findall(text) if w.lower() not in _STOP]
    return " ".join(found[-words:])


def fact_questions(text: str, attribute: str) -> tuple[list[str], list[str]]:
    """(trained questions, held-out questions) about one stated fact, from its attribute and words."""
    kind, _, value = attribute.partition(":")
    if kind in _BY_ATTRIBUTE:
        train, held = _BY_ATTRIBUTE[kind]
        x = value or topic(text)
        return [q.format(x=x) for q in train], [q.format(x=x) for q in held]
    m = re.search(r"\bmy ((?:\w+'s )?\w+)", text, re.I)
    if m:
        train, held = _BY_ATTRIBUTE["my"]
        return [q.format(x=m.group(1)) for q in train], [q.format(x=m.group(1)) for q in held]
    about = topic(text)
    if not about:
        return [], []
    return ([f"What did I tell you about {about}?", f"What do you know about me and {about}?"],
            [f"Do you remember what I said about {about}?", f"What have I said about {about}?"])


_REWORD = [
    ("{q}", "Quick question: {q}"),
    ("{q}", "{q} Please answer briefly."),
    ("{q}", "I was wondering: {q}"),
    ("{q}", "Can you help? {q}"),
]


def reword(question: str, n: int = 2, salt: str = "") -> list[str]:
    """``n`` rewordings of a question by templates (a lead-in or a tail; a lowered first letter
    after a lead-in), chosen deterministically by ``salt`` so a round asks the same ones again."""
    q = question.strip()
    if not q:
        return []
    start = sum(map(ord, salt)) % len(_REWORD)
    out: list[str] = []
    for i in range(len(_REWORD)):
        _, template = _REWORD[(start + i) % len(_REWORD)]
        body = q if template.startswith("{q}") else q[0].lower() + q[1:] if q[:2] != "I " else q
        text = template.format(q=body)
        if text != q and text not in out:
            out.append(text)
        if len(out) == n:
            break
    return out


def unique_answers(pairs: Iterable[tuple[str, str, Any]]) -> list[tuple[str, str, Any]]:
    """Drop every (question, answer, payload) whose question is also asked with another answer."""
    items = list(pairs)
    answers: dict[str, set[str]] = {}
    for q, a, _ in items:
        answers.setdefault(q.lower(), set()).add(a)
    return [(q, a, p) for q, a, p in items if len(answers[q.lower()]) == 1]


def content_words(text: str) -> set[str]:
    return {w.lower().strip("'") for w in _WORD.findall(text) if w.lower() not in _STOP}


def similar(a: str, b: str, threshold: float = 0.5) -> bool:
    """Two questions about the same thing: their content words overlap (Jaccard) this much."""
    wa, wb = content_words(a), content_words(b)
    if not wa or not wb:
        return False
    return len(wa & wb) / len(wa | wb) >= threshold


def nearest(question: str, candidates: Sequence[str], threshold: float = 0.34) -> list[int]:
    """Indices of the candidates that ask about the same thing as ``question``."""
    return [i for i, c in enumerate(candidates) if similar(question, c, threshold)]
