"""``python -m bench.speed --against llama-cpp``: this engine and llama.cpp side by side.

The parent renders every prompt once with the model's own chat template into token ids (a "plan"
file), so both engines see exactly the same tokens; each measurement runs in a fresh process so
load time and peak RSS are that engine's own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.speed import CANNED, PROMPT, SYSTEM, TURNS, _child, _rss_mb

DECODE_TOKENS = 256
METRICS = [  # key, label, unit, higher is better
    ("decode_tok_s", "decode tokens/s (256 new tokens)", "", True),
    ("prefill_tok_s", "prefill tokens/s (cold prompt)", "", True),
    ("turn5_ttft_s", "5th-turn time to first token", "s", False),
    ("load_s", "engine load", "s", False),
    ("peak_rss_mb", "peak RSS", "MB", False),
]


def _plan(model: str, threads: int) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from assistant import model_store

    if model == "default":
        gguf = model_store.default_gguf()
    else:
        gguf = Path(model).expanduser()
        if gguf.suffix.lower() != ".gguf" or not gguf.is_file():
            raise SystemExit(f"--against needs a .gguf file (both engines load it): {model!r} is not one")
    folder = model_store.resolve(str(gguf) if model != "default" else "default", print).folder
    tok = AutoTokenizer.from_pretrained(str(folder))

    def ids(messages: list[dict[str, str]]) -> list[int]:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    long_prompt = PROMPT
    while len(ids([{"role": "system", "content": SYSTEM}, {"role": "user", "content": long_prompt}])) < 700:
        long_prompt += PROMPT
    history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    turns = []
    for turn in TURNS:
        history.append({"role": "user", "content": turn})
        turns.append(ids(history))
        history.append({"role": "assistant", "content": CANNED})
    return {
        "gguf": str(gguf),
        "model": model,
        "threads": threads,
        "decode_ids": ids([{"role": "user", "content": "Tell me a long story about a cat who learns to cook."}]),
        "prefill_ids": ids([{"role": "system", "content": SYSTEM}, {"role": "user", "content": long_prompt}]),
        "turns": turns,
    }


def _adapter_deltas(engine: Any, rank: int = 8) -> dict[str, Any]:
    """A LoRA-sized random delta on every q and v projection: decoding runs with an adapter merged."""
    import torch

    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, p in engine.model.named_parameters():
        if name.endswith(("q_proj.weight", "v_proj.weight")):
            b = torch.randn(p.shape[0], rank, generator=gen) * 0.01
            a = torch.randn(rank, p.shape[1], generator=gen) * 0.01
            out[name] = b @ a
    return out


def _ours(plan: dict[str, Any]) -> dict[str, Any]:
    from assistant import settings as settings_mod
    from assistant.engine import Engine
    from assistant.generation import GenParams, KVSession

    name = "default" if plan["model"] == "default" else plan["gguf"]
    s = settings_mod.load(env={}, overrides={"model.name": name, "model.threads": plan["threads"]})
    t = time.perf_counter()
    engine = Engine.load(s)
    out: dict[str, Any] = {"load_s": time.perf_counter() - t, "path": f"{engine.prefill_dtype}/{engine.decode_dtype} {engine.decode_path}"}
    engine.set_adapter("bench/adapter", _adapter_deltas(engine))
    engine.eos_ids = set()
    engine.stream(plan["decode_ids"], GenParams(temperature=0, max_new_tokens=4)).collect()  # warm-up
    gen = engine.stream(plan["decode_ids"], GenParams(temperature=0, max_new_tokens=DECODE_TOKENS))
    gen.collect()
    out["decode_tok_s"] = gen.stats.decode_tps
    engine.clear_shared_prefix()
    gen = engine.stream(plan["prefill_ids"], GenParams(temperature=0, max_new_tokens=1))
    gen.collect()
    out["prefill_tok_s"] = len(plan["prefill_ids"]) / gen.stats.ttft_s
    engine.clear_shared_prefix()
    session = KVSession()
    for ids in plan["turns"]:
        gen = engine.stream(ids, GenParams(temperature=0, max_new_tokens=8), session=session)
        gen.collect()
    out["turn5_ttft_s"] = gen.stats.ttft_s
    out["turn5_cached"] = f"{gen.stats.cached_tokens}/{gen.stats.prompt_tokens}"
    return out


def _theirs(plan: dict[str, Any]) -> dict[str, Any]:
    from llama_cpp import Llama

    t = time.perf_counter()
    llm = Llama(model_path=plan["gguf"], n_ctx=2048, n_threads=plan["threads"], n_threads_batch=plan["threads"],
                n_batch=512, verbose=False)
    out: dict[str, Any] = {"load_s": time.perf_counter() - t, "path": "llama.cpp (no adapter)"}

    def run(ids: list[int], n: int, cold: bool) -> tuple[float, float]:
        if cold:
            llm.reset()
        t0 = time.perf_counter()
        first = last = 0.0
        for i, _tok in enumerate(llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0)):
            last = time.perf_counter()
            if i == 0:
                first = last
            if i + 1 >= n:
                break
        return first - t0, (n - 1) / (last - first) if n > 1 and last > first else 0.0

    run(plan["decode_ids"], 4, True)  # warm-up
    out["decode_tok_s"] = run(plan["decode_ids"], DECODE_TOKENS, True)[1]
    ttft, _ = run(plan["prefill_ids"], 1, True)
    out["prefill_tok_s"] = len(plan["prefill_ids"]) / ttft
    llm.reset()
    for ids in plan["turns"]:
        ttft, _ = run(ids, 8, False)  # generate() reuses the longest common prefix it holds
    out["turn5_ttft_s"] = ttft
    return out


def run_side(side: str, plan_file: Path) -> dict[str, Any]:
    plan = json.loads(plan_file.read_text())
    out = _ours(plan) if side == "ours" else _theirs(plan)
    out["peak_rss_mb"] = _rss_mb()
    out["load_avg"] = os.getloadavg()[0]
    return out


def compare(args: Any) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit("llama-cpp-python is not installed: `pip install '.[speed]'` (it builds llama.cpp from "
                         "source with cmake and a C++ compiler; expect 10+ minutes on 2 cores)")
    rounds = max(3, args.rounds)
    before = os.getloadavg()
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see docs/speed.md: spinning OpenMP threads lose on a busy machine
    with tempfile.TemporaryDirectory() as scratch:
        plan_file = Path(scratch) / "plan.json"
        plan_file.write_text(json.dumps(_plan(args.model, args.threads)))
        results: dict[str, list[dict[str, Any]]] = {"ours": [], "llama-cpp": []}
        for r in range(rounds):
            order = ("ours", "llama-cpp") if r % 2 == 0 else ("llama-cpp", "ours")
            for side in order:
                results[side].append(_child(["--side", side, "--plan", str(plan_file)], env))
                row = results[side][-1]
                print(f"round {r + 1} {side:9}: decode {row['decode_tok_s']:.1f} tok/s, prefill {row['prefill_tok_s']:.0f} tok/s, "
                      f"turn-5 TTFT {row['turn5_ttft_s']:.3f} s, load {row['load_s']:.2f} s, RSS {row['peak_rss_mb']} MB "
                      f"(load avg {row['load_avg']:.2f})", flush=True)
    _table(results, rounds, args.threads, before, os.getloadavg())


def _fmt(value: float, key: str, unit: str) -> str:
    if key in ("peak_rss_mb", "prefill_tok_s"):
        return f"{value:.0f}"
    return f"{value:.2f}" if unit == "s" else f"{value:.1f}"


def _table(results: dict[str, list[dict[str, Any]]], rounds: int, threads: int, before: tuple, after: tuple) -> None:
    ours, theirs = results["ours"], results["llama-cpp"]
    print(f"\n{rounds} interleaved rounds, {threads} threads, greedy; medians. ours: {ours[0]['path']}, a rank-8 adapter merged; "
          f"turn 5 reused {ours[-1]['turn5_cached']} tokens")
    print(f"load average: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f} before, {after[0]:.2f} {after[1]:.2f} {after[2]:.2f} after")
    print("| metric | this project | llama.cpp | ratio |\n| --- | --- | --- | --- |")
    for key, label, unit, higher in METRICS:
        a = statistics.median(r[key] for r in ours)
        b = statistics.median(r[key] for r in theirs)
        ratio = a / b if b else float("nan")
        note = "x" if higher else "x (lower is better)"
        print(f"| {label} | {_fmt(a, key, unit)} {unit} | {_fmt(b, key, unit)} {unit} | {ratio:.2f}{note} |")
    sys.stdout.flush()
