"""Memory benchmark: recall latency p50/p95 at 1k, 10k and 100k memories, and insert throughput.

    python -m bench.recall [--sizes 1000,10000,100000] [--queries 50]

Insert throughput is measured end to end (real embedder + chromadb) on the first 1,000
memories. To reach 100k in minutes, the remaining memories are inserted with vectors computed by
the real embedder for a pool of 2,000 distinct sentences, each reused with small noise (chromadb
and its HNSW index do the same work as for fresh text). Recall latency is the full
`MemoryStore.recall` path: embedding the query, the filtered vector search, ranking, budget.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

SUBJECTS = ["my sister", "my dog", "my landlord", "my doctor", "my job", "my car", "my garden", "my flat",
            "my diet", "my budget", "my bike", "my cat", "my son", "my daughter", "my commute", "my knee"]
FACTS = ["is called {}", "needs attention on {}s", "costs {} euros", "was fixed on day {}", "changed in year {}",
         "prefers option {}", "is {} km away", "started in month {}"]


def sentence(i: int) -> str:
    return f"{SUBJECTS[i % len(SUBJECTS)].capitalize()} {FACTS[(i // 16) % len(FACTS)].format(i)}."


def main() -> None:
    parser = argparse.ArgumentParser(description="memory recall benchmark")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as home:
        os.environ["ASSISTANT_HOME"] = home
        import numpy as np

        from assistant.settings import MemorySettings
        from memory.store import MemoryStore
        from memory.types import Memory

        store = MemoryStore("bench", MemorySettings())
        rng = random.Random(0)
        # Insert throughput, end to end.
        batch = [sentence(i) for i in range(1000)]
        t = time.perf_counter()
        now = time.time()
        mems = [Memory(id=f"b{i}", text=s, kind="fact", user="bench", created=now, updated=now) for i, s in enumerate(batch)]
        store.col.add(mems)
        insert_rate = len(mems) / (time.perf_counter() - t)
        print(f"insert throughput (embed + store, batches of 1000): {insert_rate:.0f} memories/s")
        pool_text = [sentence(i) for i in range(1000, 3000)]
        pool_vec = np.array(store.embedder.embed(pool_text), dtype=np.float32)
        count = 1000
        queries = ["What is my sister called?", "How far away is my commute?", "What does my car cost?",
                   "When was my bike fixed?", "What is my diet?"]
        for size in sizes:
            while count < size:
                n = min(5000, size - count)
                idx = np.array([rng.randrange(len(pool_text)) for _ in range(n)])
                vec = pool_vec[idx] + np.random.default_rng(count).normal(0, 0.02, (n, pool_vec.shape[1])).astype(np.float32)
                vec /= np.linalg.norm(vec, axis=1, keepdims=True)
                part = [Memory(id=f"b{count + j}", text=pool_text[k] + f" (#{count + j})", kind="fact", user="bench",
                               created=now, updated=now) for j, k in enumerate(idx)]
                store.col.add(part, embeddings=vec.tolist())
                count += n
            store.recall(queries[0])  # warm-up
            lat = []
            for q in range(args.queries):
                t = time.perf_counter()
                store.recall(queries[q % len(queries)])
                lat.append((time.perf_counter() - t) * 1000)
            lat.sort()
            p95 = lat[int(0.95 * (len(lat) - 1))]
            print(f"{size:>7} memories: recall p50 {statistics.median(lat):6.1f} ms   p95 {p95:6.1f} ms")
        store.close()


if __name__ == "__main__":
    main()
