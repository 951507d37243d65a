"""A hand-written one-token decode step for Llama-family models with int8 weights.

Profiling a 128-token greedy decode of SmolLM2-135M through transformers' forward showed about
40% of a token's time outside the matmuls: per-layer module calls, mask and position bookkeeping,
the DynamicCache's per-token ``torch.cat`` and dtype casts (docs/architecture.md has the numbers).
This step does only what one token needs, with plain tensor ops:

- q, k and v are one int8 matmul, gate and up another (``int8.fuse``: the per-projection
  ``Int8Linear`` keep views into the fused weight, so an adapter merge updates it in place);
- the KV cache is a preallocated buffer per layer (``StaticKV``), written in place;
- rotary cos/sin come from a table built once; attention is one SDPA call over the filled part
  of the cache with grouped KV heads (no ``repeat_kv`` copy).

Prefill stays on transformers (compute-bound, where its kernels are good); its KV is copied into
the buffer once per reply and written back to the conversation's cache at the end. Only model
types whose decode step is exactly this are accepted (``unsupported``); others keep the generic
path in the engine.
"""

from __future__ import annotations

from typing import Any

SUPPORTED_TYPES = ("llama", "qwen2")
_CHUNK = 256  # the KV buffer grows in steps of this many positions


def unsupported(config: Any) -> str | None:
    """Why this decode step cannot run ``config``'s model (None: it can)."""
    kind = getattr(config, "model_type", "")
    if kind not in SUPPORTED_TYPES:
        return f"model type {kind!r} (the fast decode step knows {', '.join(SUPPORTED_TYPES)})"
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") not in ("default", "linear", "llama3"):
        return f"rope type {rope.get('rope_type')!r}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    if getattr(config, "use_sliding_window", False) or any(
        t != "full_attention" for t in (getattr(config, "layer_types", None) or [])
    ):
        return "sliding-window attention"
    return None


class StaticKV:
    """Keys and values of every layer in two preallocated buffers, ``[layer, kv_head, pos, dim]``."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: Any) -> None:
        self.shape = (layers, kv_heads, 0, head_dim)
        self.dtype = dtype
        self.k: Any = None  # the [layer, kv_head, pos, dim] tensors once reserve() has run
        self.v: Any = None
        self.length = 0

    def reserve(self, positions: int) -> None:
        import torch

        have = 0 if self.k is None else self.k.shape[2]
        if positions <= have:
            return
        size = -(-positions // _CHUNK) * _CHUNK
        layers, heads, _, dim = self.shape
        k = torch.zeros(layers, heads, size, dim, dtype=self.dtype)
        v = torch.zeros_like(k)
        if self.k is not None and self.length:
            k[:, :, : self.length] = self.k[:, :, : self.length]
            v[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = k, v

    def load(self, cache: Any, length: int, reserve: int) -> None:
        """Copy the first ``length`` positions of a transformers cache in (``reserve``: room for)."""
        self.length = 0
        self.reserve(max(reserve, length))
        for i, layer in enumerate(cache.layers):
            self.k[i, :, :length] = layer.keys[0, :, :length]
            self.v[i, :, :length] = layer.values[0, :, :length]
        self.length = length

    def to_cache(self, config: Any, dtype: Any) -> Any:
        """A transformers DynamicCache holding copies of the filled positions."""
        from transformers import DynamicCache

        out = DynamicCache(config=config)
        n = self.length
        for i in range(self.shape[0]):
            out.update(self.k[i : i + 1, :, :n].to(dtype, copy=True), self.v[i : i + 1, :, :n].to(dtype, copy=True), i)
        return out


class Decoder:
    """int8 decode step over a transformers Llama-family model's weights.

    ``layers`` maps each linear weight's parameter name (``model.layers.0.self_attn.q_proj.weight``)
    to its ``Int8Linear``, whose ``load_float`` re-quantizes it (adapter merges).
    """

    def __init__(self, model: Any, context_tokens: int, dtype: Any = None, quantized: dict[str, Any] | None = None) -> None:
        import torch

        from assistant import int8

        cfg = model.config
        self.dtype = dtype or torch.bfloat16  # the int8 kernel's fast path wants bfloat16 input
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.hidden = cfg.hidden_size
        self.eps = float(cfg.rms_norm_eps)
        self.n_layers = cfg.num_hidden_layers
        base = model.model
        self.embed = base.embed_tokens.weight  # shared with the prefill model, never copied
        self.scaling = float(base.layers[0].self_attn.scaling)
        self.layers: dict[str, Any] = {}
        self._steps: list[tuple] = []

        def q8(module: Any, name: str) -> Any:
            stored = None if quantized is None else (quantized[name + ".q"], quantized[name + ".s"])
            layer = int8.linear(module.weight, module.bias, self.dtype, stored)
            self.layers[name] = layer
            return layer

        def norm(module: Any) -> Any:
            return module.weight.detach().to(self.dtype)

        for i, block in enumerate(base.layers):
            a, m, p = block.self_attn, block.mlp, f"model.layers.{i}."
            qkv = int8.fuse([q8(a.q_proj, p + "self_attn.q_proj.weight"), q8(a.k_proj, p + "self_attn.k_proj.weight"),
                             q8(a.v_proj, p + "self_attn.v_proj.weight")])
            o = q8(a.o_proj, p + "self_attn.o_proj.weight")
            gate_up = int8.fuse([q8(m.gate_proj, p + "mlp.gate_proj.weight"), q8(m.up_proj, p + "mlp.up_proj.weight")])
            down = q8(m.down_proj, p + "mlp.down_proj.weight")
            self._steps.append((norm(block.input_layernorm), qkv, (o.qweight, o.scales, o.bias),
                                norm(block.post_attention_layernorm), gate_up, (down.qweight, down.scales, down.bias)))
        self.final_norm = norm(base.norm)
        head = q8(model.lm_head, "lm_head.weight")
        self.head = (head.qweight, head.scales, head.bias)
        rotary = base.rotary_emb
        positions = torch.arange(context_tokens, dtype=torch.float32)
        freqs = positions[:, None] * rotary.inv_freq.float()[None, :]
        half = freqs.shape[1]
        self.cos = (torch.cat([freqs, freqs], -1).cos() * rotary.attention_scaling).to(self.dtype)
        sin = freqs.sin() * rotary.attention_scaling
        # rotate_half(x) * sin == roll(x, half) * [-sin, sin]: one roll instead of slice/neg/cat
        self.sin = torch.cat([-sin, sin], -1).to(self.dtype)
        self._half = half
        self.q_width = self.heads * self.head_dim
        self.qk_width = (self.heads + self.kv_heads) * self.head_dim
        self.intermediate = cfg.intermediate_size

    def new_kv(self) -> StaticKV:
        return StaticKV(self.n_layers, self.kv_heads, self.head_dim, self.dtype)

    def state(self) -> dict[str, Any]:
        """The quantized weights by name (``<param>.q`` int8, ``<param>.s`` scales), for the disk cache."""
        out: dict[str, Any] = {}
        for name, layer in self.layers.items():
            out[name + ".q"] = layer.qweight.contiguous()
            out[name + ".s"] = layer.scales.contiguous()
        return out

    def step(self, token: int, kv: StaticKV) -> Any:
        """Logits (float32, vocab) after ``token`` at position ``kv.length``; appends its KV."""
        import torch
        import torch.nn.functional as F

        mm = torch._weight_int8pack_mm
        pos = kv.length
        kv.reserve(pos + 1)
        n = pos + 1
        d, nkv = self.head_dim, self.kv_heads
        shape = (self.hidden,)
        cos, sin = self.cos[pos], self.sin[pos]
        x = self.embed[token].to(self.dtype)[None, :]
        for i, (ln1, (wqkv, sqkv, bqkv), (wo, so, bo), ln2, (wgu, sgu, bgu), (wd, sd, bd)) in enumerate(self._steps):
            h = F.rms_norm(x, shape, ln1, self.eps)
            qkv = mm(h, wqkv, sqkv)[0]
            if bqkv is not None:
                qkv = qkv + bqkv
            qk = qkv[: self.qk_width].view(-1, d)
            qk = qk * cos + qk.roll(self._half, -1) * sin
            kv.k[i, :, pos] = qk[self.heads :]
            kv.v[i, :, pos] = qkv[self.qk_width :].view(nkv, d)
            att = F.scaled_dot_product_attention(qk[None, : self.heads, None], kv.k[i : i + 1, :, :n], kv.v[i : i + 1, :, :n],
                                                 scale=self.scaling, enable_gqa=True).view(1, self.q_width)
            out = mm(att, wo, so)
            x = x + (out if bo is None else out + bo)
            h = F.rms_norm(x, shape, ln2, self.eps)
            gu = mm(h, wgu, sgu)
            if bgu is not None:
                gu = gu + bgu
            out = mm(F.silu(gu[:, : self.intermediate]) * gu[:, self.intermediate :], wd, sd)
            x = x + (out if bd is None else out + bd)
        kv.length = n
        x = F.rms_norm(x, shape, self.final_norm, self.eps)
        wh, sh, bh = self.head
        logits = mm(x, wh, sh)[0]
        return (logits if bh is None else logits + bh).float()
