"""Training objectives beyond next-token loss, on the trainer's own loop (no TRL).

- ``dpo_loss``: direct preference optimisation. The reference log-probabilities are those of the
  model the round starts from (the live adapter, or the base model when there is none), taken
  once before the first step with the same weights: no second copy of the model is kept.
- ``answer_logprob``: summed log-probability of the labelled tokens (the answer).
- ``reference_topk`` / ``topk_kl``: a distillation term on replay prompts. Before training, the
  starting model's top-k next-token distribution on each answer position is kept (k values and
  ids per position, small); during training KL(start || current) over those k tokens keeps the
  domain answers where they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

# Below this many shared tokens a prefix is not worth its bookkeeping.
MIN_PREFIX = 16


@dataclass
class Prefix:
    """The KV of the context tokens that a step's sequences share (the rendered system prompt):
    computed once, each sequence then runs only its own tokens on top of it. Causal attention
    makes that the same maths as running each whole sequence; with grad, the prefix's part of the
    gradient is counted once per sequence through the shared tensors, as it would be."""

    ids: list[int]
    kv: list[tuple[Any, Any]]  # per layer: (keys, values)
    config: Any

    def cache(self) -> Any:
        """A fresh cache holding the prefix (appending to it leaves the shared tensors alone)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        for layer, (k, v) in enumerate(self.kv):
            cache.update(k, v, layer)
        return cache


def shared_prefix(model: Any, seqs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Prefix | None:
    """The prefix of ``seqs`` (ids, labels) that all share and that holds no label, run through
    ``model`` (with grad when grad is on); None when it is shorter than ``MIN_PREFIX``."""
    import torch

    if len(seqs) < 2:
        return None
    first = list(seqs[0][0])
    n = min(len(s[0]) for s in seqs)
    for ids, labels in seqs:
        # the token at the cut is predicted from inside the prefix: it must be unlabelled
        first_label = next((i for i, lab in enumerate(labels) if lab != -100), len(labels))
        n = min(n, first_label - 1)
        n = next((i for i in range(n) if ids[i] != first[i]), n)
    if n < MIN_PREFIX:
        return None
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    cache: Any = DynamicCache(config=config)  # its layers are all attention layers here (keys, values)
    model(input_ids=torch.tensor([first[:n]]), cache=cache, use_cache=True)
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    return Prefix(first[:n], kv, config)


def _shifted(model: Any, ids: Sequence[int], labels: Sequence[int], prefix: Prefix | None = None) -> tuple[Any, Any, Any]:
    """Logits predicting each labelled token, the targets, and their positions' mask."""
    import torch

    start = len(prefix.ids) if prefix is not None and list(ids[: len(prefix.ids)]) == prefix.ids else 0
    if start and prefix is not None:  # start > 0 only with a prefix
        out = model(input_ids=torch.tensor([list(ids[start:])]), cache=prefix.cache(), use_cache=True)
    else:
        out = model(input_ids=torch.tensor([list(ids)]))
    logits = out.logits[0, :-1].float()
    target = torch.tensor(list(labels)[start + 1:])
    mask = target != -100
    return logits, target, mask


def answer_logprob(model: Any, ids: Sequence[int], labels: Sequence[int], prefix: Prefix | None = None) -> tuple[Any, Any]:
    """(summed log-probability of the answer tokens, mean next-token loss on them), with grad."""
    import torch.nn.functional as F

    logits, target, mask = _shifted(model, ids, labels, prefix)
    logp = F.log_softmax(logits[mask], dim=-1)
    token_lp = logp.gather(-1, target[mask].unsqueeze(-1)).squeeze(-1)
    return token_lp.sum(), -token_lp.mean()


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: float, ref_rejected: float, beta: float) -> Any:
    """-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))): prefer the chosen answer over the
    rejected one by more than the reference model does."""
    import torch.nn.functional as F

    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin)


def reference_topk(model: Any, ids: Sequence[int], labels: Sequence[int], k: int = 16,
                   prefix: Prefix | None = None) -> tuple[Any, Any]:
    """The model's top-k log-probabilities and token ids on each answer position (no grad)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits, _, mask = _shifted(model, ids, labels, prefix)
        logp = F.log_softmax(logits[mask], dim=-1)
        values, index = logp.topk(k, dim=-1)
    return values, index


def topk_kl(model_logits: Any, ref_values: Any, ref_index: Any) -> Any:
    """KL(ref || model) restricted to the reference's top-k tokens (both renormalised on them),
    averaged over positions."""
    import torch.nn.functional as F

    ref = F.log_softmax(ref_values, dim=-1)
    cur = F.log_softmax(model_logits.gather(-1, ref_index), dim=-1)
    return (ref.exp() * (ref - cur)).sum(-1).mean()


def replay_loss(model: Any, ids: Sequence[int], labels: Sequence[int], ref: tuple[Any, Any] | None,
                kl_weight: float, prefix: Prefix | None = None) -> tuple[Any, float]:
    """Next-token loss on a replay answer plus ``kl_weight`` x the distillation term."""
    import torch.nn.functional as F

    logits, target, mask = _shifted(model, ids, labels, prefix)
    nll = F.cross_entropy(logits[mask], target[mask])
    if ref is None or kl_weight <= 0:
        return nll, float(nll.detach())
    return nll + kl_weight * topk_kl(logits[mask], *ref), float(nll.detach())
