"""Engine speed benchmark: prints numbers, asserts nothing.

    python -m assistant.bench_speed [--dtypes float32,bfloat16,auto] [--model default]

For each dtype setting (in its own process, so peak RSS is its own): first-start conversion time
(once, into a scratch data directory), warm load time, time to first token and decode tokens/s
for a 64- and a 256-token reply, time to first token of the first and fifth turn of a
conversation (KV cache reuse), and peak RSS.
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

PROMPT = (
    "I'm planning meals for a family of four this week. We like Italian and Indian food, one of the "
    "children will not eat mushrooms, and we want to spend less than sixty euros. "
) * 6 + "Write a detailed plan for Monday."
TURNS = ["Hello! Can you help me cook this week?", "We are four people.", "One child hates mushrooms.",
         "Our budget is sixty euros.", "What should we eat on Monday?"]


def _one(dtype: str, model: str) -> dict:
    from assistant import model_store
    from assistant import settings as settings_mod
    from assistant.engine import Engine, GenParams, KVSession, set_threads

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
    msgs = [{"role": "system", "content": "You are a helpful cooking assistant."}, {"role": "user", "content": PROMPT}]
    ids = engine.render(msgs)
    out["prompt_tokens"] = len(ids)
    engine.stream(ids[:32], GenParams(temperature=0, max_new_tokens=4)).collect()  # warm-up
    for n in (64, 256):
        engine.clear_shared_prefix()  # a cold prompt: time the whole prefill
        gen = engine.stream(ids, GenParams(temperature=0, max_new_tokens=n))
        gen.collect()
        out[f"reply{n}"] = {"ttft_s": round(gen.stats.ttft_s, 3), "decode_tok_s": round(gen.stats.decode_tps, 1),
                            "tokens": gen.stats.completion_tokens}
    engine.eos_ids = eos
    engine.clear_shared_prefix()
    session = KVSession()
    history: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful cooking assistant."}]
    ttfts = []
    for turn in TURNS:
        history.append({"role": "user", "content": turn})
        gen = engine.stream(engine.render(history), GenParams(temperature=0, max_new_tokens=48), session=session)
        history.append({"role": "assistant", "content": gen.collect()})
        ttfts.append({"ttft_s": round(gen.stats.ttft_s, 3), "prompt": gen.stats.prompt_tokens, "cached": gen.stats.cached_tokens})
    out["turn1"], out["turn5"] = ttfts[0], ttfts[4]
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="engine speed benchmark")
    parser.add_argument("--dtypes", default="float32,bfloat16,auto")
    parser.add_argument("--model", default="default")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one(args.child, args.model)))
        return
    from assistant import model_store

    if args.model == "default":
        with tempfile.TemporaryDirectory() as scratch:
            os.environ["ASSISTANT_HOME"] = scratch
            t = time.perf_counter()
            model_store.resolve("default")
            print(f"first-start conversion (GGUF -> safetensors): {time.perf_counter() - t:.1f} s")
            env = dict(os.environ)
            rows = []
            for dtype in args.dtypes.split(","):
                proc = subprocess.run([sys.executable, "-m", "assistant.bench_speed", "--child", dtype, "--model", args.model],
                                      env=env, capture_output=True, text=True)
                if proc.returncode:
                    print(proc.stderr[-2000:])
                    raise SystemExit(proc.returncode)
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'setting':10} {'phases':18} {'load':>6} {'ttft64':>7} {'tok/s64':>8} {'ttft256':>8} {'tok/s256':>9} "
          f"{'ttft t1':>8} {'ttft t5':>8} {'t5 cached':>10} {'RSS MB':>7}")
    for r in rows:
        print(f"{r['dtype']:10} {r['prefill_dtype'][:4] + '/' + r['decode_dtype'][:4]:18} {r['warm_load_s']:6.2f} "
              f"{r['reply64']['ttft_s']:7.3f} {r['reply64']['decode_tok_s']:8.1f} {r['reply256']['ttft_s']:8.3f} "
              f"{r['reply256']['decode_tok_s']:9.1f} {r['turn1']['ttft_s']:8.3f} {r['turn5']['ttft_s']:8.3f} "
              f"{str(r['turn5']['cached']) + '/' + str(r['turn5']['prompt']):>10} {r['peak_rss_mb']:7d}")
    print(f"(prompt for the reply rows: {rows[0]['prompt_tokens']} tokens)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
