"""The gate: a candidate adapter goes live only when it measurably beats the live one.

Both are scored on (a) the user's held-out examples (answer loss and answer match), (b) the
pack's eval set (loss of the reference answers) and (c) the general guard set (perplexity).
Promote only if (a) improves and (b), (c) do not regress beyond the configured tolerances.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from assistant.paths import repo_data_dir
from personalization.dataset import Example
from personalization.trainer import encode

_WORD = re.compile(r"[a-z0-9]+")
_STOP = set("a an the is are was were be of to in on at for and or your you my i me it its this that with".split())


@dataclass
class Scores:
    user_loss: float
    user_match: float
    eval_loss: float
    guard_ppl: float
    eval_pass: float = float("nan")  # greedy answers to the pack's eval probes containing an expected keyword


@dataclass
class Decision:
    promote: bool
    reason: str
    live: Scores
    candidate: Scores
    heldout_is_separate: bool

    def table(self) -> str:
        rows = [("user held-out loss (lower is better)", "user_loss", "{:.3f}"),
                ("user held-out answer match", "user_match", "{:.0%}"),
                ("pack eval answer loss", "eval_loss", "{:.3f}"),
                ("pack eval pass rate (greedy answers)", "eval_pass", "{:.0%}"),
                ("guard-set perplexity", "guard_ppl", "{:.2f}")]
        lines = [f"{'':40} {'live':>10} {'candidate':>10}"]
        for label, key, fmt in rows:
            lines.append(f"{label:40} {fmt.format(getattr(self.live, key)):>10} {fmt.format(getattr(self.candidate, key)):>10}")
        verdict = "PROMOTED" if self.promote else "REJECTED"
        note = "" if self.heldout_is_separate else " (too few examples to hold some out: scored on the training examples)"
        lines.append(f"{verdict}: {self.reason}{note}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"promote": self.promote, "reason": self.reason, "live": asdict(self.live),
                "candidate": asdict(self.candidate), "heldout_is_separate": self.heldout_is_separate}


def guard_texts(limit: int = 24) -> list[str]:
    path = repo_data_dir() / "guard" / "guard.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()][:limit]


def eval_examples(probes: Sequence[dict[str, Any]], system: str, limit: int = 16) -> list[Example]:
    chosen = [p for p in probes if p.get("answer")][:limit]
    return [Example([{"role": "system", "content": system}, {"role": "user", "content": p["ask"]}], p["answer"], "eval",
                    expect_any=list(p.get("expect_any", [])))
            for p in chosen]


def answer_loss(model: Any, tokenizer: Any, render: Callable[..., list[int]], examples: Sequence[Example]) -> float:
    import torch

    if not examples:
        return float("nan")
    total, count = 0.0, 0
    with torch.inference_mode():
        for ex in examples:
            ids, labels = encode(tokenizer, render, ex, 384)
            n = sum(1 for label in labels[1:] if label != -100)
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            total += float(out.loss) * n
            count += n
    return total / max(1, count)


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str]) -> float:
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) < 2:
                continue
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]))
            total += float(out.loss) * (len(ids) - 1)
            count += len(ids) - 1
    return math.exp(total / max(1, count))


def _content(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def matches(answer: str, reference: str, question: str = "") -> bool:
    """The answer carries most of what the reference adds to the question (its new content words)."""
    want = _content(reference) - _content(question)
    if not want:
        want = _content(reference)
    if not want:
        return True
    return len(want & _content(answer)) / len(want) >= 0.6


def _greedy(model: Any, tokenizer: Any, render: Callable[..., list[int]], ex: Example, eos_ids: set[int],
            max_new_tokens: int) -> str:
    import torch

    ids = render(ex.messages)
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(eos_ids),
                         pad_token_id=sorted(eos_ids)[0], repetition_penalty=1.1)
    return tokenizer.decode(out[0][len(ids):], skip_special_tokens=True)


def answer_match(model: Any, tokenizer: Any, render: Callable[..., list[int]], examples: Sequence[Example],
                 eos_ids: set[int], max_new_tokens: int = 32) -> float:
    import torch

    if not examples:
        return float("nan")
    with torch.inference_mode():
        hits = sum(matches(_greedy(model, tokenizer, render, ex, eos_ids, max_new_tokens), ex.answer,
                           ex.messages[-1]["content"]) for ex in examples)
    return hits / len(examples)


def eval_pass_rate(model: Any, tokenizer: Any, render: Callable[..., list[int]], examples: Sequence[Example],
                   eos_ids: set[int], max_new_tokens: int = 48) -> float:
    import torch

    probes = [ex for ex in examples if ex.expect_any]
    if not probes:
        return float("nan")
    with torch.inference_mode():
        hits = 0
        for ex in probes:
            answer = _greedy(model, tokenizer, render, ex, eos_ids, max_new_tokens).lower()
            hits += any(k.lower() in answer for k in ex.expect_any)
    return hits / len(probes)


def score(model: Any, tokenizer: Any, render: Callable[..., list[int]], heldout: Sequence[Example],
          evals: Sequence[Example], guard: Sequence[str], eos_ids: set[int],
          general: tuple[float, float, float] | None = None) -> Scores:
    """All the numbers; ``general`` (eval loss, guard perplexity, eval pass rate) skips those that
    do not depend on the user, when they are already known for these weights."""
    if general is None:
        general = (answer_loss(model, tokenizer, render, evals), perplexity(model, tokenizer, guard),
                   eval_pass_rate(model, tokenizer, render, evals, eos_ids))
    return Scores(
        user_loss=answer_loss(model, tokenizer, render, heldout),
        user_match=answer_match(model, tokenizer, render, heldout, eos_ids),
        eval_loss=general[0],
        guard_ppl=general[1],
        eval_pass=general[2],
    )


def fingerprint(evals: Sequence[Example], guard: Sequence[str]) -> str:
    """Identifies the eval and guard sets, so scores measured on them can be reused."""
    import hashlib

    h = hashlib.sha1()
    for ex in evals:
        h.update(ex.key().encode())
    for text in guard:
        h.update(text.encode())
    return h.hexdigest()[:16]


def decide(live: Scores, cand: Scores, settings: Any, heldout_is_separate: bool, min_gain: float = 0.02) -> Decision:
    """Apply the promotion rule to two sets of scores."""
    improved = cand.user_loss < live.user_loss * (1 - min_gain) or cand.user_match > live.user_match
    loss_ok = cand.eval_loss <= live.eval_loss * (1 + max(settings.eval_tolerance, 0.0)) + 1e-9 or math.isnan(live.eval_loss)
    pass_ok = (math.isnan(live.eval_pass) or math.isnan(cand.eval_pass)
               or cand.eval_pass >= live.eval_pass - settings.eval_pass_tolerance - 1e-9)
    eval_ok = loss_ok and pass_ok
    guard_ok = cand.guard_ppl <= live.guard_ppl * (1 + settings.guard_tolerance)
    if not improved:
        reason = "no improvement on the user's held-out examples"
    elif not pass_ok:
        reason = (f"the pack's eval answers got worse (pass rate {live.eval_pass:.0%} -> {cand.eval_pass:.0%}, "
                  f"tolerance {settings.eval_pass_tolerance:.0%})")
    elif not loss_ok:
        reason = (f"the pack's eval answers got worse (loss {live.eval_loss:.3f} -> {cand.eval_loss:.3f}, "
                  f"tolerance {settings.eval_tolerance:.0%})")
    elif not guard_ok:
        reason = (f"general ability regressed (guard perplexity {live.guard_ppl:.2f} -> {cand.guard_ppl:.2f}, "
                  f"tolerance {settings.guard_tolerance:.0%})")
    else:
        reason = "better on the user's examples, no regression on the pack eval or guard set"
    return Decision(improved and eval_ok and guard_ok, reason, live, cand, heldout_is_separate)
