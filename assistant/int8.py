"""Weight-only int8 linear layers for decoding on the CPU.

Decoding one token reads every weight once and does little arithmetic with it, so on a CPU it is
bound by memory traffic: float32 weights move 4 bytes a parameter, int8 weights 1. Each output
row gets its own scale (symmetric, 127 levels a side); activations stay bfloat16 and the matmul
is torch's ``_weight_int8pack_mm``. The default model's GGUF ships 4-bit weights, so 8 bits a row
loses little of what is there. Prefill (compute-bound) keeps its own float weights.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def available() -> bool:
    """True when this torch has the int8 weight-only matmul for the CPU."""
    import torch

    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    try:
        w, x = torch.ones(8, 16, dtype=torch.int8), torch.ones(1, 16, dtype=torch.bfloat16)
        torch._weight_int8pack_mm(x, w, torch.ones(8, dtype=torch.bfloat16))
    except Exception:
        return False
    return True


@lru_cache(maxsize=1)
def _module_class() -> Any:
    import torch

    class Int8Linear(torch.nn.Module):
        """``y = x @ (q * scale).T (+ bias)`` with ``q`` int8 per output row."""

        qweight: torch.Tensor  # buffers, registered in __init__
        scales: torch.Tensor

        def __init__(self, weight: Any, bias: Any = None, dtype: Any = None, quantized: Any = None) -> None:
            """From a float ``weight`` (quantized here), or from ``quantized=(qweight, scales)``
            (e.g. read back from the on-disk cache). ``dtype``: the activations' (bfloat16 default)."""
            super().__init__()
            self.dtype = dtype or torch.bfloat16
            shape = weight.shape if quantized is None else quantized[0].shape
            self.in_features, self.out_features = shape[1], shape[0]
            self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(self.dtype), requires_grad=False)
            if quantized is not None:
                self.register_buffer("qweight", quantized[0], persistent=False)
                self.register_buffer("scales", quantized[1].to(self.dtype), persistent=False)
                return
            self.register_buffer("qweight", torch.empty(shape, dtype=torch.int8), persistent=False)
            self.register_buffer("scales", torch.empty(shape[0], dtype=self.dtype), persistent=False)
            self.load_float(weight)

        @torch.no_grad()
        def load_float(self, weight: Any) -> None:
            """(Re)quantize from a float weight, e.g. after an adapter was merged into it."""
            w = weight.detach().to(torch.bfloat16).float()  # as from the bfloat16 copy: restores are exact
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
            self.qweight.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.scales.copy_(scale.to(torch.bfloat16).to(self.dtype))

        def forward(self, x: Any) -> Any:
            shape = x.shape
            flat = x.reshape(-1, shape[-1]).to(self.dtype).contiguous()
            out = torch._weight_int8pack_mm(flat, self.qweight, self.scales)
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(*shape[:-1], self.out_features)

    return Int8Linear


def linear(weight: Any, bias: Any = None, dtype: Any = None, quantized: Any = None) -> Any:
    """One ``Int8Linear`` (see the class); ``dtype`` is the activations' dtype."""
    return _module_class()(weight, bias, dtype, quantized)


def fuse(parts: list[Any]) -> tuple[Any, Any, Any]:
    """Stack the rows of several ``Int8Linear`` (q, k and v; gate and up) into one matmul.

    Returns ``(qweight, scales, bias or None)``; afterwards each part's buffers are views into
    them, so re-quantizing a part (``load_float``, an adapter merge) updates the fused weight too.
    """
    import torch

    qweight = torch.cat([p.qweight for p in parts])
    scales = torch.cat([p.scales for p in parts])
    bias = None
    if any(p.bias is not None for p in parts):
        bias = torch.cat([p.bias.data if p.bias is not None else torch.zeros(p.out_features, dtype=p.dtype) for p in parts])
    row = 0
    for p in parts:
        p.qweight = qweight[row : row + p.out_features]
        p.scales = scales[row : row + p.out_features]
        row += p.out_features
    return qweight, scales, bias


def quantize(model: Any) -> dict[str, Any]:
    """Turn ``model`` (a bfloat16 copy) into an int8-decode model, in place: every ``nn.Linear``
    (the attention and MLP projections and the output head) becomes an ``Int8Linear``.

    Returns ``{parameter name: Int8Linear}`` (e.g. ``model.layers.0.self_attn.q_proj.weight``), so
    merged adapter weights can be loaded into the right layer by the name the float models use.
    """
    import torch

    cls = _module_class()
    layers: dict[str, Any] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                full = f"{name}.{child_name}" if name else child_name
                q = cls(child.weight, child.bias)
                setattr(module, child_name, q)
                layers[f"{full}.weight"] = q
    return layers
