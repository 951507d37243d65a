"""The decode loop's small parts: picking the next token (repetition penalty, temperature, top-p),
turning token ids into text with stop strings held back, and the KV-cache surgery (crop, copy,
cast). Torch is imported inside the functions."""

from __future__ import annotations

import os
from typing import Any, Sequence

from assistant.generation import GenParams


class Detokenizer:
    """Incremental decoding that never emits half a UTF-8 character or half a stop string."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] were decoded into the text already emitted
        self.read = 0
        self.stops = [s for s in stops if s]
        self.pending = ""  # decoded text held back because it may start a stop string
        self.done = False

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=True)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return "", False
        new = after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        return self._filter(new)

    def _filter(self, new: str) -> tuple[str, bool]:
        if not self.stops:
            return new, False
        text = self.pending + new
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                self.pending = ""
                self.done = True
                return text[:at], True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        self.pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        if self.done:
            return ""
        rest = self.pending
        self.pending = ""
        return rest


def penalize(logits: Any, recent: Sequence[int], penalty: float) -> Any:
    import torch

    index = torch.tensor(sorted(set(recent)), dtype=torch.long)
    picked = logits[index]
    logits = logits.clone()
    logits[index] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def sample(logits: Any, params: GenParams, generator: Any) -> int:
    import torch

    if params.temperature <= 0 or generator is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_p, dim=-1)
        keep = cumulative - sorted_p < params.top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def cache_layers(cache: Any) -> list[Any]:
    return [layer for layer in getattr(cache, "layers", []) if getattr(layer, "keys", None) is not None]


def crop_cache(cache: Any, length: int) -> None:
    for layer in cache_layers(cache):
        if layer.keys.numel():
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def copy_cache(cache: Any, length: int, config: Any) -> Any:
    """A new cache holding copies of the first ``length`` positions of ``cache``."""
    from transformers import DynamicCache

    out = DynamicCache(config=config)
    for i, layer in enumerate(cache_layers(cache)):
        out.update(layer.keys[..., :length, :].clone(), layer.values[..., :length, :].clone(), i)
    return out


def cast_cache(cache: Any, dtype: Any) -> None:
    for layer in cache_layers(cache):
        if layer.keys.dtype != dtype:
            layer.keys = layer.keys.to(dtype)
            layer.values = layer.values.to(dtype)
            if hasattr(layer, "dtype"):
                layer.dtype = dtype


def set_threads(threads: int) -> None:
    import torch

    n = threads or os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)

