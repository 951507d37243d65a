"""FFA-LoRA: the federation shares one frozen ``A`` per layer and averages only the ``B`` matrices.

Why (see docs/federated.md): a LoRA layer adds ``B @ A``. Averaging each client's ``A`` and
``B`` separately gives ``mean(B) @ mean(A)``, which is not ``mean(B @ A)``, the update the clients
agreed on. With ``A`` frozen (the pack adapter's, the same on every device) the product is linear
in ``B``: ``mean(B_i) @ A == mean(B_i @ A)`` exactly. Linearity is also what secure aggregation
(only the sum is revealed) and differential privacy (noise added to the sum) need, and it halves
what a device sends. The price: each round only moves ``B``, within the span ``A`` fixes.

This module also holds the privacy accountant for the Gaussian mechanism.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from assistant.adapters import CONFIG, WEIGHTS


@dataclass
class Adapter:
    config: dict[str, Any]  # peft's adapter_config.json
    a: dict[str, Any]  # lora_A tensors (frozen, shared)
    b: dict[str, Any]  # lora_B tensors (what the federation averages)

    def b_names(self) -> list[str]:
        return sorted(self.b)

    def b_arrays(self) -> list[Any]:
        """B as float32 numpy arrays, in ``b_names`` order (what a device sends)."""
        return [self.b[n].detach().float().cpu().numpy() for n in self.b_names()]

    def with_b(self, arrays: Sequence[Any]) -> "Adapter":
        import numpy as np
        import torch

        names = self.b_names()
        if len(arrays) != len(names):
            raise ValueError(f"expected {len(names)} B matrices, got {len(arrays)}")
        b = {}
        for name, arr in zip(names, arrays, strict=False):
            arr = np.asarray(arr, dtype=np.float32)
            if tuple(arr.shape) != tuple(self.b[name].shape):
                raise ValueError(f"{name}: shape {arr.shape} does not fit {tuple(self.b[name].shape)}")
            b[name] = torch.from_numpy(arr.copy())
        return Adapter(self.config, self.a, b)

    def a_blob(self) -> bytes:
        """The frozen A matrices and the adapter config, as bytes for a message."""
        from safetensors.torch import save

        return save({k: v.contiguous() for k, v in self.a.items()}, metadata={"config": json.dumps(self.config)})

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(self.a_blob()).hexdigest()[:16]


def from_blob(blob: bytes, b_names: Sequence[str], b_arrays: Sequence[Any]) -> Adapter:
    """The adapter a round message describes: its A blob (``Adapter.a_blob``) and B arrays."""
    import numpy as np
    import torch
    from safetensors.torch import load

    a = load(blob)
    n = int.from_bytes(blob[:8], "little")  # safetensors: 8-byte header length, JSON header
    config = json.loads(json.loads(blob[8:8 + n]).get("__metadata__", {}).get("config", "{}"))
    if len(b_names) != len(b_arrays):
        raise ValueError(f"{len(b_names)} B names but {len(b_arrays)} arrays")
    b = {name: torch.from_numpy(np.asarray(arr, dtype=np.float32).copy()) for name, arr in zip(b_names, b_arrays, strict=False)}
    if {k.replace(".lora_A.", ".lora_B.") for k in a} != set(b):
        raise ValueError("the B matrices do not pair with the A matrices")
    return Adapter(config, a, b)


def read(folder: Path) -> Adapter:
    from safetensors.torch import load_file

    config = json.loads((folder / CONFIG).read_text())
    tensors = load_file(str(folder / WEIGHTS))
    a = {k: v for k, v in tensors.items() if ".lora_A." in k}
    b = {k: v for k, v in tensors.items() if ".lora_B." in k}
    if not a or len(a) != len(b):
        raise ValueError(f"{folder} does not hold a LoRA adapter (A/B pairs)")
    return Adapter(config, a, b)


def write(folder: Path, adapter: Adapter) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG).write_text(json.dumps(adapter.config, indent=2))
    save_file({**{k: v.contiguous() for k, v in adapter.a.items()}, **{k: v.contiguous() for k, v in adapter.b.items()}},
              str(folder / WEIGHTS))
    return folder


def update_norm(new: Sequence[Any], old: Sequence[Any]) -> float:
    import numpy as np

    return float(math.sqrt(sum(float(np.sum((np.asarray(n) - np.asarray(o)) ** 2)) for n, o in zip(new, old, strict=False))))


# ---------------------------------------------------------------------- privacy accounting
_ALPHAS = [1 + x / 100 for x in range(1, 100)] + [2 + x / 4 for x in range(0, 120)] + [32, 48, 64, 128, 256, 512, 1024]


def epsilon(noise_multipliers: Sequence[float], delta: float) -> float:
    """(epsilon, delta)-DP of composing Gaussian mechanisms, one per round, each adding noise of
    standard deviation ``z * C`` to a sum in which one device changes at most ``C`` (its update is
    clipped to norm ``C``): client-level DP. Renyi DP of one round at order a is a / (2 z^2); the
    rounds add up; the conversion to (epsilon, delta) is the one of Balle et al. 2020 (Thm. 21).
    All devices take part in every round, so no subsampling amplification is claimed."""
    if not noise_multipliers:
        return 0.0
    if any(z <= 0 for z in noise_multipliers):
        return math.inf
    best = math.inf
    for a in _ALPHAS:
        rdp = sum(a / (2 * z * z) for z in noise_multipliers)
        eps = rdp + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return max(0.0, best)
