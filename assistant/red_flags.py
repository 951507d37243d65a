"""Red-flag patterns of a pack (urgent symptoms, deadlines): compiled with a time limit, checked
for catastrophic backtracking before a pack is accepted."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# A red-flag pattern gets this long per text; Python's `re` has no time limit, so the patterns
# run on the `regex` engine, which has one (and validation rejects nested quantifiers).
MATCH_TIMEOUT_S = 0.25
_PROBE_LEN = 5000


def compile_pattern(pattern: str) -> Any:
    import regex

    return regex.compile(pattern, regex.IGNORECASE | regex.VERSION0)


@dataclass
class RedFlag:
    id: str
    patterns: list[Any]  # compiled `regex` patterns
    message: str
    mode: str = "replace"  # "replace" or "prepend"

    def matches(self, text: str) -> bool:
        for p in self.patterns:
            try:
                if p.search(text, timeout=MATCH_TIMEOUT_S):
                    return True
            except TimeoutError:
                return True  # cannot tell in time: show the guidance rather than skip it
        return False


def _nested_quantifier(pattern: str) -> bool:
    r"""Whether a repeated group contains another unbounded repeat, as in ``(a+)+`` or ``(\w*)*``."""
    try:
        import re._parser as sre_parse  # type: ignore[import-not-found]
    except ImportError:  # Python 3.10 and older
        import sre_parse  # type: ignore[no-redef]
    from re._constants import MAX_REPEAT, MAXREPEAT, MIN_REPEAT, POSSESSIVE_REPEAT  # type: ignore[import-not-found]

    repeats = (MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT)

    def walk(items: Any, inside: bool) -> bool:
        for op, av in items:
            if op in repeats:
                low, high, body = av
                unbounded = high == MAXREPEAT or high > 16
                if unbounded and inside:
                    return True
                if walk(body, inside or unbounded):
                    return True
            elif isinstance(av, (list, tuple)):
                for part in av:
                    if isinstance(part, sre_parse.SubPattern) and walk(part, inside):
                        return True
                    if isinstance(part, (list, tuple)):
                        for sub in part:
                            if isinstance(sub, sre_parse.SubPattern) and walk(sub, inside):
                                return True
            elif isinstance(av, sre_parse.SubPattern) and walk(av, inside):
                return True
        return False

    try:
        return walk(sre_parse.parse(pattern), False)
    except Exception:
        return False


def check_pattern(pattern: Any, probe: bool = False) -> str | None:
    """Why ``pattern`` cannot be a red-flag pattern, or None when it can.

    ``probe`` also times it on texts that make backtracking engines work hardest (`pack
    validate` and `pack install` do; loading does not, as matching has a time limit anyway).
    """
    if not isinstance(pattern, str) or not pattern.strip():
        return "must be a non-empty string"
    if len(pattern) > 1000:
        return "is longer than 1000 characters"
    try:
        re.compile(pattern)
        compiled = compile_pattern(pattern)
    except Exception as exc:
        return f"bad regular expression: {exc}"
    if _nested_quantifier(pattern):
        return "has a repeat inside a repeat (like `(a+)+`), which can take forever on some texts; flatten it"
    if not probe:
        return None
    # Texts that make a backtracking engine work hardest: long runs of one character with a
    # mismatch at the end.
    for sample in ("a" * _PROBE_LEN + "!", " " * _PROBE_LEN + "!", "ab" * (_PROBE_LEN // 2) + "!", "1" * _PROBE_LEN + "x"):
        try:
            compiled.search(sample, timeout=MATCH_TIMEOUT_S)
        except TimeoutError:
            return f"takes over {MATCH_TIMEOUT_S} s on a long text (catastrophic backtracking); simplify it"
    return None
