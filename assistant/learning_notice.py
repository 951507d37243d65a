"""What the front ends tell the user about learning: after feedback, while a round runs, and
why the gate kept the live adapter. The TUI and the line chat use the same sentences, so every
front end that accepts feedback says the same (true) thing about when it is learned from.

Nothing here imports torch or the learner's heavy parts; the gate's rule is restated from its
result dict (see ``personalization.gate.decide``).
"""

from __future__ import annotations

import math
from typing import Any

# personalization.gate.decide's default: the held-out loss must drop by at least this much.
MIN_GAIN = 0.02


def feedback_outlook(assistant: Any, user: str, pack: str, *, background: bool = True) -> str:
    """One sentence on what happens to feedback just given (after /good, /bad, /correct).

    ``background``: the front end runs the learner's background rounds (``Learner.start()``).
    """
    learning = assistant.settings.learning
    if not learning.enabled or not background:
        why = "learning.enabled = false" if not learning.enabled else "this front end does not run rounds"
        return (f"saved; automatic learning is off ({why}): run `assistant learn --user {user} --pack {pack}` "
                "to learn from it now")
    try:
        pending = assistant.learner.pending(user, pack)
    except Exception:  # noqa: BLE001 - a damaged store: the feedback is saved all the same
        pending = None
    need = learning.min_new_examples
    idle = f"{learning.idle_seconds:g} s"
    if pending is None:
        return f"saved; a learning round starts after {idle} idle once {need} new examples are gathered"
    if pending >= need:
        return f"saved ({pending}/{need} new examples): a learning round starts after {idle} without activity"
    return (f"saved ({pending}/{need} new examples): a learning round starts by itself once {need} are "
            f"gathered and the assistant has been idle {idle}")


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out


def gate_checks(gate: dict[str, Any], learning: Any) -> list[tuple[bool | None, str]]:
    """The gate's rule, check by check, with the measured numbers and the thresholds.

    Each item is (passed, sentence); passed is None where the value was not measured.
    """
    live, cand = gate.get("live") or {}, gate.get("candidate") or {}
    out: list[tuple[bool | None, str]] = []
    lo, co = _num(live.get("user_loss")), _num(cand.get("user_loss"))
    lm, cm = _num(live.get("user_match")), _num(cand.get("user_match"))
    if not (math.isnan(lo) or math.isnan(co)) and lo > 0:
        gain = (lo - co) / lo
        loss_ok = co < lo * (1 - MIN_GAIN)
        text = (f"held-out loss {lo:.3f} -> {co:.3f} ({gain:+.1%} lower; needs at least {MIN_GAIN:.0%} lower)")
    else:
        loss_ok, text = False, "held-out loss not measured"
    match_ok = not (math.isnan(lm) or math.isnan(cm)) and cm > lm
    if not (math.isnan(lm) or math.isnan(cm)):
        text += f", or a higher held-out answer match ({lm:.0%} -> {cm:.0%})"
    out.append((loss_ok or match_ok, "improvement: " + text))
    le, ce = _num(live.get("eval_loss")), _num(cand.get("eval_loss"))
    if not (math.isnan(le) or math.isnan(ce)):
        tol = max(learning.eval_tolerance, 0.0)
        out.append((ce <= le * (1 + tol) + 1e-9,
                    f"pack eval loss {le:.3f} -> {ce:.3f} (may rise at most {tol:.0%})"))
    lp, cp = _num(live.get("eval_pass")), _num(cand.get("eval_pass"))
    wp, wc = _num(live.get("eval_pass_all")), _num(cand.get("eval_pass_all"))
    where = ""
    if not (math.isnan(wp) or math.isnan(wc)):  # a second look on more probes decided (gate.second_look)
        lp, cp, where = wp, wc, " on all the pack's probes"
    if not (math.isnan(lp) or math.isnan(cp)):
        tol = learning.eval_pass_tolerance
        out.append((cp >= lp - tol - 1e-9,
                    f"pack eval pass rate{where} {lp:.0%} -> {cp:.0%} (may drop at most {tol:.0%})"))
    lg, cg = _num(live.get("guard_ppl")), _num(cand.get("guard_ppl"))
    if not (math.isnan(lg) or math.isnan(cg)):
        tol = learning.guard_tolerance
        out.append((cg <= lg * (1 + tol), f"guard-set perplexity {lg:.2f} -> {cg:.2f} (may rise at most {tol:.0%})"))
    return out


def explain_gate(gate: dict[str, Any] | None, learning: Any, reason: str = "") -> str:
    """Why a round was promoted or rejected: ``reason`` (the learner's words) and the checks that
    failed, with their numbers and thresholds."""
    if not gate:
        return reason
    checks = gate_checks(gate, learning)
    failed = [text for ok, text in checks if ok is False]
    if gate.get("promote"):
        return reason or "promoted: " + "; ".join(text for _ok, text in checks)
    detail = "; ".join(failed) if failed else "; ".join(text for _ok, text in checks)
    if reason and detail:
        return f"{reason} ({detail})" if detail not in reason else reason
    return reason or detail


def round_line(event: dict[str, Any], learning: Any) -> str | None:
    """A line for the line chat about a learner event; None for events not worth a line."""
    phase = event.get("phase")
    if phase == "training":
        steps = event.get("steps")
        return f"learning round started: {event.get('examples', '?')} examples, {steps or '?'} steps at most"
    if phase == "gating":
        return "learning round: training done, checking the new adapter against the live one"
    if phase == "done":
        if event.get("promoted"):
            return f"learning round finished: adapter {event.get('version')} is now live"
        if event.get("gate"):
            return ("learning round finished: the new adapter was rejected, the live one stays: "
                    + explain_gate(event.get("gate"), learning, str(event.get("reason") or "")))
        return f"no learning round: {event.get('reason') or 'nothing to learn'}"
    if phase == "failed":
        return f"the learning round failed: {event.get('error', 'unknown error')}"
    return None
