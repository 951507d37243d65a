"""Batched scoring and greedy generation for any model (the live one or a candidate adapter):
the gate's held-out loss, guard perplexity and answer match, the engine's ``score`` and the
benchmark all use these two calls. Rows that share a prompt prefix (a pack's system prompt) run
it once; the rest is left-padded, so the labelled tails line up.
"""

from __future__ import annotations

from typing import Any, Sequence


def batches(lengths: Sequence[int], token_budget: int, max_rows: int) -> list[list[int]]:
    """Indices grouped (longest first) so that rows x longest row stays within ``token_budget``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < max_rows and (len(out[-1]) + 1) * lengths[out[-1][0]] <= token_budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def left_pad(rows: Sequence[Sequence[int]], pad: int, prefix: int = 0) -> tuple[Any, Any, Any]:
    """Left-padded ids, attention mask and position ids. With ``prefix`` > 0 the rows continue a
    cached prefix of that many tokens: the mask covers it too and positions go on from it."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp(min=0) + prefix
    if prefix:
        mask = torch.cat([torch.ones(len(rows), prefix, dtype=mask.dtype), mask], dim=1)
    return ids, mask, positions


def shared_prefix(rows: Sequence[Sequence[int]], limit: int, minimum: int = 16) -> int:
    """How many leading tokens all ``rows`` share (at most ``limit``); 0 when too few to pay off."""
    if len(rows) < 2:
        return 0
    n = 0
    first = rows[0]
    while n < limit and all(len(r) > n and r[n] == first[n] for r in rows):
        n += 1
    return n if n >= minimum else 0


def prefix_cache(model: Any, prefix: Sequence[int], rows: int) -> Any:
    """The KV cache of ``prefix``, computed once and repeated for ``rows`` rows."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    model(input_ids=torch.tensor([list(prefix)]), cache=cache, use_cache=True, logits_to_keep=1)
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    return cache


def token_nll(model: Any, seqs: Sequence[tuple[Sequence[int], Sequence[int]]], pad: int | None = None,
              token_budget: int = 2048, max_rows: int = 16) -> tuple[float, int]:
    """Summed negative log-likelihood of the labelled tokens (label != -100, next-token) over
    ``(ids, labels)`` pairs, and their count. The prompt tokens all rows share (a pack's system
    prompt) are run once and their KV cache reused; the rest is batched with left padding, so
    the labelled tails line up and only the last positions' logits are computed."""
    import torch
    import torch.nn.functional as F

    seqs = [(list(i), list(lab)) for i, lab in seqs if sum(1 for x in lab[1:] if x != -100)]
    if not seqs:
        return 0.0, 0
    # The shared prefix must end before the first labelled token's predictor (position - 1).
    first_label = min(next(p for p, x in enumerate(lab) if x != -100 and p > 0) for _, lab in seqs)
    prefix = shared_prefix([i for i, _ in seqs], first_label - 1)
    pad = seqs[0][0][0] if pad is None else pad  # a token every row has: no new token for penalties
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in batches([len(i) - prefix for i, _ in seqs], token_budget, max_rows):
            rows = [(seqs[k][0][prefix:], seqs[k][1][prefix:]) for k in batch]
            cache = prefix_cache(model, seqs[batch[0]][0][:prefix], len(rows)) if prefix else None
            ids, mask, positions = left_pad([r[0] for r in rows], pad, prefix)
            width = ids.shape[1]
            labels = torch.full_like(ids, -100)
            for j, (_, lab) in enumerate(rows):
                labels[j, width - len(lab):] = torch.tensor(lab)
            first = min(next(p for p, x in enumerate(lab) if x != -100 and p > 0) + width - len(lab) for _, lab in rows)
            keep = width - first + 1  # logits from position first-1 on predict the labels from first on
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                        use_cache=cache is not None, logits_to_keep=keep)
            logits = out.logits[:, :-1].float()
            target = labels[:, width - keep + 1:]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                                  reduction="sum")
            total += float(nll)
            count += int((target != -100).sum())
    return total, count


def greedy(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], eos_ids: set[int], max_new_tokens: int,
           max_rows: int = 16) -> list[str]:
    """Greedy answers (repetition penalty 1.1) to token-id prompts, generated in batches: the
    prompt tokens all rows share are run once, the rest left-padded. On a CPU a batch of 16
    costs little more per step than one row."""
    import torch

    prompts = [list(p) for p in prompts]
    eos = sorted(eos_ids)
    prefix = shared_prefix(prompts, min(len(p) for p in prompts) - 1)
    answers: list[str] = [""] * len(prompts)
    with torch.inference_mode():
        for batch in batches([len(p) - prefix for p in prompts], 16 * 256, max_rows):
            rows = [prompts[k] for k in batch]
            cache = prefix_cache(model, rows[0][:prefix], len(rows)) if prefix else None
            tail, mask, _ = left_pad([r[prefix:] for r in rows], rows[0][0], prefix)
            ids = torch.cat([torch.tensor([rows[0][:prefix]] * len(rows), dtype=tail.dtype), tail], dim=1)
            out = model.generate(input_ids=ids, attention_mask=mask, cache=cache,
                                 max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=eos[0], repetition_penalty=1.1)
            for j, k in enumerate(batch):
                answers[k] = tokenizer.decode(out[j][ids.shape[1]:], skip_special_tokens=True)
    return answers
