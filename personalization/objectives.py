"""Training objectives beyond next-token loss, on the trainer's own loop (no TRL).

- ``dpo_loss``: direct preference optimisation. The reference log-probabilities are those of the
  model the round starts from (the live adapter, or the base model when there is none), taken
  once before the first step with the same weights: no second copy of the model is kept.
- ``answer_rows``: the logits on every answer token of a step's sequences, in one left-padded
  forward (the shared system prompt run once, without grad, kept for a few steps by
  ``PrefixMemo``); ``row_logprob`` sums an answer's log-probability from them.
- ``topk_of`` / ``topk_kl``: a distillation term on replay prompts. Before training, the
  starting model's top-k next-token distribution on each answer position is kept (k values and
  ids per position, small); during training KL(start || current) over those k tokens keeps the
  domain answers where they were.
"""

from __future__ import annotations

from typing import Any, Sequence

# Below this many shared tokens a prefix is not worth its bookkeeping.
MIN_PREFIX = 16


class PrefixMemo:
    """The shared context's keys and values kept across training steps and recomputed every
    ``refresh`` steps: the adapter moves little in a few steps, and the system prompt's forward
    was about a quarter of a step's time."""

    def __init__(self, refresh: int = 4) -> None:
        self.refresh = refresh
        self.step = 0
        self._kept: tuple[tuple[int, ...], int, list[tuple[Any, Any]]] | None = None  # ids, step, per layer (k, v)

    def cache(self, model: Any, ids: Sequence[int], rows: int) -> Any:
        """A fresh cache of ``ids`` for ``rows`` rows (appending to it leaves the kept tensors
        alone). A kept longer context that starts with ``ids`` serves too (causal: its first
        positions are the same)."""
        import torch
        from transformers import DynamicCache

        from assistant.batched import prefix_cache

        key = tuple(ids)
        kept = self._kept
        if kept is None or self.step - kept[1] >= self.refresh or kept[0][: len(key)] != key:
            with torch.no_grad():
                made = prefix_cache(model, key, 1)
            kept = self._kept = (key, self.step, [(layer.keys, layer.values) for layer in made.layers])
        n = len(key)
        cache = DynamicCache()
        for layer, (k, v) in enumerate(kept[2]):
            cache.update(k[:, :, :n].repeat_interleave(rows, dim=0), v[:, :, :n].repeat_interleave(rows, dim=0), layer)
        return cache


def answer_rows(model: Any, seqs: Sequence[tuple[Sequence[int], Sequence[int]]], prefix_grad: bool = False,
                max_rows: int = 16, memo: PrefixMemo | None = None) -> list[tuple[Any, Any]]:
    """Per sequence ``(ids, labels)``: the logits predicting its labelled tokens and those
    tokens, from batched forwards (with grad when grad is on). Sequences that start alike (the
    rendered system prompt) are batched together and run their shared context once, without
    grad unless ``prefix_grad`` (and from ``memo`` when given); the rest is left-padded so the
    labelled tails line up, and only their positions' logits are computed."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, (ids, _) in enumerate(seqs):
        groups.setdefault(tuple(ids[:MIN_PREFIX]), []).append(k)
    out: list[Any] = [None] * len(seqs)
    for members in groups.values():
        for start in range(0, len(members), max_rows):
            part = members[start:start + max_rows]
            for k, row in zip(part, _rows(model, [seqs[k] for k in part], prefix_grad, memo), strict=True):
                out[k] = row
    return out


def _rows(model: Any, seqs: Sequence[tuple[Sequence[int], Sequence[int]]], prefix_grad: bool,
          memo: PrefixMemo | None) -> list[tuple[Any, Any]]:
    """``answer_rows`` for one batch."""
    import torch

    from assistant.batched import left_pad, prefix_cache
    from assistant.batched import shared_prefix as common_length

    firsts = [next(p for p, x in enumerate(lab) if x != -100) for _, lab in seqs]
    n = common_length([list(ids) for ids, _ in seqs], min(firsts) - 1, MIN_PREFIX)
    cache = None
    if n and memo is not None and not prefix_grad:
        cache = memo.cache(model, list(seqs[0][0][:n]), len(seqs))
    elif n:
        with torch.set_grad_enabled(prefix_grad and torch.is_grad_enabled()):
            cache = prefix_cache(model, list(seqs[0][0][:n]), len(seqs))
    rows = [(list(ids[n:]), list(lab[n:])) for ids, lab in seqs]
    ids, mask, positions = left_pad([r[0] for r in rows], int(seqs[0][0][0]), n)
    width = ids.shape[1]
    # logits from the position before the first label on (the first token can never be a label)
    keep = min(width, width - min(first - n + width - len(lab) for first, (_, lab) in zip(firsts, rows, strict=True)) + 1)
    result = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                   use_cache=cache is not None, logits_to_keep=keep)
    logits = result.logits[:, :-1].float()
    out = []
    for j, (_, lab) in enumerate(rows):
        target = torch.tensor(([-100] * (width - len(lab)) + lab)[width - keep + 1:])
        keep_j = target != -100
        out.append((logits[j][keep_j], target[keep_j]))
    return out


def row_logprob(logits: Any, target: Any) -> tuple[Any, Any]:
    """(summed log-probability of ``target`` under ``logits``, mean next-token loss)."""
    import torch.nn.functional as F

    token_lp = F.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return token_lp.sum(), -token_lp.mean()


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: float, ref_rejected: float, beta: float) -> Any:
    """-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))): prefer the chosen answer over the
    rejected one by more than the reference model does."""
    import torch.nn.functional as F

    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin)


def topk_of(logits: Any, k: int = 16) -> tuple[Any, Any]:
    """The top-k log-probabilities and token ids of each row of ``logits`` (no grad)."""
    import torch.nn.functional as F

    values, index = F.log_softmax(logits.detach(), dim=-1).topk(k, dim=-1)
    return values, index


def topk_kl(model_logits: Any, ref_values: Any, ref_index: Any) -> Any:
    """KL(ref || model) restricted to the reference's top-k tokens (both renormalised on them),
    averaged over positions."""
    import torch.nn.functional as F

    ref = F.log_softmax(ref_values, dim=-1)
    cur = F.log_softmax(model_logits.gather(-1, ref_index), dim=-1)
    return (ref.exp() * (ref - cur)).sum(-1).mean()


def replay_terms(logits: Any, target: Any, ref: tuple[Any, Any] | None, kl_weight: float) -> tuple[Any, float]:
    """Next-token loss on a replay answer (its labelled positions' ``logits``) plus
    ``kl_weight`` x the distillation term against the reference top-k."""
    import torch.nn.functional as F

    nll = F.cross_entropy(logits, target)
    if ref is None or kl_weight <= 0:
        return nll, float(nll.detach())
    return nll + kl_weight * topk_kl(logits, *ref), float(nll.detach())
