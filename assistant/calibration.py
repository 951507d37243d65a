"""Per-machine measurements and caches that make the engine's later starts fast.

- ``calibrate`` times prefill and decode per dtype on this machine (the fastest differs per phase
  and per CPU), and decode on one thread as well (``decode_threads``: a decode token is small
  work, and with two threads the hand-offs can cost more than the second core gives). It caches
  the result in the model folder, keyed by CPU model, thread count, torch version and the decode
  paths measured. The 1-minute load average is recorded with it: a result
  measured on a busy machine is measured again once the machine is quieter (``cached_calibration``).
- ``read_quantized`` / ``write_quantized`` keep the int8 decode weights on disk next to the model,
  stamped with the weights file they came from, so a start does not quantize again.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

CALIBRATION_FILE = "calibration.json"
QUANTIZED_FILE = "decode-int8.safetensors"
QUANT_SCHEME = "int8-per-row-v1"  # change when int8.Int8Linear.load_float changes
BUSY_LOAD_PER_CPU = 0.75  # a 1-minute load average above this per core: timings are suspect


def cpu_name() -> str:
    """The CPU model, as calibration keys name it (no torch needed)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine_id() -> str:
    cpu = cpu_name()
    import torch

    # dtypes=3: int8 decode is timed through the hand-written decode step (assistant/decode.py)
    # dtypes=4: the decode dtype is also timed on one thread (decode_threads)
    return f"{cpu}|threads={torch.get_num_threads()}|torch={torch.__version__}|dtypes=4"


def load_per_cpu() -> float:
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


def _read(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / CALIBRATION_FILE).read_text())
    except (OSError, ValueError):
        return {}


def cached_calibration(folder: Path) -> dict[str, Any] | None:
    """This machine's cached result, or None when there is none or it should be measured again:
    it was taken under load (above ``BUSY_LOAD_PER_CPU``) and the machine is now at most half as
    busy. (Another CPU, thread count or torch has another key, so it is measured anew.)"""
    entry = _read(folder).get(machine_id())
    if not entry:
        return None
    then = entry.get("load_per_cpu")
    if then is not None and then > BUSY_LOAD_PER_CPU and load_per_cpu() < then / 2:
        return None
    return entry


def _time_phases(m: Any, ids: Any, config: Any, step: Callable[[int, Any], Any] | None, kv: Any) -> tuple[float, float]:
    """Best of two: a 256-token prefill (inf when ``step`` decodes) and one decode token."""
    import torch
    from transformers import DynamicCache

    best_p, best_d = float("inf"), float("inf")
    for _ in range(2):
        cache = DynamicCache(config=config)
        t = time.perf_counter()
        out = m(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        if step is None:
            best_p = min(best_p, time.perf_counter() - t)
        nxt = int(out.logits[0, -1].argmax())
        if step is not None:
            kv.load(cache, ids.shape[1], ids.shape[1] + 9)
        t = time.perf_counter()
        for _ in range(8):
            if step is None:
                out = m(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True, logits_to_keep=1)
                nxt = int(out.logits[0, -1].argmax())
            else:
                nxt = int(step(nxt, kv).argmax())
        best_d = min(best_d, (time.perf_counter() - t) / 8)
    return best_p, best_d


def calibrate(model: Any, folder: Path, say: Callable[[str], None] | None = None, force: bool = False) -> dict[str, Any]:
    """Measure prefill and decode speed in float32 and bfloat16 (and decode with int8 weights,
    where torch has the kernel) on this machine, once; cached (see the module docstring)."""
    import torch

    from assistant import decode, int8

    known = _read(folder)
    key = machine_id()
    if not force and cached_calibration(folder) is not None:
        return known[key]
    say = say or (lambda _m: None)
    load = load_per_cpu()
    names = ["float32", "bfloat16"] + (["int8"] if int8.available() else [])
    busy = f" (the machine is busy: load {load:.1f} per core; measured again when it is quieter)" if load > BUSY_LOAD_PER_CPU else ""
    say(f"measuring prefill and decode speed per dtype on this machine (once, about 20 s){busy}")
    timings: dict[str, dict[str, float]] = {}
    threads = torch.get_num_threads()
    ids = torch.randint(10, min(int(model.config.vocab_size), 30000), (1, 256))
    with torch.inference_mode():
        for n, name in enumerate(names, 1):
            say(f"calibration {n}/{len(names)}: {name}")
            dtype = torch.float32 if name == "float32" else torch.bfloat16
            m = model if next(model.parameters()).dtype == dtype else copy.deepcopy(model).to(dtype)
            step, kv = None, None
            if name == "int8":
                if decode.unsupported(model.config) is None:
                    dec = decode.Decoder(m, 512)
                    step, kv = dec.step, dec.new_kv()
                else:
                    m = copy.deepcopy(m) if m is model else m
                    int8.quantize(m)
            best_p, best_d = _time_phases(m, ids, model.config, step, kv)
            if name == "int8":
                best_p = float("inf")  # int8 weights are for decoding only
            timings[name] = {"decode_token_s": round(best_d, 5)}
            if threads > 1:  # a decode token is small work: one thread can beat two (no hand-offs)
                torch.set_num_threads(1)
                try:
                    timings[name]["decode_token_s_1_thread"] = round(_time_phases(m, ids, model.config, step, kv)[1], 5)
                finally:
                    torch.set_num_threads(threads)
            if best_p < float("inf"):
                timings[name]["prefill_256_s"] = round(best_p, 4)
            del m
    fastest = min(timings, key=lambda n: min(timings[n]["decode_token_s"], timings[n].get("decode_token_s_1_thread", 1e9)))
    one = timings[fastest].get("decode_token_s_1_thread", float("inf"))
    result = {
        "prefill": min((n for n in timings if "prefill_256_s" in timings[n]), key=lambda n: timings[n]["prefill_256_s"]),
        "decode": fastest,
        # one thread only when clearly faster (3%): a tie keeps all cores
        "decode_threads": 1 if one < timings[fastest]["decode_token_s"] * 0.97 else threads,
        "timings": timings,
        "measured_at": time.time(),
        "load_per_cpu": round(load, 2),
    }
    known[key] = result
    tmp = folder / f".{CALIBRATION_FILE}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(known, indent=2))
        os.replace(tmp, folder / CALIBRATION_FILE)
    except OSError:
        pass  # a read-only model folder: measure again next time
    return result


def _weights_stamp(folder: Path) -> str:
    """What the quantized cache was computed from: the weights files' sizes and mtimes, the scheme."""
    files = sorted(f for f in folder.glob("*.safetensors") if f.name != QUANTIZED_FILE)
    return "|".join([f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files] + [QUANT_SCHEME])


def read_quantized(folder: Path) -> dict[str, Any] | None:
    """The int8 decode weights cached by an earlier start, if they match the model's weights."""
    path = folder / QUANTIZED_FILE
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            if (fh.metadata() or {}).get("stamp") != _weights_stamp(folder):
                return None
            return {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception:  # a damaged cache only means a slower start: quantize again
        return None


def write_quantized(folder: Path, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tmp = folder / f".{QUANTIZED_FILE}.tmp-{os.getpid()}"
    try:
        save_file(state, str(tmp), metadata={"stamp": _weights_stamp(folder)})
        os.replace(tmp, folder / QUANTIZED_FILE)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only model folder: quantize again next start
