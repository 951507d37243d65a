"""Safety rules that run in code, before and after the model, not only in the prompt.

Before: a pack's red flags are matched on the user's message. A "replace" flag (an emergency)
answers with its guidance and the model is not asked at all; a "prepend" flag puts its guidance
first. After: a red flag matched in the model's own answer adds its guidance, the pack's notice
is appended, and, in packs that opt into the `allergens` check, food the user said they are
allergic to (from memory) is called out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from assistant.packs import Pack


@dataclass
class Check:
    flags: list[str] = field(default_factory=list)
    replace: str | None = None  # the whole answer (the model is skipped)
    prefix: str = ""


def before(pack: Pack, message: str) -> Check:
    check = Check()
    for flag in pack.red_flags:
        if flag.matches(message):
            check.flags.append(flag.id)
            if flag.mode == "replace" and check.replace is None:
                check.replace = flag.message
            elif flag.mode == "prepend":
                check.prefix += flag.message + "\n\n"
    return check


_ALLERGY_RE = re.compile(
    r"\b(?:allergic to|allergy to|allergies to|intolerant to|can't eat|cannot eat|can not eat)\s+([a-z][a-z ,'-]{1,60})",
    re.IGNORECASE,
)
_SPLIT_RE = re.compile(r",|\band\b|\bor\b")


def declared_allergens(facts: Iterable[str]) -> list[str]:
    """Foods the user said they are allergic or intolerant to, from their memories."""
    found: list[str] = []
    for fact in facts:
        if re.search(r"\b(no longer|not|isn't|aren't|never)\b[^.]*\ballergic\b", fact, re.IGNORECASE):
            continue
        for m in _ALLERGY_RE.finditer(fact):
            for part in _SPLIT_RE.split(m.group(1)):
                word = part.strip(" .'-").lower()
                word = re.sub(r"^(all |any |most )", "", word)
                if word and len(word) > 2 and word not in found:
                    found.append(word)
    return found


def _mentions(answer: str, food: str) -> bool:
    stem = food[:-1] if food.endswith("s") and len(food) > 4 else food
    return re.search(rf"\b{re.escape(stem)}(s|es)?\b", answer, re.IGNORECASE) is not None


def after(pack: Pack, answer: str, user_facts: Iterable[str] = (), already: Iterable[str] = ()) -> str:
    """What code appends to the model's answer: warnings, then the pack's notice."""
    extra: list[str] = []
    done = set(already)
    for flag in pack.red_flags:
        if flag.id not in done and flag.matches(answer):
            extra.append(flag.message)
    facts = user_facts if "allergens" in pack.checks else ()  # a check the pack opts into (pack.toml `checks`)
    allergens = [a for a in declared_allergens(facts) if _mentions(answer, a)]
    if allergens:
        extra.append(
            "Allergy warning: this answer mentions " + ", ".join(allergens)
            + ", which you told me you are allergic to. Leave it out or use a safe substitute."
        )
    if pack.notice:
        extra.append(pack.notice.strip())
    return ("\n\n" + "\n\n".join(extra)) if extra else ""
