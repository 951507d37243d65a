"""Learning benchmark: prints numbers, asserts nothing.

    python -m bench.learning [--corrections 8] [--pack chef]

In a scratch data directory (reusing the converted default model when there is one), a user
corrects the same fact in N phrasings with memory off, then one learning round runs. Printed:
training tokens/s, steps and why training stopped, time from the last correction to the
promoted adapter (goal: <= 60 s), the gate's table (pack eval before/after, guard perplexity
drift), how many of 3 untrained phrasings the adapter alone (memory off) answers with the fact,
adapter size on disk and peak RSS during the round.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

NEW_PHRASINGS = ["What is the name of my cat?", "How is my cat named?", "Can you tell me what my cat is called?"]
PHRASINGS = ["What is my cat's name?", "What's my cat called?", "Do you know what my cat is called?",
             "Remind me of my cat's name.", "What name did I give my cat?", "Tell me my cat's name.",
             "What do I call my cat?", "My cat's name is what?"]


def main() -> None:
    parser = argparse.ArgumentParser(description="learning benchmark")
    parser.add_argument("--corrections", type=int, default=6)
    parser.add_argument("--pack", default="chef")
    args = parser.parse_args()
    from bench.common import scratch_assistant

    with scratch_assistant() as assistant:
        from assistant.adapters import AdapterStore

        _ = assistant.engine
        # The base model's gate numbers (pack eval, guard set) do not depend on the user: measured
        # once per model and pack and kept on disk, so only a user's very first round pays them.
        t_base = time.perf_counter()
        assistant.learner.base_general(args.pack)
        base_s = time.perf_counter() - t_base
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for q in (PHRASINGS * 4)[: args.corrections]:
            chat = assistant.chat("bench", args.pack, use_memory=False)
            chat.send(q, temperature=0, max_new_tokens=8).collect()
            chat.correct("Your cat is called Biscuit.")
        t_correction = time.perf_counter()
        result = assistant.learner.run_round("bench", args.pack)
        to_promotion = time.perf_counter() - t_correction
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(result.table())
        print(f"training: {result.train_tokens / max(result.train_seconds, 1e-9):.0f} tokens/s, {result.steps} steps "
              f"({result.stopped}), {result.train_seconds:.1f} s")
        if result.promoted:
            folder = AdapterStore("bench", args.pack).path(result.version)
            size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
            print(f"time from the last correction to the promoted adapter: {to_promotion:.1f} s "
                  f"(the base model's gate numbers, measured before: {base_s:.1f} s, once per model and pack)")
            print(f"adapter size on disk: {size:.2f} MB ({folder.name})")
            recalled = [assistant.chat("bench", args.pack, use_memory=False).send(q, temperature=0, max_new_tokens=24)
                        .collect() for q in NEW_PHRASINGS]
            hits = sum("Biscuit" in a for a in recalled)
            print(f"adapter alone (memory off) recalls the fact in {hits}/{len(NEW_PHRASINGS)} untrained phrasings")
        else:
            print(f"not promoted; the round took {to_promotion:.1f} s")
        d = result.decision
        if d is not None:
            drift = d.candidate.guard_ppl / d.live.guard_ppl - 1
            print(f"pack eval pass rate {d.live.eval_pass:.0%} -> {d.candidate.eval_pass:.0%}, "
                  f"eval loss {d.live.eval_loss:.3f} -> {d.candidate.eval_loss:.3f}, guard perplexity drift {drift:+.2%}")
        print(f"load average: {os.getloadavg()[0]:.1f}")
        print(f"peak RSS: {rss_after:.0f} MB (before the round: {rss_before:.0f} MB)")


if __name__ == "__main__":
    main()
