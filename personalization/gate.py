"""The gate: a candidate adapter goes live only when it measurably beats the live one.

Both are scored on (a) the user's taught items under held-out phrasings (answer loss and answer
match; see ``dataset.probes``), (b) the pack's eval set (loss of the reference answers and greedy
pass rate), (c) the general guard set (perplexity) and (d) the pack's reference answers to the
questions most like the user's corrections (loss: a correction that contradicts the pack, such
as a wrong safety temperature, raises it). Promote only if (a) improves and (b), (c), (d) do not
regress beyond the configured tolerances; the reason names the numbers and the thresholds.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator, Sequence

from assistant import batched
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
    near_loss: float = float("nan")  # the pack's reference answers to questions like the user's corrections
    # the pass rate over all the pack's probes (up to ``WIDE_PROBES``): measured on both sides only
    # for a second look, when the first probes alone would reject the round (``second_look``)
    eval_pass_all: float = float("nan")


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
                ("  second look: all the pack's probes", "eval_pass_all", "{:.0%}"),
                ("guard-set perplexity", "guard_ppl", "{:.2f}"),
                ("pack answers near the corrections, loss", "near_loss", "{:.3f}")]
        lines = [f"{'':40} {'live':>10} {'candidate':>10}"]

        def cell(value: float, fmt: str) -> str:
            return "–" if value != value else fmt.format(value)  # NaN: not measured

        for label, key, fmt in rows:
            if key == "eval_pass_all" and self.candidate.eval_pass_all != self.candidate.eval_pass_all:
                continue  # no second look was needed
            lines.append(f"{label:40} {cell(getattr(self.live, key), fmt):>10} {cell(getattr(self.candidate, key), fmt):>10}")
        verdict = "PROMOTED" if self.promote else "REJECTED"
        note = "" if self.heldout_is_separate else " (too few examples to hold some out: scored on the training examples)"
        lines.append(f"{verdict}: {self.reason}{note}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: a score that was not measured (NaN) is null."""
        def clean(scores: Scores) -> dict[str, float | None]:
            return {k: (None if v != v else v) for k, v in asdict(scores).items()}

        return {"promote": self.promote, "reason": self.reason, "live": clean(self.live),
                "candidate": clean(self.candidate), "heldout_is_separate": self.heldout_is_separate}


@contextmanager
def merged(model: Any) -> Iterator[None]:
    """The LoRA deltas added into the (float32) weights while scoring: the same outputs as the
    unmerged adapter, without the two extra small matmuls per adapted layer and token."""
    merge = getattr(model, "merge_adapter", None)
    if merge is None:
        yield
        return
    merge()
    try:
        yield
    finally:
        model.unmerge_adapter()


def guard_texts(limit: int = 24) -> list[str]:
    path = repo_data_dir() / "guard" / "guard.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()][:limit]


def eval_examples(probes: Sequence[dict[str, Any]], system: str, limit: int = 16) -> list[Example]:
    chosen = [p for p in probes if p.get("answer")][:limit]
    return [Example([{"role": "system", "content": system}, {"role": "user", "content": p["ask"]}], p["answer"], "eval",
                    expect_any=list(p.get("expect_any", [])))
            for p in chosen]


def answer_loss(model: Any, tokenizer: Any, render: Callable[..., list[int]], examples: Sequence[Example]) -> float:
    if not examples:
        return float("nan")
    total, count = batched.token_nll(model, [encode(tokenizer, render, ex, 384) for ex in examples])
    return total / max(1, count)


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str]) -> float:
    seqs = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        seqs.append((ids, [-100] + ids[1:]))
    total, count = batched.token_nll(model, seqs, 0)
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


def greedy_answers(model: Any, tokenizer: Any, render: Callable[..., list[int]], examples: Sequence[Example],
                   eos_ids: set[int], max_new_tokens: int, max_rows: int = 16) -> list[str]:
    """Greedy answers to the examples' prompts (``assistant.batched.greedy``)."""
    return batched.greedy(model, tokenizer, [render(ex.messages) for ex in examples], eos_ids, max_new_tokens, max_rows)


# Greedy answers cost a decode per probe on both sides of the gate: the held-out answer match
# (a tie-breaker when the loss alone shows no gain) is measured on a fixed sample of this many.
MATCH_PROBES = 16


def answer_match(model: Any, tokenizer: Any, render: Callable[..., list[int]], examples: Sequence[Example],
                 eos_ids: set[int], max_new_tokens: int = 32) -> float:
    if not examples:
        return float("nan")
    if len(examples) > MATCH_PROBES:  # the same sample on both sides: spread over the examples' order
        step = len(examples) / MATCH_PROBES
        examples = [examples[int(i * step)] for i in range(MATCH_PROBES)]
    answers = greedy_answers(model, tokenizer, render, examples, eos_ids, max_new_tokens)
    hits = sum(matches(a, ex.answer, ex.messages[-1]["content"]) for a, ex in zip(answers, examples, strict=False))
    return hits / len(examples)


def eval_pass_rate(model: Any, tokenizer: Any, render: Callable[..., list[int]], examples: Sequence[Example],
                   eos_ids: set[int], max_new_tokens: int = 48) -> float:
    probes = [ex for ex in examples if ex.expect_any]
    if not probes:
        return float("nan")
    answers = greedy_answers(model, tokenizer, render, probes, eos_ids, max_new_tokens)
    hits = sum(any(k.lower() in a.lower() for k in ex.expect_any) for a, ex in zip(answers, probes, strict=False))
    return hits / len(probes)


def score(model: Any, tokenizer: Any, render: Callable[..., list[int]], heldout: Sequence[Example],
          evals: Sequence[Example], guard: Sequence[str], eos_ids: set[int],
          general: tuple[float, float, float] | None = None, match: bool = True,
          near: Sequence[Example] = ()) -> Scores:
    """All the numbers; ``general`` (eval loss, guard perplexity, eval pass rate) skips those that
    do not depend on the user, when they are already known for these weights. ``match=False``
    leaves the held-out answer match unmeasured (NaN): see ``add_match``."""
    if general is None:
        general = (answer_loss(model, tokenizer, render, evals), perplexity(model, tokenizer, guard),
                   eval_pass_rate(model, tokenizer, render, evals, eos_ids))
    return Scores(
        user_loss=answer_loss(model, tokenizer, render, heldout),
        user_match=answer_match(model, tokenizer, render, heldout, eos_ids) if match else float("nan"),
        eval_loss=general[0],
        guard_ppl=general[1],
        eval_pass=general[2],
        near_loss=answer_loss(model, tokenizer, render, near) if near else float("nan"),
    )


def loss_improved(live: Scores, cand: Scores, min_gain: float = 0.02) -> bool:
    """The candidate's held-out loss alone already shows the improvement ``decide`` asks for, so
    the held-out answer match (greedy generation on both sides) need not be measured."""
    return cand.user_loss < live.user_loss * (1 - min_gain)


def fingerprint(evals: Sequence[Example], guard: Sequence[str]) -> str:
    """Identifies the eval and guard sets, so scores measured on them can be reused."""
    import hashlib

    h = hashlib.sha1()
    for ex in evals:
        h.update(ex.key().encode())
    for text in guard:
        h.update(text.encode())
    return h.hexdigest()[:16]


def near_examples(taught: Sequence[Example], pack_items: Sequence[dict[str, Any]], system: str,
                  limit: int = 12) -> list[Example]:
    """The pack's reference answers (eval probes and seed examples, as ``{"ask"|"prompt", "answer"}``)
    to the questions most like the ones the user corrected: a correction that contradicts the
    pack (a wrong safety fact) raises their loss, which the gate checks."""
    from personalization.phrasings import content_words

    asked = [content_words(ex.messages[-1]["content"]) for ex in taught if ex.source.endswith("correction")]
    scored: list[tuple[float, int]] = []
    for i, item in enumerate(pack_items):
        words = content_words(item.get("ask") or item.get("prompt") or "")
        if not words or not item.get("answer"):
            continue
        best = max((len(words & a) / min(len(words), len(a)) for a in asked if a), default=0.0)
        if best >= 0.5:
            scored.append((-best, i))
    out = []
    for _, i in sorted(scored)[:limit]:
        item = pack_items[i]
        out.append(Example([{"role": "system", "content": system},
                            {"role": "user", "content": item.get("ask") or item["prompt"]}], item["answer"], "near"))
    return out


def _rise(live: float, cand: float) -> float:
    return cand / live - 1 if live else 0.0


def decide(live: Scores, cand: Scores, settings: Any, heldout_is_separate: bool, min_gain: float = 0.02) -> Decision:
    """Apply the promotion rule to two sets of scores. The reason names the measured numbers next
    to the thresholds they were held to."""
    gain = 1 - cand.user_loss / live.user_loss if live.user_loss else 0.0
    match_up = cand.user_match > live.user_match
    improved = loss_improved(live, cand, min_gain) or match_up
    eval_tol, pass_tol, guard_tol = max(settings.eval_tolerance, 0.0), settings.eval_pass_tolerance, settings.guard_tolerance
    loss_ok = cand.eval_loss <= live.eval_loss * (1 + eval_tol) + 1e-9 or math.isnan(live.eval_loss)
    # a second look (more probes on both sides) replaces the first probes' verdict
    wide = not (math.isnan(live.eval_pass_all) or math.isnan(cand.eval_pass_all))
    live_pass, cand_pass = (live.eval_pass_all, cand.eval_pass_all) if wide else (live.eval_pass, cand.eval_pass)
    pass_ok = math.isnan(live_pass) or math.isnan(cand_pass) or cand_pass >= live_pass - pass_tol - 1e-9
    near_ok = math.isnan(live.near_loss) or math.isnan(cand.near_loss) or cand.near_loss <= live.near_loss * (1 + eval_tol) + 1e-9
    guard_ok = cand.guard_ppl <= live.guard_ppl * (1 + guard_tol)
    matched = ("" if cand.user_match != cand.user_match else
               f"; answer match {live.user_match:.0%} -> {cand.user_match:.0%}")
    if not improved:
        reason = (f"no improvement on the user's held-out phrasings: held-out gain {gain:.1%} < {min_gain:.0%} needed "
                  f"(loss {live.user_loss:.3f} -> {cand.user_loss:.3f}){matched}, not higher")
    elif not near_ok:
        reason = (f"the corrections contradict the pack's own answers to similar questions: their loss "
                  f"{live.near_loss:.3f} -> {cand.near_loss:.3f}, +{_rise(live.near_loss, cand.near_loss):.0%} > "
                  f"{eval_tol:.0%} allowed")
    elif not pass_ok:
        where = " on all the pack's probes" if wide else ""
        reason = (f"the pack's eval answers got worse: pass rate{where} {live_pass:.0%} -> {cand_pass:.0%}, "
                  f"drop {live_pass - cand_pass:.0%} > {pass_tol:.0%} allowed")
    elif not loss_ok:
        reason = (f"the pack's eval answers got worse: loss {live.eval_loss:.3f} -> {cand.eval_loss:.3f}, "
                  f"+{_rise(live.eval_loss, cand.eval_loss):.1%} > {eval_tol:.0%} allowed")
    elif not guard_ok:
        reason = (f"general ability regressed: guard perplexity {live.guard_ppl:.2f} -> {cand.guard_ppl:.2f}, "
                  f"+{_rise(live.guard_ppl, cand.guard_ppl):.1%} > {guard_tol:.0%} allowed")
    else:
        looked = (f"; pack eval pass rate on all the pack's probes {live_pass:.0%} -> {cand_pass:.0%} "
                  f"(the first {live.eval_pass:.0%} -> {cand.eval_pass:.0%} asked for a second look)" if wide else "")
        reason = (f"held-out gain {gain:.1%} (>= {min_gain:.0%} needed){matched}{looked}; pack eval loss "
                  f"{_rise(live.eval_loss, cand.eval_loss):+.1%} (<= {eval_tol:.0%}), guard perplexity "
                  f"{_rise(live.guard_ppl, cand.guard_ppl):+.1%} (<= {guard_tol:.0%})")
    return Decision(improved and loss_ok and pass_ok and near_ok and guard_ok, reason, live, cand, heldout_is_separate)


# A second look at the pack eval pass rate measures it on this many of the pack's probes.
WIDE_PROBES = 48


def second_look(live: Scores, cand: Scores, settings: Any, heldout_is_separate: bool) -> bool:
    """Whether the pass rate on the first probes is the only thing that rejects the candidate.

    Sixteen greedy answers move by a probe or two when any weight changes, so a round that
    improves the user's answers and keeps every other check may lose that many by chance; the
    pass rate is then measured again on more of the pack's probes (``eval_pass_all``) on both
    sides, and that decides."""
    if decide(live, cand, settings, heldout_is_separate).promote:
        return False
    if not (math.isnan(live.eval_pass_all) and math.isnan(cand.eval_pass_all)):
        return False  # already looked
    return decide(live, replace(cand, eval_pass=live.eval_pass), settings, heldout_is_separate).promote


class BaseNumbers:
    """The base model's pack eval loss, guard perplexity and eval pass rate per (model, pack,
    gate sets). They hold no user's data and cost a third of a first round's gate, so they are
    kept on disk too (``$ASSISTANT_HOME/cache/gate-base.json``): a new process reuses them."""

    def __init__(self) -> None:
        self._mem: dict[tuple[str, str, str], tuple[float, float, float]] = {}

    @staticmethod
    def _file() -> Any:
        from assistant import paths

        return paths.home() / "cache" / "gate-base.json"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self._file().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # missing or unreadable: measured again
        return data if isinstance(data, dict) else {}

    def get(self, key: tuple[str, str, str]) -> tuple[float, float, float] | None:
        if key not in self._mem:
            raw = self._read().get("|".join(key))
            if isinstance(raw, list) and len(raw) == 3 and all(isinstance(x, (int, float)) for x in raw):
                self._mem[key] = (float(raw[0]), float(raw[1]), float(raw[2]))
        return self._mem.get(key)

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return self.get(key) is not None

    def __getitem__(self, key: tuple[str, str, str]) -> tuple[float, float, float]:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: tuple[str, str, str], value: tuple[float, float, float]) -> None:
        from assistant import paths

        self._mem[key] = value
        data = self._read()
        data["|".join(key)] = [float(v) for v in value]
        try:
            paths.write_private(self._file(), json.dumps(data, indent=1).encode())
        except OSError:
            pass  # a read-only home: kept for this process only
