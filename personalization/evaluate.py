"""Scoring greedy answers against expectations (pack eval sets, benchmark probes)."""

from __future__ import annotations

from typing import Any, Sequence

from assistant.generation import GenParams

ABSTAIN_MARKERS = ("don't know", "do not know", "not sure", "no information", "haven't told", "have not told",
                   "didn't tell", "did not tell", "can't know", "cannot know", "not aware", "don't have", "unknown")


def check(answer: str, expect_any: Sequence[str] = (), expect_all: Sequence[str] = (), forbid: Sequence[str] = ()) -> bool:
    low = answer.lower()
    if expect_any and not any(e.lower() in low for e in expect_any):
        return False
    if expect_all and not all(e.lower() in low for e in expect_all):
        return False
    return not any(f.lower() in low for f in forbid)


def abstains(answer: str) -> bool:
    low = answer.lower().replace("’", "'")
    return any(m in low for m in ABSTAIN_MARKERS)


def pack_eval_score(engine: Any, pack: Any, limit: int | None = None, max_new_tokens: int = 64) -> dict[str, Any]:
    """Greedy answers to the pack's eval probes, each passing when it contains an expected keyword."""
    probes = pack.eval_probes()[:limit] if limit else pack.eval_probes()
    passed = 0
    for probe in probes:
        ids = engine.render([{"role": "system", "content": pack.system_prompt()}, {"role": "user", "content": probe["ask"]}])
        answer = engine.stream(ids, GenParams(temperature=0, max_new_tokens=max_new_tokens, repetition_penalty=1.1)).collect()
        passed += check(answer, probe.get("expect_any", ()), probe.get("expect_all", ()), probe.get("forbid", ()))
    n = len(probes)
    return {"passed": passed, "n": n, "pass_rate": passed / n if n else 0.0}
