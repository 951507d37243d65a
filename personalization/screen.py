"""Training examples that contradict the pack's notes are not learned.

A correction can teach a wrong figure ("Chicken is safe once it reaches 50 °C"), by mistake or on
purpose. The answers already withhold figures the notes do not support, but an adapter that
learned one would keep pulling the model towards it, and the gate's loss tolerances are too loose
to see one bad fact among many good ones. So before a round trains, every example whose answer
states a quantity (a number with a unit: °C, mg, minutes, days, ...) is compared with the pack's
note sentences on the same subject: when those sentences state quantities in the same unit and
none is the example's, the example contradicts the notes and is left out, with the note it
contradicts named for the user. Figures the notes say nothing about, and figures about the
user's own things ("I bake my pizza at 250 °C", "your budget is 40 euros"), are learned as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

# A note sentence speaks to an example when it is this similar to the question and answer
# (MiniLM cosine; the answering side leads with a note sentence from 0.45).
SUBJECT_MIN_SIMILARITY = 0.45

_UNITS = {
    "°c": "°C", "ºc": "°C", "degrees c": "°C", "degrees celsius": "°C", "celsius": "°C", "c": "°C",
    "°f": "°F", "ºf": "°F", "degrees f": "°F", "degrees fahrenheit": "°F", "fahrenheit": "°F", "f": "°F",
    "mg": "mg", "milligrams": "mg", "mcg": "mcg", "µg": "mcg", "micrograms": "mcg", "g": "g", "grams": "g",
    "kg": "kg", "ml": "ml", "millilitres": "ml", "milliliters": "ml", "l": "l", "litres": "l", "liters": "l",
    "%": "%", "percent": "%", "per cent": "%",
    "seconds": "s", "second": "s", "minutes": "min", "minute": "min", "mins": "min", "min": "min",
    "hours": "h", "hour": "h", "hrs": "h", "hr": "h", "h": "h", "days": "day", "day": "day",
    "weeks": "week", "week": "week", "months": "month", "month": "month", "years": "year", "year": "year",
}
_UNIT_RE = "|".join(sorted((re.escape(u) for u in _UNITS), key=len, reverse=True))
_QUANTITY = re.compile(rf"(?<![\w.])(\d+(?:[.,]\d+)?)(?:\s?(?:-|–|to)\s?(\d+(?:[.,]\d+)?))?\s?({_UNIT_RE})(?![\w])", re.I)


# An answer about the user's own things states their figures, not the domain's ("you" alone is
# the generic reader: "you should cook chicken to 50 °C" is a domain claim).
_PERSONAL = re.compile(r"\b(I|I'm|I've|my|me|mine|we|our|your|yours)\b", re.I)


def quantities(text: str) -> set[tuple[str, str]]:
    """The (value, unit) pairs ``text`` states; a range "3-4 days" gives both ends."""
    out = set()
    for m in _QUANTITY.finditer(text):
        unit = _UNITS[re.sub(r"\s+", " ", m.group(3).lower())]
        for value in (m.group(1), m.group(2)):
            if value:
                out.add((value.replace(",", "."), unit))
    return out


@dataclass
class Contradiction:
    example: Any
    stated: list[str]  # the example's figures, as "50 °C"
    note: str  # the note sentence it contradicts
    citation: str  # file > heading

    def describe(self) -> str:
        where = f" ({self.citation})" if self.citation else ""
        return f"{', '.join(self.stated)} contradicts the pack's notes{where}: \"{self.note}\""


def contradiction(answer: str, sentences: Sequence[tuple[str, str]]) -> tuple[list[str], str, str] | None:
    """The figures of ``answer`` that a note sentence on its subject states otherwise, with that
    sentence and its citation; None when every figure agrees or the notes state none in its unit."""
    stated = quantities(answer)
    for text, citation in sentences:
        known = quantities(text)
        units = {u for _, u in known}
        wrong = sorted(f"{v} {u}" for v, u in stated if u in units and (v, u) not in known)
        if wrong and not any((v, u) in known for v, u in stated):
            return wrong, text, citation
    return None


def against_notes(examples: Sequence[Any], notes_for: Callable[[str], Sequence[tuple[str, str]]]) -> list[Contradiction]:
    """The examples (with ``messages`` and ``answer``) whose figures contradict the notes that
    ``notes_for(question and answer)`` returns as (sentence, citation) pairs."""
    found = []
    for ex in examples:
        if not quantities(ex.answer) or _PERSONAL.search(ex.answer):
            continue
        question = next((m["content"] for m in reversed(ex.messages) if m["role"] == "user"), "")
        hit = contradiction(ex.answer, notes_for(f"{question} {ex.answer}"))
        if hit:
            found.append(Contradiction(ex, *hit))
    return found


def note_lookup(knowledge: Any, embedder: Any) -> Callable[[str], list[tuple[str, str]]]:
    """``notes_for`` over a pack's knowledge base: its sentences on the text's subject."""
    from memory.recall import note_sentences

    def notes_for(text: str) -> list[tuple[str, str]]:
        chunks = knowledge.query(text, 4)
        best = note_sentences(embedder, text, chunks, top=3) if chunks else []
        return [(b.text, getattr(b.memory, "citation", "") or "") for b in best if b.similarity >= SUBJECT_MIN_SIMILARITY]

    return notes_for
