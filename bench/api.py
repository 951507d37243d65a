"""Local API benchmark: prints numbers, asserts nothing.

    python -m bench.api [--model default] [--max-tokens 16] [--plan 1:16,4:16,16:32]

Starts the real server (uvicorn, a free 127.0.0.1 port) around the real model, loaded with
``Engine.load`` in a scratch data directory (``ASSISTANT_HOME`` is a temp dir, so the default
model is converted there first), then sends short chat completions at each concurrency level and
prints requests/s and p50/p95 latency. The key has only the ``chat`` scope, so memory recall is
off: this measures the API and the model, not the embedder. Generation is serial (one engine), so
higher concurrency mostly adds queueing.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

QUESTIONS = [
    "What is the capital of France?", "Name a primary colour.", "How many legs does a spider have?",
    "Give me a synonym for happy.", "What is 7 times 6?", "Suggest a name for a cat.",
    "What do bees make?", "Which planet is called the red planet?",
]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--plan", default="1:16,4:16,16:32", help="concurrency:requests pairs")
    args = ap.parse_args(argv)
    plan = [tuple(int(x) for x in item.split(":")) for item in args.plan.split(",")]

    with tempfile.TemporaryDirectory(prefix="assistant-bench-api-") as tmp:
        os.environ["ASSISTANT_HOME"] = tmp
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import httpx
        import uvicorn

        from api import keys as api_keys
        from api import make_app
        from assistant import settings as settings_mod
        from assistant.core import Assistant
        from assistant.engine import Engine

        settings = settings_mod.load(overrides={"model.name": args.model})
        t0 = time.perf_counter()
        engine = Engine.load(settings, lambda m: print(f"[{m}]", flush=True))
        print(f"model {engine.name}: ready in {time.perf_counter() - t0:.1f} s "
              f"(prefill {engine.prefill_dtype}, decode {engine.decode_dtype})", flush=True)
        key = api_keys.create("bench", "chat", users="*")
        app = make_app(Assistant(settings, engine=engine))

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                print("the server did not start")
                return 1
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {key}"}
        errors: list[str] = []
        tokens: list[int] = []

        def one(i: int) -> float:
            body = {"model": "general", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                    "max_tokens": args.max_tokens, "temperature": 0}
            t = time.perf_counter()
            r = httpx.post(url, json=body, headers=headers, timeout=600)
            dt = time.perf_counter() - t
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")
            else:
                tokens.append(r.json()["usage"]["completion_tokens"])
            return dt

        try:
            one(0)  # warm-up
            print(f"\nshort completions (max_tokens {args.max_tokens}, greedy, pack general), "
                  f"server on 127.0.0.1:{port}, {os.cpu_count()} CPUs")
            print(f"{'concurrency':>11} {'requests':>8} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'tok/req':>7}")
            for conc, total in plan:
                tokens.clear()
                t = time.perf_counter()
                with ThreadPoolExecutor(conc) as pool:
                    lat = list(pool.map(one, range(total)))
                wall = time.perf_counter() - t
                mean_tok = statistics.mean(tokens) if tokens else 0.0
                print(f"{conc:>11} {total:>8} {total / wall:>7.2f} {_percentile(lat, 0.5):>7.3f} "
                      f"{_percentile(lat, 0.95):>7.3f} {mean_tok:>7.1f}", flush=True)
            if errors:
                print(f"{len(errors)} failed requests, first: {errors[0]}")
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
