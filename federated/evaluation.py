"""The server's check of a community adapter: the pack eval and guard set (the personal gate's
own scoring functions), and held-out users' preference/style probes (users no device trains on).

A held-out probe is the prompt the assistant would send (the user's recalled memories included)
and a ``prefer``/``over`` answer pair; it passes when the adapter gives ``prefer`` the lower
per-token loss, the benchmark's likelihood margin.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, ContextManager

from federated import lora


class CommunityEval:
    def __init__(self, engine: Any, pack: Any, heldout: list[dict[str, Any]] | None = None) -> None:
        from personalization import gate

        self.engine = engine
        self.pack = pack
        self.evals = gate.eval_examples(pack.eval_probes(), pack.system_prompt())
        self.guard = gate.guard_texts()
        self.heldout = heldout or []

    def score(self, adapter: lora.Adapter | None, work: Path) -> dict[str, Any]:
        """Numbers for ``adapter`` on its own float32 copy of the base weights (None: the base)."""
        from personalization import gate
        from personalization import trainer as trainer_mod

        base = copy.deepcopy(self.engine.model)
        if adapter is None:
            model = base
            ctx: ContextManager[None] = _nullcontext()
        else:
            lora.write(work, adapter)
            model = trainer_mod.resume(base, work)
            model.eval()
            ctx = gate.merged(model)
        e = self.engine
        with ctx:
            out = {
                "eval_pass": gate.eval_pass_rate(model, e.tokenizer, e.render, self.evals, e.eos_ids),
                "eval_loss": gate.answer_loss(model, e.tokenizer, e.render, self.evals),
                "guard_ppl": gate.perplexity(model, e.tokenizer, self.guard),
                **self._heldout(model),
            }
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}

    def _heldout(self, model: Any) -> dict[str, Any]:
        from personalization import gate
        from personalization.dataset import Example

        if not self.heldout:
            return {"heldout_pass": None, "heldout_n": 0}
        e = self.engine
        passed = 0
        for probe in self.heldout:
            msgs = probe["messages"]
            lp = gate.answer_loss(model, e.tokenizer, e.render, [Example(msgs, probe["prefer"], "eval")])
            lo = gate.answer_loss(model, e.tokenizer, e.render, [Example(msgs, probe["over"], "eval")])
            passed += lp < lo
        return {"heldout_pass": passed / len(self.heldout), "heldout_n": len(self.heldout)}


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def decide(prev: dict[str, Any], cand: dict[str, Any], learning: Any) -> tuple[bool, str]:
    """Publish when the candidate keeps the pack eval and guard set within the personal gate's
    tolerances and is better on the eval answers' loss or on the held-out users."""
    def num(d: dict[str, Any], k: str) -> float:
        v = d.get(k)
        return float("nan") if v is None else float(v)

    pass_ok = not (num(cand, "eval_pass") < num(prev, "eval_pass") - learning.eval_pass_tolerance - 1e-9)
    guard_ok = not (num(cand, "guard_ppl") > num(prev, "guard_ppl") * (1 + learning.guard_tolerance))
    loss_ok = not (num(cand, "eval_loss") > num(prev, "eval_loss") * (1 + learning.eval_tolerance))
    better = num(cand, "eval_loss") < num(prev, "eval_loss") or num(cand, "heldout_pass") > num(prev, "heldout_pass")
    if not pass_ok:
        return False, f"pack eval pass rate fell ({num(prev, 'eval_pass'):.0%} -> {num(cand, 'eval_pass'):.0%})"
    if not guard_ok:
        return False, f"guard perplexity rose ({num(prev, 'guard_ppl'):.2f} -> {num(cand, 'guard_ppl'):.2f})"
    if not loss_ok:
        return False, f"pack eval answer loss rose ({num(prev, 'eval_loss'):.3f} -> {num(cand, 'eval_loss'):.3f})"
    if not better:
        return False, "no better than the published adapter on the pack eval loss or the held-out users"
    return True, "better on the pack eval loss or held-out users, no regression beyond the gate's tolerances"


def load_heldout(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return json.loads(path.read_text())
