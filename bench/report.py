"""From per-user bench results to ``report.json``, ``report.md`` and the plots (matplotlib, Agg)."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any, Sequence

from personalization.suites import KINDS, bootstrap_ci

PLOTS = ("pass_rate.png", "forgetting.png")


def _rate(outcomes: list[bool], seed: int) -> dict[str, Any]:
    n = len(outcomes)
    return {"pass_rate": round(sum(outcomes) / n, 4) if n else None, "ci": bootstrap_ci(outcomes, seed), "n": n}


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 4) if values else None


def build(cfg: Any, suites: list[dict[str, Any]], results: list[dict[str, Any]], cross: dict[str, Any],
          baseline: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    seed = cfg.seed
    variants: dict[str, Any] = {}
    by_suite: dict[str, Any] = {}
    for v in cfg.variants:
        kinds = {}
        for kind in KINDS:
            kinds[kind] = _rate([p["passed"] for r in results for p in r["variants"][v] if p["kind"] == kind], seed)
        overall = _rate([p["passed"] for r in results for p in r["variants"][v]], seed)
        leak_hits = sum(p["forbid_hit"] for r in results for p in r["variants"][v] if p["kind"] == "leak")
        variants[v] = {"kinds": kinds, "overall": overall, "leak_hits": leak_hits}
        for s in suites:
            outs = [p["passed"] for r in results if r["suite"] == s["name"] for p in r["variants"][v]]
            by_suite.setdefault(s["name"], {})[v] = _rate(outs, seed)

    per_user = [{"suite": r["suite"], "user": r["user"], "promoted": r["learn"]["promoted"],
                 "measured": r["forgetting"]["measured"],
                 "guard_ppl_before": r["forgetting"]["before"]["guard_ppl"],
                 "guard_ppl_after": r["forgetting"]["after"]["guard_ppl"],
                 "pack_eval_before": r["forgetting"]["before"]["pack_eval"],
                 "pack_eval_after": r["forgetting"]["after"]["pack_eval"]} for r in results]
    measured = [u for u in per_user if u["measured"]]
    forgetting = {
        "per_user": per_user,
        "users": len(per_user), "promoted": sum(u["promoted"] for u in per_user),
        "guard_ppl_before": _mean([u["guard_ppl_before"] for u in per_user]),
        "guard_ppl_after_mean": _mean([u["guard_ppl_after"] for u in per_user]),
        "guard_ppl_after_mean_promoted": _mean([u["guard_ppl_after"] for u in measured]),
        "pack_eval_before": {p: v.get("eval_pass") for p, v in baseline.get("packs", {}).items()},
        "pack_eval_loss_before": {p: v.get("eval_loss") for p, v in baseline.get("packs", {}).items()},
        "pack_eval_before_mean": _mean([u["pack_eval_before"] for u in per_user]),
        "pack_eval_after_mean": _mean([u["pack_eval_after"] for u in per_user]),
        "pack_eval_after_mean_promoted": _mean([u["pack_eval_after"] for u in measured]),
        "pack_eval_before_mean_promoted": _mean([u["pack_eval_before"] for u in measured]),
        "by_suite": {name: {"promoted": len(rows), "before": _mean([u["pack_eval_before"] for u in rows]),
                            "after": _mean([u["pack_eval_after"] for u in rows])}
                     for name in dict.fromkeys(u["suite"] for u in per_user)
                     for rows in [[u for u in measured if u["suite"] == name]]},
    }
    cross_hits = sum(c.get("hits", 0) for c in cross.values())
    leakage = {"cross_user": {"probes": sum(c.get("probes", 0) for c in cross.values()), "hits": cross_hits,
                              "pairs": [p for c in cross.values() for p in c.get("pairs", [])],
                              "rule": "each user's leak probes through every other user of the suite (their memory + "
                                      "adapter), except users whose own sessions contain the secret"},
               "own_user": {v: variants[v]["leak_hits"] for v in variants}}

    phases: dict[str, float] = {}
    for r in results:
        for k, s in r["phases_s"].items():
            phases[k] = round(phases.get(k, 0.0) + s, 1)
    phases["baseline"] = round(sum(p.get("seconds", 0.0) for p in baseline.get("packs", {}).values()), 1)
    phases["cross_leak"] = round(sum(c.get("seconds", 0.0) for c in cross.values()), 1)
    phases["load"] = run.get("load_s", 0.0)
    tokens = sum(r["decode"]["tokens"] for r in results) + sum(c.get("decode", {}).get("tokens", 0) for c in cross.values())
    seconds = sum(r["decode"]["seconds"] for r in results) + sum(c.get("decode", {}).get("seconds", 0.0) for c in cross.values())
    train = {r["user"]: r["learn"]["train_seconds"] for r in results}
    sizes = {r["user"]: r["learn"]["adapter_bytes"] for r in results}
    cost = {
        "wall_s": run.get("wall_s"), "phases_s": phases,
        "decode_tokens_per_s": round(tokens / seconds, 2) if seconds else None, "decode_tokens": tokens,
        "train_seconds": {"per_user": train, "mean": _mean(list(train.values()))},
        "round_seconds_mean": _mean([r["learn"]["round_seconds"] for r in results]),
        "adapter_bytes": {"per_user": sizes, "mean": _mean([s for s in sizes.values() if s]) or 0},
        "peak_rss_mb": max([run.get("peak_rss_mb") or 0.0] + [r.get("peak_rss_mb", 0.0) for r in results]),
    }
    users = [{"suite": r["suite"], "user": r["user"], "pack": r["pack"], "learn": r["learn"],
              "forgetting": r["forgetting"], "phases_s": r["phases_s"], "variants": r["variants"]} for r in results]
    return {
        "suites": [{"name": s["name"], "pack": s["pack"], "users": sum(r["suite"] == s["name"] for r in results)} for s in suites],
        "config": {"seed": cfg.seed, "quick": cfg.quick, "limit_users": cfg.limit_users, "variants": list(cfg.variants),
                   "max_new_tokens": cfg.max_new_tokens, "replay_tokens": cfg.replay_tokens,
                   "max_steps": cfg.max_steps, "time_budget_s": cfg.time_budget_s,
                   "forgetting": "the gate's sets: guard perplexity on data/guard (24 texts), pack eval pass rate "
                                 "and answer loss on the pack's first 16 eval probes",
                   "model": run.get("model")},
        "variants": variants, "by_suite": by_suite, "forgetting": forgetting, "leakage": leakage, "cost": cost,
        "users": users,
    }


# ------------------------------------------------------------------------------ markdown
def _cell(stats: dict[str, Any]) -> str:
    if not stats or not stats.get("n"):
        return "–"
    lo, hi = stats["ci"]
    return f"{stats['pass_rate']:.0%} [{lo:.0%}–{hi:.0%}] (n={stats['n']})"


def table(report: dict[str, Any]) -> str:
    vs = list(report["variants"])
    lines = ["| kind | " + " | ".join(vs) + " |", "|---|" + "---|" * len(vs)]
    for kind in KINDS:
        lines.append(f"| {kind} | " + " | ".join(_cell(report["variants"][v]["kinds"][kind]) for v in vs) + " |")
    lines.append("| **overall** | " + " | ".join(_cell(report["variants"][v]["overall"]) for v in vs) + " |")
    lines.append("| leak hits (own run) | " + " | ".join(str(report["variants"][v]["leak_hits"]) for v in vs) + " |")
    return "\n".join(lines)


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def markdown(report: dict[str, Any]) -> str:
    c, f, cost, lk = report["config"], report["forgetting"], report["cost"], report["leakage"]["cross_user"]
    suites = ", ".join(f"{s['name']} ({s['pack']}, {s['users']} users)" for s in report["suites"])
    out = ["# Personalization benchmark", "",
           f"Suites: {suites}. Model: {c['model']}. Seed {c['seed']}; learning {c['max_steps']} steps / "
           f"{c['time_budget_s']:.0f} s per user; probe answers {c['max_new_tokens']} tokens, greedy.", "",
           "## Pass rate per probe kind (95% bootstrap CI)", "", table(report), ""]
    if len(report["suites"]) > 1:
        vs = list(report["variants"])
        out += ["Overall per suite:", "", "| suite | " + " | ".join(vs) + " |", "|---|" + "---|" * len(vs)]
        for name, row in report["by_suite"].items():
            out.append(f"| {name} | " + " | ".join(_cell(row[v]) for v in vs) + " |")
        out.append("")
    out += ["## Forgetting", "",
            f"Adapters promoted by the gate: {f['promoted']}/{f['users']} users (a rejected adapter leaves the model "
            "unchanged, so its after = before).", "",
            "| mean over | all users: before (base) | all users: after | promoted only: before | promoted only: after |",
            "|---|---|---|---|---|",
            f"| guard-set perplexity | {_f(f['guard_ppl_before'], '{:.2f}')} | {_f(f['guard_ppl_after_mean'], '{:.2f}')} | "
            f"{_f(f['guard_ppl_before'], '{:.2f}')} | {_f(f['guard_ppl_after_mean_promoted'], '{:.2f}')} |",
            f"| pack eval pass rate | {_f(f['pack_eval_before_mean'], '{:.0%}')} | {_f(f['pack_eval_after_mean'], '{:.0%}')} | "
            f"{_f(f['pack_eval_before_mean_promoted'], '{:.0%}')} | {_f(f['pack_eval_after_mean_promoted'], '{:.0%}')} |",
            "", "Pack eval pass rate per suite (mean before -> after, promoted users): " + ", ".join(
                f"{name} {_f(v['before'], '{:.0%}')} -> {_f(v['after'], '{:.0%}')} ({v['promoted']} promoted)"
                for name, v in f.get("by_suite", {}).items()) + ".", "",
            "## Leakage", "",
            f"Cross-user: {lk['hits']} hit(s) in {lk['probes']} leak probe(s) ({lk['rule']}). "
            f"Own-run leak hits per variant: " + ", ".join(f"{v} {n}" for v, n in report["leakage"]["own_user"].items()) + ".",
            "", "## Cost", "",
            f"Wall time {cost['wall_s']:.0f} s this invocation; peak RSS {cost['peak_rss_mb']:.0f} MB; decode "
            f"{_f(cost['decode_tokens_per_s'], '{:.1f}')} tokens/s; training {_f(cost['train_seconds']['mean'], '{:.1f}')} s "
            f"per user (mean; whole round {_f(cost['round_seconds_mean'], '{:.1f}')} s); adapter "
            f"{(cost['adapter_bytes']['mean'] or 0) / 1e6:.2f} MB.", "",
            "| phase | seconds |", "|---|---|"]
    out += [f"| {k} | {v:.1f} |" for k, v in cost["phases_s"].items()]
    out += ["", "![pass rate](pass_rate.png)", "", "![forgetting](forgetting.png)", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------ plots
def plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    vs = list(report["variants"])
    fig, ax = plt.subplots(figsize=(10, 4.5))
    labels = list(KINDS) + ["overall"]
    width = 0.8 / max(len(vs), 1)
    for i, v in enumerate(vs):
        stats = [report["variants"][v]["kinds"][k] for k in KINDS] + [report["variants"][v]["overall"]]
        ys = [s["pass_rate"] or 0.0 for s in stats]
        lo = [max(0.0, y - (s["ci"][0] if s["ci"] else y)) for y, s in zip(ys, stats, strict=False)]
        hi = [max(0.0, (s["ci"][1] if s["ci"] else y) - y) for y, s in zip(ys, stats, strict=False)]
        xs = [j + (i - (len(vs) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=v)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pass rate (95% CI)")
    ax.set_title("Probe pass rate per kind and variant")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / PLOTS[0])
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    per = report["forgetting"]["per_user"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    names = [u["user"] for u in per]
    user_xs = range(len(per))
    for ax, key, title in ((a1, "guard_ppl", "guard-set perplexity"), (a2, "pack_eval", "pack eval pass rate")):
        ax.bar([x - 0.2 for x in user_xs], [u[f"{key}_before"] or 0 for u in per], 0.4, label="before (base)")
        ax.bar([x + 0.2 for x in user_xs], [u[f"{key}_after"] or 0 for u in per], 0.4, label="after (user's adapter)")
        ax.set_xticks(list(user_xs), names, rotation=60, fontsize=7)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle("Forgetting: before vs after each user's learning")
    fig.tight_layout()
    written.append(out / PLOTS[1])
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return written


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / "report.json")
    (out / "report.md").write_text(markdown(report))
    plots(report, out)
