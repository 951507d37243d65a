"""`assistant bench`: replay scripted users through the real assistant and probe what it learned.

For every user of every suite (see ``data/bench/README.md`` and ``docs/bench.md``):

    replay the sessions (memory on, scripted replies, ratings, corrections)
    -> one learning round (short: ``max_steps``/``time_budget_s`` overridden for the bench)
    -> the probes, each in a fresh conversation, under each variant:
       base (no memory, no adapter), memory, adapter, memory+adapter
    -> forgetting: the gate's guard-set perplexity and pack eval scores, base vs. the user's adapter

then, per suite, every user's leak probes against every other user's memory + adapter (cross-user
leakage). Each user's result is written to ``DIR/users/`` as soon as it is complete, so an
interrupted run picks up where it stopped. ``bench_report`` turns the results into
``report.json``, ``report.md`` and the plots.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from personalization.suites import (
    FLAGS,
    QUICK_USERS,
    VARIANTS,
    BenchError,
    load_suites,
    score_probe,
    secret_owner,
)


# ------------------------------------------------------------------------------ running
@dataclass
class BenchConfig:
    out: Path
    variants: tuple[str, ...] = VARIANTS
    seed: int = 0
    limit_users: int | None = None
    quick: bool = False
    max_new_tokens: int = 48  # probe answers
    replay_tokens: int = 32  # unscripted replay turns (journalled, never scored)
    max_steps: int = 30
    time_budget_s: float = 120.0  # a round: 60% training (30 steps fit on a quiet machine), the rest the gate

    def key(self) -> dict[str, Any]:
        """What a saved per-user result must match to be reused by a resumed run."""
        return {"seed": self.seed, "max_new_tokens": self.max_new_tokens, "replay_tokens": self.replay_tokens,
                "max_steps": self.max_steps, "time_budget_s": self.time_budget_s, "forgetting": "gate"}


def parse_variants(text: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in chosen if v not in VARIANTS]
    if bad or not chosen:
        raise BenchError(f"--variants: unknown variant(s) {', '.join(bad) or '(none)'} (known: {', '.join(VARIANTS)})")
    return tuple(v for v in VARIANTS if v in chosen)


def prepare_home(out: Path) -> Path:
    """Point ASSISTANT_HOME at ``out/home``, reusing the converted models of the current home."""
    from assistant import paths

    models = paths.models_dir()
    home = (out / "home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    link = home / "models"
    if models.is_dir() and not link.exists() and models.resolve() != link.resolve():
        link.symlink_to(models.resolve(), target_is_directory=True)
    os.environ["ASSISTANT_HOME"] = str(home)
    return home


def _num(x: Any) -> float | None:
    """A score for JSON: None where it was not measurable (NaN)."""
    return None if x is None or x != x else round(float(x), 4)


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class ProgressBar:
    """One plain stderr line, rewritten in place: users done, current step, elapsed, ETA."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total, self.done, self.t0 = max(total, 1), 0, time.perf_counter()
        self.stream = stream or sys.stderr
        self.fresh = 0  # users run (not resumed) in this process, for the ETA

    def show(self, label: str) -> None:
        elapsed = time.perf_counter() - self.t0
        width = 24
        filled = int(width * self.done / self.total)
        eta = ""
        if self.fresh:
            eta = f" eta {_fmt_s(elapsed / self.fresh * (self.total - self.done))}"
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} users {_fmt_s(elapsed)}{eta}  {label}"
        self.stream.write(line[:160].ljust(100))
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _fmt_s(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s"


class Runner:
    def __init__(self, assistant: Any, cfg: BenchConfig, bar: ProgressBar | None = None) -> None:
        self.a = assistant
        self.cfg = cfg
        self.bar = bar
        learning = assistant.settings.learning
        learning.max_steps, learning.time_budget_s, learning.seed = cfg.max_steps, cfg.time_budget_s, cfg.seed
        assistant.settings.memory.enabled = True
        self.users_dir = cfg.out / "users"
        self.load_s = 0.0

    def _say(self, label: str) -> None:
        if self.bar:
            self.bar.show(label)

    def _seed(self) -> None:
        import torch

        random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)

    # -------------------------------------------------------------- the whole run
    def run(self, suites: list[tuple[str, dict[str, Any]]]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        for path, data in suites:
            try:
                self.a.pack(data["pack"])
            except Exception as exc:
                raise BenchError(f"{path}: pack: unknown pack {data['pack']!r} ({exc})") from None
        t0 = time.perf_counter()
        self._say("loading the model")
        _ = self.a.engine
        self.load_s = time.perf_counter() - t0
        baseline = self._baseline(suites)
        results, cross = [], {}
        for _path, data in suites:
            users = self.selected(data)
            for user in users:
                results.append(self._user(data, user, baseline))
            cross[data["name"]] = self._cross_leak(data, users)
        return results, cross, baseline

    def selected(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        n = self.cfg.limit_users
        if self.cfg.quick:
            n = min(n, QUICK_USERS) if n else QUICK_USERS
        return data["users"][:n] if n else list(data["users"])

    def _baseline(self, suites: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """The base model's guard perplexity and pack eval scores, measured as the gate measures
        them (before any user's learning; every user starts from the base model)."""
        path = self.cfg.out / "baseline.json"
        saved = _read_json(path) or {}
        if saved.get("key") != self.cfg.key():
            saved = {"key": self.cfg.key(), "packs": {}}
        for pack in dict.fromkeys(data["pack"] for _, data in suites):
            fresh = pack not in saved["packs"]
            if fresh:
                self._say(f"base model: {pack} eval and guard set")
            t0 = time.perf_counter()
            scores = self.a.learner.base_general(pack)  # also fills the learner's cache for the gate
            if fresh:
                saved["packs"][pack] = dict({k: _num(v) for k, v in scores.items()}, seconds=round(time.perf_counter() - t0, 2))
        _write_json(path, saved)
        return saved

    # -------------------------------------------------------------- one user
    def user_file(self, suite: str, uid: str) -> Path:
        return self.users_dir / f"{suite}__{uid}.json"

    def done(self, suite: str, uid: str) -> dict[str, Any] | None:
        saved = _read_json(self.user_file(suite, uid))
        if not saved or saved.get("key") != self.cfg.key() or not set(self.cfg.variants) <= set(saved.get("variants", {})):
            return None
        return saved

    def _user(self, data: dict[str, Any], user: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
        from assistant import paths
        from assistant.adapters import live_for

        suite, pack, uid = data["name"], data["pack"], user["id"]
        saved = self.done(suite, uid)
        if saved is not None:
            if self.bar:
                self.bar.done += 1
                self._say(f"{uid}: done earlier, skipped")
            return saved
        self._seed()
        self.a.forget_user_handles(uid)  # a half-run user from an interrupted run starts over
        shutil.rmtree(paths.user_dir(uid), ignore_errors=True)
        phases: dict[str, float] = {}
        t = time.perf_counter()
        self._replay(uid, pack, user)
        phases["replay"] = time.perf_counter() - t
        t = time.perf_counter()
        learn = self._learn(uid, pack)
        phases["learn"] = time.perf_counter() - t
        variants: dict[str, list[dict[str, Any]]] = {}
        decode = {"tokens": 0, "seconds": 0.0}
        has_adapter = live_for(uid, pack, self.a.engine.model, shipped=self.a.pack(pack).adapter_dir()) is not None
        for v in self.cfg.variants:
            t = time.perf_counter()
            same = {"adapter": "base", "memory+adapter": "memory"}.get(v)
            if not has_adapter and same in variants:
                # No adapter went live: same prompt, same weights, greedy -> the same answers.
                variants[v] = [dict(p, reused_from=same) for p in variants[same]]
            else:
                variants[v] = [self._probe(uid, pack, probe, v, decode, user_label=f"{uid}: {v}")
                               for probe in user["probes"]]
            phases[f"probe:{v}"] = time.perf_counter() - t
        forgetting = self._forgetting(pack, learn, baseline)
        self.a.engine.set_adapter(None, None)
        result = {"key": self.cfg.key(), "suite": suite, "pack": pack, "user": uid, "learn": learn,
                  "forgetting": forgetting, "variants": variants, "decode": decode,
                  "phases_s": {k: round(v, 2) for k, v in phases.items()}, "peak_rss_mb": peak_rss_mb()}
        _write_json(self.user_file(suite, uid), result)
        if self.bar:
            self.bar.done += 1
            self.bar.fresh += 1
        return result

    def _replay(self, uid: str, pack: str, user: dict[str, Any]) -> None:
        n = len(user["sessions"])
        for s, session in enumerate(user["sessions"], 1):
            self._say(f"{uid}: replaying session {s}/{n}")
            chat = self.a.chat(uid, pack, use_memory=True, use_adapter=False, source="bench")
            for turn in session:
                scripted = turn.get("assistant")
                chat.send(turn["user"], scripted_reply=scripted, temperature=0, seed=self.cfg.seed,
                          max_new_tokens=self.cfg.replay_tokens).collect()
                if "rating" in turn:
                    chat.rate(int(turn["rating"]))
                if "correction" in turn:
                    chat.correct(turn["correction"])

    def _learn(self, uid: str, pack: str) -> dict[str, Any]:
        from assistant.adapters import AdapterStore

        def progress(p: Any) -> None:
            self._say(f"{uid}: learning step {p.step}/{p.total_steps} loss {p.loss:.3f}")

        self._say(f"{uid}: learning")
        r = self.a.learner.run_round(uid, pack, on_progress=progress)
        size = 0
        if r.version:
            size = sum(f.stat().st_size for f in AdapterStore(uid, pack).path(r.version).rglob("*") if f.is_file())
        return {"promoted": r.promoted, "version": r.version, "live": r.live, "examples": r.examples,
                "steps": r.steps, "train_seconds": round(r.train_seconds, 2), "train_tokens": r.train_tokens,
                "round_seconds": round(r.seconds, 2), "adapter_bytes": size,
                "reason": r.decision.reason if r.decision else r.message,
                "gate": r.decision.to_json() if r.decision else None}

    def _probe(self, uid: str, pack: str, probe: dict[str, Any], variant: str, decode: dict[str, Any],
               user_label: str = "", chat_user: str | None = None) -> dict[str, Any]:
        from assistant.core import Reply
        from assistant.prompt import user_block

        use_memory, use_adapter = FLAGS[variant]
        self._say(f"{user_label} {probe['id']}")
        chat = self.a.chat(chat_user or uid, pack, use_memory=use_memory, use_adapter=use_adapter, source="bench")
        reply = chat.send(probe["ask"], temperature=0, max_new_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed)
        answer = reply.collect()
        decode["tokens"] += max(0, reply.stats.completion_tokens - 1)
        decode["seconds"] += reply.stats.decode_s
        margin = None
        if "prefer" in probe:
            engine = self.a.engine
            chat._select_adapter(engine, Reply(iter(())))  # the variant's adapter (or none) is merged
            # Scored under the prompt the answer was generated from (a fixed answer had none).
            messages = reply.prompt or [{"role": "system", "content": chat.pack.system_prompt()},
                                        {"role": "user", "content": user_block(probe["ask"], reply.memories)}]
            lp_p, n_p = engine.score(messages, probe["prefer"])
            lp_o, n_o = engine.score(messages, probe["over"])
            margin = lp_p / max(n_p, 1) - lp_o / max(n_o, 1)
        scored = score_probe(probe, answer, margin)
        return {"id": probe["id"], "kind": probe["kind"], "answer": answer, "adapter": reply.adapter,
                "memories": len(reply.memories), "margin": None if margin is None else round(margin, 4), **scored}

    def _forgetting(self, pack: str, learn: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
        """Before: the base model. After: the user's adapter as the gate scored it when it was
        promoted (the same eval and guard sets); a rejected candidate leaves the model unchanged."""
        base = baseline["packs"][pack]
        before = {"guard_ppl": _num(base["guard_ppl"]), "pack_eval": _num(base["eval_pass"]),
                  "pack_eval_loss": _num(base["eval_loss"])}
        out = {"before": before, "after": dict(before), "measured": False}
        gate = learn.get("gate")
        if learn.get("promoted") and gate:
            cand = gate["candidate"]
            out["after"] = {"guard_ppl": _num(cand["guard_ppl"]), "pack_eval": _num(cand["eval_pass"]),
                            "pack_eval_loss": _num(cand["eval_loss"])}
            out["measured"] = True
        return out

    # -------------------------------------------------------------- cross-user leakage
    def _cross_leak(self, data: dict[str, Any], users: list[dict[str, Any]]) -> dict[str, Any]:
        """Each user's leak probes through every other user's memory + adapter, except users whose
        own sessions contain the secret (it is theirs to know). A forbidden string in the answer
        is a hit."""
        path = self.cfg.out / "cross" / f"{data['name']}.json"
        ids = [u["id"] for u in users]
        saved = _read_json(path)
        if saved and saved.get("key") == self.cfg.key() and saved.get("users") == ids and saved.get("rule") == "all-others":
            return saved
        t0 = time.perf_counter()
        pairs, hits, n = [], 0, 0
        decode = {"tokens": 0, "seconds": 0.0}
        if len(users) > 1:
            for i, user in enumerate(users):
                for probe in (p for p in user["probes"] if p["kind"] == "leak"):
                    forbid = probe.get("forbid", [])
                    targets = [users[(i + k) % len(users)] for k in range(1, len(users))]
                    for target in (t for t in targets if not secret_owner(t, forbid)):
                        r = self._probe(user["id"], data["pack"], probe, "memory+adapter", decode,
                                        user_label=f"cross-leak {user['id']}->{target['id']}", chat_user=target["id"])
                        n += 1
                        hits += r["forbid_hit"]
                        pairs.append({"probe": probe["id"], "from": user["id"], "through": target["id"],
                                      "hit": r["forbid_hit"], "answer": r["answer"]})
            self.a.engine.set_adapter(None, None)
        out = {"key": self.cfg.key(), "rule": "all-others", "users": ids, "probes": n, "hits": hits, "pairs": pairs,
               "seconds": round(time.perf_counter() - t0, 2), "decode": decode}
        _write_json(path, out)
        return out


def run_bench(suite_paths: Sequence[str], cfg: BenchConfig, *, assistant: Any = None,
              progress: bool = True, report_only: bool = False) -> dict[str, Any]:
    """Validate the suites, run (or resume) the bench in ``cfg.out``, write the reports; return report.json."""
    from bench import report as bench_report

    suites = load_suites(suite_paths)  # before anything touches the disk: a bad file fails fast
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if report_only:  # whatever is finished in cfg.out, nothing is run
        from types import SimpleNamespace

        runner = Runner(SimpleNamespace(settings=SimpleNamespace(learning=SimpleNamespace(), memory=SimpleNamespace())), cfg)
        results = [r for _, d in suites for u in runner.selected(d) if (r := runner.done(d["name"], u["id"]))]
        cross = {d["name"]: c for _, d in suites if (c := _read_json(cfg.out / "cross" / f"{d['name']}.json"))
                 and c.get("key") == cfg.key()}
        baseline = _read_json(cfg.out / "baseline.json") or {}
        if not results:
            raise BenchError(f"--report-only: no finished users in {cfg.out}/users for these settings")
        report = bench_report.build(cfg, [d for _, d in suites], results, cross, baseline,
                                    {"wall_s": sum(sum(r["phases_s"].values()) for r in results),
                                     "peak_rss_mb": max(r.get("peak_rss_mb", 0.0) for r in results), "model": "?"})
        bench_report.write(report, cfg.out)
        return report
    if assistant is None:
        from assistant import settings as settings_mod
        from assistant.core import Assistant
        from personalization.learner import Learner

        prepare_home(cfg.out)
        assistant = Assistant(settings_mod.load(), learner=Learner)
    from personalization.learner import attach

    attach(assistant)  # rounds run through the learner, as in the TUI
    probe = Runner(assistant, cfg)
    total = sum(len(probe.selected(d)) for _, d in suites)
    bar = ProgressBar(total) if progress else None
    runner = Runner(assistant, cfg, bar)
    try:
        results, cross, baseline = runner.run(suites)
    finally:
        if bar:
            bar.close()
    wall = time.perf_counter() - t0
    report = bench_report.build(cfg, [d for _, d in suites], results, cross, baseline,
                                {"wall_s": round(wall, 1), "load_s": round(runner.load_s, 2),
                                 "peak_rss_mb": peak_rss_mb(), "model": getattr(assistant.engine, "name", "?")})
    bench_report.write(report, cfg.out)
    return report
