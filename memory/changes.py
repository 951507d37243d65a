"""What changed in what the user said: which memory replaces which, and what an answer about the
user's present quotes of a statement that also names the past.

"I moved from Brooklyn to Queens" answers "Which part of New York do I live in?" with Queens;
quoting the whole sentence puts the old value in the answer beside the new one, and a reader (or a
grader) cannot tell which one is meant. So for a question about now, an answer quotes the part of
a memory that states the present: "I moved to Queens"; "I've stopped doing keto" is not quoted
beside "I'm following a Mediterranean diet now". A question about the past ("Where did I use to
live?") gets the memories as they were said.

Nothing here knows a pack or a suite: these are the shapes in which people say that something
changed.
"""

from __future__ import annotations

import re
from typing import AbstractSet, Any

# A statement that something changed ("I now ...", "my new GP", "raised my rent to", "instead of").
_CHANGE = re.compile(
    r"\b(now|new|moved|switched|changed|raised|lowered|increased|reduced|went (up|down)|instead|no longer|"
    r"any ?more|stopped|left|quit|traded|turned|became|update[ds]?|upgraded|replaced|ended|expired)\b", re.I)
# ...unless it adds to what was said ("I'm now also allergic to shellfish").
_ADDITION = re.compile(r"\b(also|too|as well|another|second|in addition|besides)\b", re.I)
# A clause about what is over: "I left the ramen bar", "my fixed term ended", "I traded the Focus in".
_PAST_STATE = re.compile(
    r"\b(left|quit|stopped|gave up|given up|ended|expired|finished|sold|traded\b.*\bin|cancell?ed|dropped|"
    r"no longer|used to|any ?more|any longer|moved out|retired from|was let go|got rid of|divorced)\b", re.I)
# The old value inside a change statement: "moved from Cork to Galway", "instead of the 10K".
_FROM_TO = re.compile(
    r"\b((?:moved|switched|changed|went|gone|upgraded|downgraded|transferred|relocated|changing|switching|moving)"
    r"(?: over| back| jobs| house| home)?) from (?:(?!\bto\b)[\w'’.,-]+ ){0,4}?(?=to\b)", re.I)
_INSTEAD = re.compile(r",?\s*\b(?:instead of|rather than|in place of|in favou?r of)\s+(?:(?:the|a|an|my)\s+)?[\w'’-]+(?:\s+[\w'’-]+)?"
                      r"(?=[\s.,;!]|$)", re.I)
# A question about how things were, not how they are.
_PAST_Q = re.compile(r"\b(used to|was i|were we|before|previous(ly)?|former(ly)?|my old|original(ly)?|earlier|"
                     r"last time|in the past)\b", re.I)


# "My fixed term ended and I'm on a periodic lease now": two statements, whatever extraction makes of them.
_AND_I = re.compile(r"(?:[;,]\s*|\s+)(?:and|but|so)\s+(?=(?:i|i'm|i've|we|we're|we've)\b)|;\s*", re.I)


def _parts(text: str) -> list[str]:
    from memory.extract import clauses

    return [p.strip() for c in clauses(text) for p in _AND_I.split(c) if p and re.search(r"\w", p)]


def asks_about_past(question: str) -> bool:
    return _PAST_Q.search(question) is not None


def current_part(text: str) -> str:
    """``text`` as it answers a question about now: without the clauses that only say what is over
    (when another clause says what is now) and without the old value of a "from X to Y" or an
    "instead of X". The text is returned unchanged when nothing in it is about the past."""
    parts = _parts(text)
    present = [c for c in parts if not _PAST_STATE.search(c)]
    changed = bool(present) and len(present) < len(parts)
    out = []
    for c in present if changed else parts:
        now = _INSTEAD.sub("", _FROM_TO.sub(lambda m: m.group(1) + " ", c)).strip()
        changed = changed or now != c
        out.append(now if now.endswith((".", "!")) else now.rstrip(",;:") + ".")
    joined = " ".join(out)
    return joined if changed and joined.strip(". ") else text


def only_past(text: str) -> bool:
    """Whether every clause of ``text`` says what is over ("I've stopped doing keto.")."""
    parts = _parts(text)
    return bool(parts) and all(_PAST_STATE.search(c) for c in parts)


def replaces(newer: Any, older: Any, terms: AbstractSet[str] = frozenset()) -> bool:
    """Whether memory ``newer`` states a change to what ``older`` says, so that an answer gives
    only the newer one: it was said in a later turn, says that something changed (and not that
    something was added), and is about the same thing (see below); and their attributes, where
    both have one, are the same.
    ("I'm 20 weeks pregnant" / "I'm 26 weeks now": the same; "I'm allergic to peanuts" / "I'm now
    allergic to shellfish too": two allergies.)"""
    from memory.recall import _matches, _stems, content_words, episode_text

    if (newer.created or 0) <= (older.created or 0) or (newer.source_turn and newer.source_turn == older.source_turn):
        return False
    new_text, old_text = episode_text(newer.text), episode_text(older.text)
    if not _CHANGE.search(new_text) or _ADDITION.search(new_text):
        return False
    if newer.attribute and older.attribute and newer.attribute != older.attribute:
        return False
    # the words that say "changed" are no evidence of the same thing ("my new GP" / "the new surgery")
    new_stems = _stems(content_words(_CHANGE.sub(" ", new_text)))
    old_stems = _stems(content_words(_CHANGE.sub(" ", old_text)))
    new_hits = _matches(terms, _stems(content_words(new_text)))
    old_hits = _matches(terms, _stems(content_words(old_text)))
    # the same thing: a word in common, a word of the question in both, or the older only resembles
    # the question while the newer names it ("I rent in Los Angeles" / "I've moved to Portland")
    return bool(new_stems & old_stems) or bool(new_hits & old_hits) or bool(new_hits and not old_hits)
