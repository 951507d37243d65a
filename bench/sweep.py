"""A small sweep of LoRA rank and learning rate on the real model: prints a table, asserts nothing.

    python -m bench.sweep [--configs 8:5e-4,8:1e-3,16:5e-4,4:2e-3] [--steps 40] [--pack chef]

One scenario for every config: six corrections teach a fact (memory off) and the round's dataset
is built as a learning round builds it (pairs, probes, replay). Each config trains from the base
model for the same steps; printed per config: training seconds, the held-out probes' answer loss,
the pack eval answer loss and guard perplexity (relative to the base model) and how many of 3
untrained phrasings the adapter answers with the fact (greedy, 24 tokens).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from types import SimpleNamespace

from bench.learning import NEW_PHRASINGS, PHRASINGS

TAUGHT = "Your cat is called Biscuit."


def _turns(n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=f"t{i}", message=q, prompt=[{"role": "user", "content": q}], reply="I don't know.",
                            correction=TAUGHT, rating=None) for i, q in enumerate(PHRASINGS[:n])]


def main() -> None:
    parser = argparse.ArgumentParser(description="LoRA rank / learning-rate sweep")
    parser.add_argument("--configs", default="8:5e-4,8:1e-3,16:1e-3,4:2e-3", help="rank:lr,rank:lr,...")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--pack", default="chef")
    args = parser.parse_args()
    from bench.common import scratch_assistant

    with scratch_assistant() as assistant:
        from personalization import dataset, gate, trainer

        engine = assistant.engine
        pack = assistant.pack(args.pack)
        system = pack.system_prompt()
        learner = assistant.learner
        data = dataset.build(_turns(6), [], pack.train_examples(), system, replay_ratio=learner.settings.replay_ratio)
        evals, guard, _ = learner._gate_sets(pack)
        asks = [dataset.Example([{"role": "system", "content": system}, {"role": "user", "content": q}], TAUGHT, "probe")
                for q in NEW_PHRASINGS]
        base = learner._base_model(engine)
        tok, render = engine.tokenizer, engine.render
        b_eval = gate.answer_loss(base, tok, render, evals)
        b_guard = gate.perplexity(base, tok, guard)
        b_held = gate.answer_loss(base, tok, render, data.heldout)
        print(f"scenario: {len(data.train)} examples, {len(data.pairs)} pairs, {len(data.replay)} replay, "
              f"{len(data.heldout)} probes; base: held-out loss {b_held:.3f}, eval loss {b_eval:.3f}, guard ppl {b_guard:.2f}")
        print("| rank | lr | steps | train s | held-out loss | pack eval loss | guard ppl | recall (of 3) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for spec in args.configs.split(","):
            rank, lr = spec.split(":")
            s = copy.copy(learner.settings)
            s.rank, s.alpha, s.learning_rate = int(rank), 2 * int(rank), float(lr)
            s.max_steps, s.target_loss, s.time_budget_s = args.steps, 0.0, 1e9
            model = trainer.create(copy.deepcopy(base), s)
            t0 = time.perf_counter()
            result = trainer.train(model, tok, render, data.train + data.pairs + data.replay, s)
            seconds = time.perf_counter() - t0
            with gate.merged(model):
                held = gate.answer_loss(model, tok, render, data.heldout)
                ev = gate.answer_loss(model, tok, render, evals)
                ppl = gate.perplexity(model, tok, guard)
                answers = gate.greedy_answers(model, tok, render, asks, engine.eos_ids, 24)
            hits = sum("Biscuit" in a for a in answers)
            print(f"| {rank} | {lr} | {result.steps} | {seconds:.0f} | {held:.3f} | {ev:.3f} ({ev / b_eval - 1:+.1%}) | "
                  f"{ppl:.2f} ({ppl / b_guard - 1:+.1%}) | {hits} |", flush=True)
        print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
