"""Engine speed benchmark: prints numbers, asserts nothing.

    python -m bench.speed [--dtypes float32,bfloat16,auto] [--model default]
    python -m bench.speed --against llama-cpp [--rounds 3] [--threads 2]
    python -m bench.speed --decode-threads 1,2 [--rounds 4]

The first form runs each dtype setting in its own process (so peak RSS is its own): warm load,
time to first token and decode tokens/s for a 64- and a 256-token reply, time to first token of
the first and fifth turn of a conversation, peak RSS.

``--against llama-cpp`` runs this engine and llama.cpp (llama-cpp-python, the optional extra
``pip install '.[speed]'``) on the same GGUF, the same token ids and thread count, greedy,
interleaved (ours, theirs, ours, ...) for ``--rounds`` rounds, each run in a fresh process, and
prints the medians and ratios: decode tok/s (256 new tokens, a LoRA-sized adapter merged into our
weights), prefill tok/s (a cold ~700-token prompt), 5th-turn time to first token (the earlier
turns' KV reused), engine load and peak RSS, with the load average. The numbers are noisy on a
shared machine: compare the ratios of one run.

``--decode-threads 1,2`` loads the engine once and decodes the same 128 tokens with each torch
thread count in turn (the order alternating per round), to tell whether decoding, which is bound
by memory traffic, gains from a second thread on this machine. Prints per-round tok/s, the
medians and their ratio, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = (
    "I'm planning meals for a family of four this week. We like Italian and Indian food, one of the "
    "children will not eat mushrooms, and we want to spend less than sixty euros. "
)
SYSTEM = "You are a helpful cooking assistant."
TURNS = ["Hello! Can you help me cook this week?", "We are four people.", "One child hates mushrooms.",
         "Our budget is sixty euros.", "What should we eat on Monday?"]
CANNED = "Sure, I can help with that. Tell me more."  # the history's replies: the same for both engines


def _rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


# ----------------------------------------------------------------- per-dtype mode
def _one(dtype: str, model: str) -> dict:
    from assistant import model_store
    from assistant import settings as settings_mod
    from assistant.engine import Engine
    from assistant.generation import GenParams, KVSession
    from assistant.sampling import set_threads

    s = settings_mod.load(env={}, overrides={"model.name": model, "model.prefill_dtype": dtype, "model.decode_dtype": dtype})
    set_threads(s.model.threads)
    t0 = time.perf_counter()
    resolved = model_store.resolve(model)
    model_obj, tok = model_store.load_folder(resolved.folder)
    warm_load = time.perf_counter() - t0
    del model_obj, tok
    engine = Engine.load(s)
    out = {"dtype": dtype, "prefill_dtype": engine.prefill_dtype, "decode_dtype": engine.decode_dtype,
           "warm_load_s": round(warm_load, 2), "engine_load_s": round(engine.load_seconds, 2)}
    eos = engine.eos_ids
    engine.eos_ids = set()  # generate exactly N tokens
    ids = engine.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT * 6 + "Plan Monday."}])
    out["prompt_tokens"] = len(ids)
    engine.stream(ids[:32], GenParams(temperature=0, max_new_tokens=4)).collect()  # warm-up
    for n in (64, 256):
        engine.clear_shared_prefix()  # a cold prompt: time the whole prefill
        gen = engine.stream(ids, GenParams(temperature=0, max_new_tokens=n))
        gen.collect()
        out[f"reply{n}"] = {"ttft_s": round(gen.stats.ttft_s, 3), "decode_tok_s": round(gen.stats.decode_tps, 1)}
    engine.eos_ids = eos
    engine.clear_shared_prefix()
    session = KVSession()
    history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    ttfts = []
    for turn in TURNS:
        history.append({"role": "user", "content": turn})
        gen = engine.stream(engine.render(history), GenParams(temperature=0, max_new_tokens=48), session=session)
        history.append({"role": "assistant", "content": gen.collect()})
        ttfts.append({"ttft_s": round(gen.stats.ttft_s, 3), "prompt": gen.stats.prompt_tokens, "cached": gen.stats.cached_tokens})
    out["turn1"], out["turn5"] = ttfts[0], ttfts[4]
    out["peak_rss_mb"] = _rss_mb()
    return out


def _dtype_table(args: argparse.Namespace) -> None:
    from assistant import model_store

    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ)
        if args.model == "default":  # time the first-start conversion into a scratch data folder
            env["ASSISTANT_HOME"] = os.environ["ASSISTANT_HOME"] = scratch
            t = time.perf_counter()
            model_store.resolve("default")
            print(f"first-start conversion (GGUF -> safetensors): {time.perf_counter() - t:.1f} s")
        rows = [_child(["--child", dtype, "--model", args.model], env) for dtype in args.dtypes.split(",")]
    print(f"{'setting':10} {'phases':10} {'load':>6} {'ttft64':>7} {'tok/s64':>8} {'ttft256':>8} {'tok/s256':>9} "
          f"{'ttft t1':>8} {'ttft t5':>8} {'t5 cached':>10} {'RSS MB':>7}")
    for r in rows:
        print(f"{r['dtype']:10} {r['prefill_dtype'][:4] + '/' + r['decode_dtype'][:4]:10} {r['engine_load_s']:6.2f} "
              f"{r['reply64']['ttft_s']:7.3f} {r['reply64']['decode_tok_s']:8.1f} {r['reply256']['ttft_s']:8.3f} "
              f"{r['reply256']['decode_tok_s']:9.1f} {r['turn1']['ttft_s']:8.3f} {r['turn5']['ttft_s']:8.3f} "
              f"{str(r['turn5']['cached']) + '/' + str(r['turn5']['prompt']):>10} {r['peak_rss_mb']:7d}")
    print(f"(prompt for the reply rows: {rows[0]['prompt_tokens']} tokens; load average {os.getloadavg()[0]:.2f})")
    print(json.dumps(rows))


def _decode_threads(counts: list[int], rounds: int) -> None:
    import statistics

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by libgomp when torch loads (docs/speed.md)
    import torch

    from assistant import settings as settings_mod
    from assistant.engine import Engine
    from assistant.generation import GenParams

    before = os.getloadavg()
    engine = Engine.load(settings_mod.load(env={}, overrides={"model.threads": max(counts)}))
    engine.eos_ids = set()  # exactly 128 tokens each time
    ids = engine.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT + "Plan Monday."}])
    engine.stream(ids, GenParams(temperature=0, max_new_tokens=8)).collect()  # warm-up
    tps: dict[int, list[float]] = {n: [] for n in counts}
    for r in range(rounds):
        for n in counts if r % 2 == 0 else counts[::-1]:
            torch.set_num_threads(n)
            gen = engine.stream(ids, GenParams(temperature=0, max_new_tokens=128))
            gen.collect()
            tps[n].append(gen.stats.decode_tps)
            print(f"round {r + 1}, {n} thread(s): decode {gen.stats.decode_tps:.1f} tok/s", flush=True)
    medians = {n: statistics.median(v) for n, v in tps.items()}
    base = medians[counts[-1]]
    print(f"{engine.decode_path}, {len(ids)}-token prompt; load average {before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    for n in counts:
        print(f"{n} thread(s): median decode {medians[n]:.1f} tok/s ({medians[n] / base:.2f}x of {counts[-1]} threads)")


def _child(argv: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.speed", *argv], env=env, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr[-3000:])
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description="engine speed benchmark")
    parser.add_argument("--dtypes", default="float32,bfloat16,auto")
    parser.add_argument("--model", default="default")
    parser.add_argument("--against", choices=["llama-cpp"], help="side by side with another engine on the same GGUF")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--decode-threads", help="comma-separated torch thread counts to compare for decoding, e.g. 1,2")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        from bench import against

        print(json.dumps(against.run_side(args.side, Path(args.plan))))
    elif args.child:
        print(json.dumps(_one(args.child, args.model)))
    elif args.decode_threads:
        _decode_threads([int(n) for n in args.decode_threads.split(",")], max(2, args.rounds))
    elif args.against:
        from bench import against

        against.compare(args)
    else:
        _dtype_table(args)


if __name__ == "__main__":
    main()
