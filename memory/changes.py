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
from typing import AbstractSet, Any, Callable

# A statement that something changed ("I now ...", "my new GP", "raised my rent to", "instead of").
_CHANGE = re.compile(
    r"\b(now|new|moved|switched|changed|raised|lowered|increased|reduced|went (up|down)|instead|no longer|"
    r"any ?more|stopped|left|quit|traded|turned|became|update[ds]?|upgraded|replaced|ended|expired)\b", re.I)
# ...unless it adds to what was said ("I'm now also allergic to shellfish").
_ADDITION = re.compile(r"\b(also|too|as well|another|second|in addition|besides)\b", re.I)
# A clause about what is over: "I left the ramen bar", "my fixed term ended", "I traded the Focus in".
_PAST_STATE = re.compile(
    r"\b(left (my|the|a|an|our|his|her|their|school|work|home|college|university)\b|quit|stopped|gave up|given up|"
    r"ended|expired|sold|traded\b.*\bin|cancell?ed|used to|moved out|got rid of|was let go)\b", re.I)
# ...but a clause that says "now" is about now ("I stopped eating meat, I'm vegetarian now").
_PRESENT = re.compile(r"\b(now|currently|these days|nowadays|at the moment)\b", re.I)
# A strong sign that a statement replaces an earlier one (not "new": "my sister had a new baby").
_STRONG_CHANGE = re.compile(
    r"\b(instead of|rather than|no longer|any ?more|switched|changed|moved|replaced|traded|now)\b", re.I)
# The old value inside a change statement: "moved from Cork to Galway" (done, not "moving from").
_FROM_TO = re.compile(
    r"\b((?:moved|switched|changed|went|gone|upgraded|downgraded|transferred|relocated)"
    r"(?: over| back| jobs| house| home)?) from (?:(?!\bto\b)[\w'’.,-]+ ){0,4}?(?=to\b)", re.I)
# "... instead of the 10K." at the end of a clause, or "Instead of coffee, ..." at its start.
_INSTEAD_END = re.compile(r",?\s*\b(?:instead of|rather than|in place of)\s+(?:(?:the|a|an|my)\s+)?"
                          r"(?!(?:and|or|i|we)\b)[\w'’-]+(?:\s+(?!(?:and|or|i|we)\b)[\w'’-]+)?(?=\s*(?:now)?\s*[.!;]?\s*$)", re.I)
_INSTEAD_START = re.compile(r"^(?:instead of|rather than)\s+[^,]{1,40},\s*", re.I)
# A question about how things were, not how they are.
_PAST_Q = re.compile(r"\b(used to|did (i|we)|was i|were we|before|previous(ly)?|former(ly)?|my old|original(ly)?|"
                     r"earlier|last time|in the past)\b|\bfrom\s*\?*\s*$", re.I)


# "My fixed term ended and I'm on a periodic lease now", "I left Google and now work at Meta", "I
# stopped eating meat, I'm vegetarian now": two statements, whatever extraction makes of them.
_AND_I = re.compile(r"(?:[;,]\s*|\s+)(?:and|but|so)\s+(?=(?:now\s+)?(?:i|i'm|i've|we|we're|we've)\b)|"
                    r"\s+(?:and|but)\s+(?=now\b)|,\s*(?=(?:now\s+)?(?:i|i'm|i've|we|we're|we've)\b)|;\s*", re.I)


def _parts(text: str) -> list[str]:
    from memory.extract import clauses

    out = []
    for c in clauses(text):
        for p in _AND_I.split(c):
            p = p.strip()
            if re.search(r"\w", p):
                # "... and now work at Meta" -> "I now work at Meta"
                p = "I " + p if re.match(r"^now\s+(?!(?:i|i'm|i've|we|we're|we've)\b)", p, re.I) else p
                out.append(p[0].upper() + p[1:])
    return out


def _past(clause: str) -> bool:
    return _PAST_STATE.search(clause) is not None and _PRESENT.search(clause) is None


def asks_about_past(question: str) -> bool:
    return _PAST_Q.search(question) is not None


def current_part(text: str, keep: Callable[[str], bool] = lambda clause: False) -> str:
    """``text`` as it answers a question about now: without the clauses that only say what is over
    (when another clause says what is now, and unless ``keep`` says the clause is what is asked)
    and without the old value of a "from X to Y" or an "instead of X". The text is returned
    unchanged when nothing in it is about the past."""
    parts = _parts(text)
    present = [c for c in parts if not _past(c) or keep(c)]
    changed = bool(present) and len(present) < len(parts)
    out = []
    for c in present if changed else parts:
        now = _FROM_TO.sub(lambda m: m.group(1) + " ", c)
        now = _INSTEAD_END.sub("", now).strip()
        start = _INSTEAD_START.sub("", now)
        now = start[:1].upper() + start[1:] if start != now else now
        changed = changed or now != c
        if re.search(r"\w", now):
            out.append(now if now.endswith((".", "!")) else now.rstrip(",;:") + ".")
    joined = " ".join(out)
    return joined if changed and joined.strip(". ") else text


def strongly_changes(text: str) -> bool:
    return _STRONG_CHANGE.search(text) is not None


def only_past(text: str) -> bool:
    """Whether every clause of ``text`` says what is over ("I've stopped doing keto.")."""
    parts = _parts(text)
    return bool(parts) and all(_past(c) for c in parts)


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
