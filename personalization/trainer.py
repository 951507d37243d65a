"""LoRA training on the CPU (the only place that trains with peft).

Creating an adapter and resuming one are separate paths: ``create`` wraps the base model in a
fresh LoRA; ``resume`` loads a saved version with ``is_trainable=True`` and checks it really has
trainable parameters. Training works on its own copy of the base weights, never on the weights
serving replies, and stops at a step or time budget. Loss is on the answer tokens only;
preference pairs add DPO (``objectives``) and replay examples a distillation term against the
model the round started from.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from assistant.errors import AdapterError
from personalization import objectives
from personalization.dataset import Example


@dataclass
class Progress:
    examples: int
    step: int
    total_steps: int
    loss: float
    elapsed_s: float
    phase: str = "training"  # "training", then "evaluating" (step/total_steps count the gate's parts)
    budget_s: float = float("inf")  # this phase's time budget: the estimate never runs past it

    @property
    def eta_s(self) -> float:
        by_steps = self.elapsed_s / max(1, self.step) * (self.total_steps - self.step)
        return max(0.0, min(by_steps, self.budget_s - self.elapsed_s))


@dataclass
class TrainResult:
    model: Any  # the peft model, adapter enabled
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    stopped: str  # "steps", "converged", "time", "cancelled"


def lora_config(settings: Any, layers: int = 0):
    """The LoRA of ``settings``; on the top ``settings.layer_share`` of the model's ``layers``
    decoder layers only, when both are known (the backward pass then stops at the lowest
    adapted layer, and the step costs about a third less)."""
    from peft import LoraConfig

    top = math.ceil(layers * float(getattr(settings, "layer_share", 1.0)))
    which = list(range(layers - top, layers)) if 0 < top < layers else None
    return LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.targets), bias="none", task_type="CAUSAL_LM", layers_to_transform=which,
    )


def create(base: Any, settings: Any):
    """A new LoRA adapter around ``base`` (a float32 copy of the base model)."""
    from peft import get_peft_model

    return get_peft_model(base, lora_config(settings, int(getattr(base.config, "num_hidden_layers", 0) or 0)))


def resume(base: Any, folder: Path):
    """Continue training a saved adapter version (its weights may be sealed: see adapters.load_peft)."""
    from assistant.adapters import load_peft

    model = load_peft(base, folder, trainable=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise AdapterError(f"the adapter in {folder} loaded without trainable parameters; it cannot be resumed")
    return model


def encode(tokenizer: Any, render: Callable[..., list[int]], ex: Example, max_len: int) -> tuple[list[int], list[int]]:
    """Input ids and labels (-100 on the context) for one example."""
    prompt = render(ex.messages)
    answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
    end = render(ex.messages + [{"role": "assistant", "content": ex.answer}], add_generation_prompt=False)
    # The tail of the rendered answer (end-of-turn marker) is learned too, so the model stops.
    tail = end[len(prompt) + len(answer):] if end[: len(prompt)] == prompt else []
    tail = tail[:2]
    ids = prompt + answer + tail
    labels = [-100] * len(prompt) + answer + tail
    if len(ids) > max_len:  # keep the answer; cut the context from the left
        cut = len(ids) - max_len
        ids, labels = ids[cut:], labels[cut:]
    return ids, labels


def _encode_item(tokenizer: Any, render: Callable[..., list[int]], ex: Example, max_len: int) -> dict[str, Any] | None:
    """One training item: supervised (ids, labels), or for a pair both answers' (ids, labels)."""
    chosen = encode(tokenizer, render, ex, max_len)
    if not any(label != -100 for label in chosen[1]):
        return None
    item: dict[str, Any] = {"ex": ex, "chosen": chosen, "own": ex.source != "replay"}
    if ex.is_pair:
        rejected = encode(tokenizer, render, replace(ex, answer=ex.rejected, rejected=""), max_len)
        if not any(label != -100 for label in rejected[1]):
            return None
        item["rejected"] = rejected
    return item


def _sequences(items: Sequence[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    return [seq for item in items for seq in ([item["chosen"]] + ([item["rejected"]] if "rejected" in item else []))]


def _is_fresh(model: Any) -> bool:
    """A new LoRA (every B zero): the model with the adapter disabled is the starting model."""
    return all(not bool(p.any()) for n, p in model.named_parameters() if "lora_B" in n)


def _references(model: Any, items: Sequence[dict[str, Any]], kl_weight: float, disabled: bool = False,
                memo: objectives.PrefixMemo | None = None) -> None:
    """The starting model's numbers for the items that lack them: answer log-probabilities of
    both sides of a pair (DPO's reference) and top-k distributions on replay answers.
    ``disabled``: taken with the adapter disabled, which is the starting model for a fresh
    LoRA at any step, so each item's can wait for its first step (and the system prompt's keys
    and values, the base model's, are kept in ``memo`` for every step); otherwise all are taken
    before the first step."""
    import contextlib

    import torch

    todo = [it for it in items if ("rejected" in it and "ref" not in it)
            or (not it["own"] and "rejected" not in it and kl_weight > 0 and "ref_topk" not in it)]
    if not todo:
        return
    model.eval()
    with torch.no_grad(), (model.disable_adapter() if disabled else contextlib.nullcontext()):
        rows = iter(objectives.answer_rows(model, _sequences(todo), memo=memo if disabled else None))
        for item in todo:
            chosen = next(rows)
            if "rejected" in item:
                item["ref"] = (float(objectives.row_logprob(*chosen)[0]), float(objectives.row_logprob(*next(rows))[0]))
            else:
                item["ref_topk"] = objectives.topk_of(chosen[0])
    model.train()


def _item_loss(item: dict[str, Any], chosen: tuple[Any, Any], rejected: tuple[Any, Any] | None,
               settings: Any) -> tuple[Any, float]:
    """The loss of one item from its answers' logits, and its answer loss (for the progress line
    and early stopping)."""
    if rejected is not None:
        lp_c, nll_c = objectives.row_logprob(*chosen)
        lp_r, _ = objectives.row_logprob(*rejected)
        pref = objectives.dpo_loss(lp_c, lp_r, item["ref"][0], item["ref"][1], getattr(settings, "dpo_beta", 0.1))
        loss = getattr(settings, "pair_weight", 1.0) * pref + getattr(settings, "pair_sft_weight", 1.0) * nll_c
        return loss, float(nll_c.detach())
    if not item["own"]:
        return objectives.replay_terms(*chosen, item.get("ref_topk"), getattr(settings, "kl_weight", 0.5))
    _, nll = objectives.row_logprob(*chosen)
    return nll * item["ex"].weight, float(nll.detach())


def _batch_loss(model: Any, batch: Sequence[dict[str, Any]], settings: Any,
                memo: objectives.PrefixMemo | None = None,
                base_memo: objectives.PrefixMemo | None = None) -> tuple[Any, list[float]]:
    """The mean loss of a step's items, all their answers in one batched forward (their shared
    context, the system prompt, run once and without grad unless ``prefix_grad``, kept in
    ``memo`` for a few steps)."""
    _references(model, batch, getattr(settings, "kl_weight", 0.5), disabled=True, memo=base_memo)
    rows = iter(objectives.answer_rows(model, _sequences(batch), prefix_grad=getattr(settings, "prefix_grad", False),
                                       memo=memo))
    losses, values = [], []
    for item in batch:
        chosen = next(rows)
        loss, value = _item_loss(item, chosen, next(rows) if "rejected" in item else None, settings)
        losses.append(loss)
        values.append(value)
    return sum(losses) / len(losses), values


class _Batches:
    """Batches that give the user's own examples (corrections, rated answers) half the slots, each
    drawn from its own shuffled cycle, the replay the rest. Uniform draws left a handful of
    corrections among dozens of replay lines, seen about once per round when the time budget
    allows a few batched steps (a busy machine); the replay is there to keep general ability,
    which the gate's guard set checks."""

    def __init__(self, items: list[dict[str, Any]], size: int, rng: random.Random) -> None:
        own = [it for it in items if it["own"]]
        rest = [it for it in items if not it["own"]]
        self.size = min(size, len(items))
        self.pools: list[tuple[list[dict[str, Any]], list[int]]] = [(own, []), (rest, [])]
        self.own_slots = min(len(own), (self.size + 1) // 2) if rest else self.size
        self.rng = rng

    def _draw(self, pool: int) -> dict[str, Any]:
        items, order = self.pools[pool]
        if not order:
            order.extend(range(len(items)))
            self.rng.shuffle(order)
        return items[order.pop()]

    def next(self) -> list[dict[str, Any]]:
        own = [self._draw(0) for _ in range(self.own_slots)] if self.pools[0][0] else []
        return own + [self._draw(1) for _ in range(self.size - len(own))]


def _pause_inside_steps(model: Any, should_pause: Callable[[], bool] | None, every_s: float = 0.1) -> list[Any]:
    """Also pause in the middle of a step: before each decoder layer's forward, at most every
    ``every_s``. A step of a few items takes seconds on a slow CPU; the user who starts typing
    should get the CPU back within a fraction of that. Removable handles (none without a hook)."""
    if should_pause is None:
        return []
    last = [time.monotonic()]

    def hook(_module: Any, _args: Any) -> None:
        now = time.monotonic()
        if now - last[0] < every_s:
            return
        last[0] = now
        while should_pause():
            time.sleep(0.05)

    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    return [m.register_forward_pre_hook(hook) for m in layers]


def train(
    model: Any, tokenizer: Any, render: Callable[..., list[int]], examples: Sequence[Example], settings: Any, *,
    on_progress: Callable[[Progress], None] | None = None, should_pause: Callable[[], bool] | None = None,
    should_stop: Callable[[], bool] | None = None, max_len: int = 384,
) -> TrainResult:
    """AdamW over shuffled items, one a step; fixed seed. A supervised example costs one forward
    (loss on its answer), a replay example adds the distillation term against the starting
    model, a preference pair (``Example.rejected``) costs two forwards: DPO plus the chosen
    answer's loss."""
    import torch

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    items = [it for it in (_encode_item(tokenizer, render, ex, max_len) for ex in examples) if it is not None]
    if not items:
        raise AdapterError("nothing to train on: no example has answer tokens")
    t0 = time.perf_counter()
    batch_size = max(1, int(getattr(settings, "batch_size", 1)))
    if not _is_fresh(model):  # resumed: the references are the starting adapter's, taken now
        _references(model, items, getattr(settings, "kl_weight", 0.5))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    model.train()
    total = settings.max_steps
    tokens = 0
    batches = _Batches(items, batch_size, rng)
    hooks = _pause_inside_steps(model, should_pause)
    memo = objectives.PrefixMemo(int(getattr(settings, "prefix_refresh", 4)))
    base_memo = objectives.PrefixMemo(refresh=total + 1)  # the starting model's: it does not move
    loss_ema = float("nan")
    own_ema = float("nan")  # the answer loss on the user's own examples (not replay): early stopping
    target = getattr(settings, "target_loss", 0.0)
    stopped = "steps"
    step = 0
    try:
        for step in range(1, total + 1):
            while should_pause is not None and should_pause():
                time.sleep(0.05)  # a reply is being generated: it has the CPU
            if should_stop is not None and should_stop():
                stopped, step = "cancelled", step - 1
                break
            if time.perf_counter() - t0 > settings.time_budget_s:
                stopped, step = "time", step - 1
                break
            batch = batches.next()
            memo.step = step - 1
            loss, values = _batch_loss(model, batch, settings, memo, base_memo)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)
            for item, value in zip(batch, values, strict=False):
                tokens += len(item["chosen"][0]) + (len(item["rejected"][0]) if "rejected" in item else 0)
                loss_ema = value if math.isnan(loss_ema) else 0.9 * loss_ema + 0.1 * value
                if item["own"]:
                    own_ema = value if math.isnan(own_ema) else 0.7 * own_ema + 0.3 * value
            if on_progress is not None:
                on_progress(Progress(len(items), step, total, loss_ema, time.perf_counter() - t0,
                                     budget_s=settings.time_budget_s))
            # Once the user's examples are learned, more steps mostly cost general ability.
            if target > 0 and step >= 10 and own_ema < target:
                stopped = "converged"
                break
    finally:
        for hook in hooks:
            hook.remove()
    model.eval()
    return TrainResult(model, step, tokens, time.perf_counter() - t0, loss_ema, stopped)
