"""`assistant bench` (registration imports nothing heavy)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from assistant.errors import AssistantError


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from bench import report as bench_report
        from bench import users as bench
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", "bench.users", "bench.report"):
            raise
        raise AssistantError("the benchmark runs from a checkout of the repository (bench/ is not installed "
                             "with the package): run `./run.sh bench ...` there") from None

    cfg = bench.BenchConfig(
        out=Path(args.out), variants=bench.parse_variants(args.variants), seed=args.seed,
        limit_users=args.limit_users, quick=args.quick,
        max_new_tokens=args.max_tokens if args.max_tokens is not None else (32 if args.quick else 48),
        replay_tokens=16 if args.quick else 32,
        max_steps=args.steps if args.steps is not None else (8 if args.quick else 30),
        time_budget_s=args.time_budget if args.time_budget is not None else (10.0 if args.quick else 120.0),
    )
    if args.limit_users is not None and args.limit_users < 1:
        raise bench.BenchError("--limit-users: must be 1 or more")
    report = bench.run_bench(args.suites, cfg, progress=not args.no_progress, report_only=args.report_only)
    print(bench_report.table(report))
    cost = report["cost"]
    print(f"\nwall time {cost['wall_s']:.0f} s; reports in {cfg.out}/report.md, report.json, "
          f"{', '.join(bench_report.PLOTS)}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="replay scripted users and compare base / memory / adapter / memory+adapter",
        description="Replay the scripted users of each SUITE.json through the assistant, run one learning "
                    "round per user, ask the probes under each variant and write report.md, report.json and "
                    "plots into --out. A rerun with the same --out skips users already done.",
    )
    p.add_argument("suites", nargs="+", metavar="SUITE.json")
    p.add_argument("--out", required=True, help="output folder (also holds the scratch data and partial results)")
    p.add_argument("--limit-users", type=int, default=None, metavar="N", help="only the first N users of each suite")
    p.add_argument("--variants", default=",".join(("base", "memory", "adapter", "memory+adapter")),
                   help="comma-separated subset of base,memory,adapter,memory+adapter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="3 users per suite, 8 learning steps / 10 s, 32-token probe answers, 16-token replies in replay")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per probe answer (default 48; --quick 32)")
    p.add_argument("--steps", type=int, default=None, help="learning steps per user (default 30; --quick 8)")
    p.add_argument("--time-budget", type=float, default=None, help="a learning round's seconds per user (default 120; --quick 10)")
    p.add_argument("--report-only", action="store_true",
                   help="write the reports from the users already finished in --out; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=cmd_bench)
