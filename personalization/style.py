"""Stated style preferences as code: a rule read from the user's words, and a rewrite of a reply
that follows it. ``dataset`` pairs the rewrite (chosen) with the reply as it was (rejected).

    "Keep your answers under three sentences"  -> at most 2 sentences
    "Answer in bullet points"                  -> one bullet per sentence
    "Always give metric units"                 -> °F, lb, oz, inches, miles converted, imperial asides dropped
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "a single": 1, "single": 1}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass
class Rule:
    name: str  # "max_sentences", "bullets", "metric"
    apply: Callable[[str], str]
    said: str  # the user's words


def _count(word: str) -> int | None:
    word = word.lower()
    if word.isdigit():
        return int(word)
    return _NUMBERS.get(word)


def sentences(text: str) -> list[str]:
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip()) if p.strip()]
    out: list[str] = []
    for p in parts:
        if p.startswith(("- ", "* ", "• ")):
            p = p[2:]
        out.append(p)
    return out


def first_sentences(n: int) -> Callable[[str], str]:
    def apply(text: str) -> str:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) > 1 and all(ln.lstrip().startswith(("-", "*", "•")) for ln in lines):
            return "\n".join(lines[:n])  # already a list: keep its first items
        return " ".join(sentences(text)[:n])
    return apply


def bullets(text: str) -> str:
    items = sentences(text.replace("\n", " "))
    if len(items) < 2:
        return text if text.lstrip().startswith("- ") else f"- {text.strip()}"
    return "\n".join(f"- {s.rstrip('.')}" for s in items)


def _f_to_c(m: re.Match[str]) -> str:
    c = (float(m.group(1)) - 32) * 5 / 9
    return f"{c:.0f} °C"


_IMPERIAL = [
    (re.compile(r"\s*\((?:about |around |or )?-?\d+(?:\.\d+)?\s*°\s*F\)"), lambda m: ""),  # "74 °C (165 °F)" -> "74 °C"
    (re.compile(r"(-?\d+(?:\.\d+)?)\s*°\s*F\b"), _f_to_c),
    (re.compile(r"(\d+(?:\.\d+)?)\s*(?:lbs?|pounds?)\b"), lambda m: f"{float(m.group(1)) * 0.4536:.1f} kg"),
    (re.compile(r"(\d+(?:\.\d+)?)\s*(?:oz|ounces?)\b"), lambda m: f"{float(m.group(1)) * 28.35:.0f} g"),
    (re.compile(r"(\d+(?:\.\d+)?)\s*(?:inch(?:es)?|in\.)"), lambda m: f"{float(m.group(1)) * 2.54:.1f} cm"),
    (re.compile(r"(\d+(?:\.\d+)?)\s*miles?\b"), lambda m: f"{float(m.group(1)) * 1.609:.1f} km"),
]


def metric(text: str) -> str:
    out = text
    for pattern, repl in _IMPERIAL:
        out = pattern.sub(repl, out)
    return out


_MAX = re.compile(r"\b(?:under|fewer than|less than|below)\s+(\w+)\s+sentences?\b", re.I)
_AT_MOST = re.compile(r"\b(?:in|at most|no more than|max(?:imum)?(?: of)?|within|to)\s+(a single|\w+)\s+sentences?\b", re.I)
_SHORT = re.compile(r"\b(?:answers?|replies|responses|keep it)\b.*\b(?:short|brief|concise)\b", re.I)
_BULLETS = re.compile(r"\bbullet(?:ed)?[- ]?(?:points?|lists?)?\b|\bas a list\b", re.I)
_METRIC = re.compile(r"\b(?:metric|celsius|grams|kilograms)\b", re.I)


def rules(text: str) -> list[Rule]:
    """The style rules stated in one preference (none when it states no style)."""
    out: list[Rule] = []
    m = _MAX.search(text)
    if m and (n := _count(m.group(1))):
        out.append(Rule("max_sentences", first_sentences(max(1, n - 1)), text))
    else:
        m = _AT_MOST.search(text)
        if m and (n := _count(m.group(1))):
            out.append(Rule("max_sentences", first_sentences(n), text))
        elif _SHORT.search(text):
            out.append(Rule("max_sentences", first_sentences(2), text))
    if _BULLETS.search(text) and not re.search(r"\b(no|without|don'?t|never)\b.*\bbullet", text, re.I):
        out.append(Rule("bullets", bullets, text))
    if _METRIC.search(text) and not re.search(r"\b(no|not|never|don'?t)\b.*\bmetric", text, re.I):
        out.append(Rule("metric", metric, text))
    return out


def follows(text: str, rule: Rule) -> bool:
    """Whether ``text`` already follows ``rule`` (its rewrite changes nothing)."""
    return rule.apply(text).strip() == text.strip()
