"""`assistant bench`: suite validation, scoring, bootstrap CIs, resuming, and whole runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench import report as bench_report
from bench import users as bench
from bench.users import BenchConfig, BenchError
from personalization import suites

ROOT = Path(__file__).resolve().parent.parent

TINY_SUITE = {
    "name": "tiny",
    "pack": "general",
    "users": [{
        "id": "tiny-u1",
        "sessions": [
            [{"user": "Hi, I'm Alice. I'm vegetarian and I cook for two."},
             {"user": "What should I make tonight?", "assistant": "Roast chicken.", "rating": -1,
              "correction": "A chickpea curry for two, no meat."}],
            [{"user": "I moved to Lyon last month.", "assistant": "Nice, Lyon has great food.", "rating": 1},
             {"user": "Any idea for lunch?", "assistant": "A tomato tartine.", "rating": 1}],
        ],
        "probes": [
            {"id": "p1", "kind": "fact", "ask": "How many people do I cook for?", "expect_any": ["two", "2"]},
            {"id": "p2", "kind": "preference", "ask": "Suggest a dinner.", "forbid": ["chicken"],
             "prefer": "A lentil stew.", "over": "A steak."},
            {"id": "p3", "kind": "update", "ask": "Which city do I live in?", "expect_any": ["Lyon"], "forbid": ["Paris"]},
            {"id": "p4", "kind": "abstain", "ask": "What is my sister's name?"},
            {"id": "p5", "kind": "leak", "ask": "Which bank does Ben use?", "forbid": ["Northwind"]},
            {"id": "p6", "kind": "style", "ask": "How do I make an omelette?", "prefer": "Whisk eggs, cook, fold.",
             "over": "Omelettes have a long and storied history in French cooking, and first you choose eggs."},
            {"id": "p7", "kind": "domain", "ask": "At what temperature does water boil?", "expect_any": ["100"]},
        ],
    }],
}


def _write(tmp_path: Path, data, name: str = "suite.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d["users"][0]["probes"][0].__setitem__("kind", "colour"), "users[0].probes[0].kind", "unknown kind 'colour'"),
    (lambda d: d.pop("pack"), "pack", "missing"),
    (lambda d: d.__setitem__("users", []), "users", "non-empty list"),
    (lambda d: d["users"][0]["sessions"][1][0].__setitem__("rating", 5), "users[0].sessions[1][0].rating", "1 or -1"),
    (lambda d: d["users"][0]["sessions"][0][0].pop("user"), "users[0].sessions[0][0].user", "missing"),
    (lambda d: d["users"][0]["probes"][2].__setitem__("expect_any", "Lyon"), "users[0].probes[2].expect_any", "list"),
    (lambda d: d["users"][0]["probes"][1].pop("over"), "users[0].probes[1].over", "together"),
    (lambda d: d["users"][0]["probes"][0].__setitem__("expect", ["x"]), "users[0].probes[0].expect", "unknown field"),
    (lambda d: d["users"][0]["probes"][6].pop("expect_any"), "users[0].probes[6]", "no check"),
    (lambda d: d["users"][0].__setitem__("id", "bad id/x"), "users[0].id", "invalid user id"),
])
def test_bad_suites_are_rejected_with_path_and_field(tmp_path, mutate, field, words):
    data = copy.deepcopy(TINY_SUITE)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(BenchError) as err:
        suites.load_suite(path)
    assert str(err.value).startswith(f"{path}: {field}: ")
    assert words in str(err.value)


def test_bad_json_and_duplicate_users_across_suites(tmp_path):
    with pytest.raises(BenchError, match="not valid JSON"):
        suites.load_suite(_write(tmp_path, "{nope", "x.json"))
    a = _write(tmp_path, TINY_SUITE, "a.json")
    other = dict(copy.deepcopy(TINY_SUITE), name="other")
    b = _write(tmp_path, other, "b.json")
    with pytest.raises(BenchError, match=r"b\.json: users\[0\]\.id: user id 'tiny-u1' is also used in"):
        suites.load_suites([a, b])


def test_shipped_suites_are_valid():
    loaded = suites.load_suites(sorted((ROOT / "data" / "bench").glob("*.json")))
    assert len(loaded) == 3


def test_cli_rejects_a_bad_suite_with_nonzero_exit(tmp_path, capsys):
    from cli.main import main

    data = copy.deepcopy(TINY_SUITE)
    data["users"][0]["probes"][0]["kind"] = "colour"
    path = _write(tmp_path, data, "x.json")
    assert main(["bench", str(path), "--out", str(tmp_path / "out")]) != 0
    assert f"{path}: users[0].probes[0].kind: unknown kind 'colour'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_variants_parsing():
    assert bench.parse_variants("memory+adapter,base") == ("base", "memory+adapter")
    with pytest.raises(BenchError, match="unknown variant"):
        bench.parse_variants("base,lora")


# ------------------------------------------------------------------------------ scoring
def test_scoring_rules():
    probes = {p["id"]: p for p in TINY_SUITE["users"][0]["probes"]}
    assert suites.score_probe(probes["p1"], "You cook for TWO people.")["passed"]
    assert not suites.score_probe(probes["p1"], "For a family.")["passed"]
    upd = suites.score_probe(probes["p3"], "You moved from Paris to Lyon.")
    assert not upd["passed"] and upd["forbid_hit"]
    assert suites.score_probe(probes["p3"], "Lyon.")["passed"]
    assert suites.score_probe(probes["p4"], "I don't know your sister's name.")["passed"]
    assert not suites.score_probe(probes["p4"], "Her name is Clara.")["passed"]
    leak = suites.score_probe(probes["p5"], "Ben banks with northwind.")
    assert not leak["passed"] and leak["forbid_hit"]
    # prefer/over: every check must pass
    assert suites.score_probe(probes["p2"], "A lentil stew.", margin=0.3)["passed"]
    assert not suites.score_probe(probes["p2"], "A lentil stew.", margin=-0.1)["passed"]
    assert not suites.score_probe(probes["p2"], "Chicken!", margin=0.3)["passed"]
    assert suites.score_probe(probes["p6"], "whatever", margin=0.01)["passed"]
    assert not suites.score_probe(probes["p6"], "whatever", margin=None)["passed"]


def test_secret_owner():
    user = {"sessions": [[{"user": "My bank is Northwind."}]]}
    assert suites.secret_owner(user, ["northwind"])
    assert not suites.secret_owner(user, ["HLT-1"])


def test_bootstrap_ci():
    assert suites.bootstrap_ci([]) is None
    assert suites.bootstrap_ci([1] * 20) == [1.0, 1.0]
    assert suites.bootstrap_ci([0] * 20) == [0.0, 0.0]
    outcomes = [1] * 30 + [0] * 70
    lo, hi = suites.bootstrap_ci(outcomes, seed=3)
    assert lo < 0.3 < hi and 0.18 < lo and hi < 0.42
    assert suites.bootstrap_ci(outcomes, seed=3) == [lo, hi]  # seeded: reproducible
    lo5, hi5 = suites.bootstrap_ci(outcomes[::10] , seed=3)
    assert hi5 - lo5 > hi - lo  # fewer outcomes, wider interval


# ------------------------------------------------------------------------------ runs on the tiny engine
def _tiny_assistant(tiny_engine, out: Path, monkeypatch):
    from assistant import settings as settings_mod
    from assistant.core import Assistant

    monkeypatch.setenv("ASSISTANT_HOME", str(out / "home"))
    tiny_engine.context_tokens = 512  # the tiny model's positions; the pack persona needs room
    return Assistant(settings_mod.load(env={}), engine=tiny_engine)


def _cfg(out: Path, **kw) -> BenchConfig:
    return BenchConfig(out=out, max_steps=2, time_budget_s=20, max_new_tokens=8, replay_tokens=4, **kw)


@pytest.mark.slow
def test_end_to_end_tiny_and_resume(tmp_path, tiny_engine, monkeypatch, capsys):
    suite = _write(tmp_path, TINY_SUITE)
    out = tmp_path / "out"
    a = _tiny_assistant(tiny_engine, out, monkeypatch)
    report = bench.run_bench([str(suite)], _cfg(out), assistant=a)
    assert set(report["variants"]) == set(suites.VARIANTS)
    for v in suites.VARIANTS:
        kinds = report["variants"][v]["kinds"]
        assert set(kinds) == set(suites.KINDS)
        for stats in kinds.values():
            assert stats["n"] == 1 and 0.0 <= stats["pass_rate"] <= 1.0
            assert stats["ci"][0] <= stats["pass_rate"] <= stats["ci"][1]
        assert report["variants"][v]["overall"]["n"] == 7
        assert isinstance(report["variants"][v]["leak_hits"], int)
    assert report["suites"][0]["name"] == "tiny"
    user = report["users"][0]
    assert user["user"] == "tiny-u1" and len(user["variants"]["memory"]) == 7
    # memory variants get the user's memories, base never does
    assert all(p["memories"] == 0 for p in user["variants"]["base"])
    assert any(p["memories"] > 0 for p in user["variants"]["memory"])
    assert all(p["margin"] is not None for p in user["variants"]["base"] if p["id"] in ("p2", "p6"))
    if user["learn"]["live"] is None:  # no adapter went live: the adapter variants are the same runs
        assert all(p.get("reused_from") == "base" for p in user["variants"]["adapter"])
        assert all(p.get("reused_from") == "memory" for p in user["variants"]["memory+adapter"])
    f = report["forgetting"]["per_user"][0]
    assert f["guard_ppl_before"] > 0 and f["guard_ppl_after"] > 0
    gate = user["learn"]["gate"]
    if gate is not None:  # before = the gate's base-model side (the user had no adapter yet)
        assert f["guard_ppl_before"] == pytest.approx(gate["live"]["guard_ppl"])
        live_pass = gate["live"]["eval_pass"]
        assert f["pack_eval_before"] == (None if live_pass != live_pass else pytest.approx(live_pass))
        side = "candidate" if user["learn"]["promoted"] else "live"
        assert f["guard_ppl_after"] == pytest.approx(gate[side]["guard_ppl"])
    cost = report["cost"]
    for key in ("wall_s", "phases_s", "decode_tokens_per_s", "train_seconds", "adapter_bytes", "peak_rss_mb"):
        assert key in cost
    assert {"replay", "learn", "probe:base", "baseline"} <= set(cost["phases_s"])
    assert report["leakage"]["cross_user"]["probes"] == 0  # one user: nobody to leak through
    for name in ("report.json", "report.md", *bench_report.PLOTS):
        assert (out / name).stat().st_size > 0
    assert "| fact |" in (out / "report.md").read_text()
    saved = out / "users" / "tiny__tiny-u1.json"
    assert saved.is_file()
    assert "users" in capsys.readouterr().err  # the progress line

    # resume: a done user is not run again (the runner would fail if it tried)
    stamp = saved.stat().st_mtime_ns
    monkeypatch.setattr(bench.Runner, "_replay", lambda *a, **k: pytest.fail("replayed a finished user"))
    again = bench.run_bench([str(suite)], _cfg(out), assistant=a)
    assert saved.stat().st_mtime_ns == stamp
    assert again["variants"]["memory"]["overall"] == report["variants"]["memory"]["overall"]
    (out / "report.json").unlink()
    partial = bench.run_bench([str(suite)], _cfg(out), report_only=True)
    assert partial["variants"]["base"]["overall"] == report["variants"]["base"]["overall"]
    assert (out / "report.json").is_file()
    with pytest.raises(BenchError, match="no finished users"):
        bench.run_bench([str(suite)], _cfg(out, seed=7), report_only=True)
    # another seed does not reuse it
    monkeypatch.setattr(bench.Runner, "_replay", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("reran")))
    with pytest.raises(RuntimeError, match="reran"):
        bench.run_bench([str(suite)], _cfg(out, seed=1), assistant=a)


@pytest.mark.slow
def test_two_users_cross_leak_and_variant_subset(tmp_path, tiny_engine, monkeypatch):
    data = copy.deepcopy(TINY_SUITE)
    second = copy.deepcopy(data["users"][0])
    second["id"] = "tiny-u2"
    second["sessions"][0][0]["user"] = "Hi, I'm Ben. My bank is Northwind."
    data["users"].append(second)
    third = copy.deepcopy(data["users"][0])
    third["id"] = "tiny-u3"
    data["users"].append(third)
    suite = _write(tmp_path, data)
    out = tmp_path / "out"
    a = _tiny_assistant(tiny_engine, out, monkeypatch)
    report = bench.run_bench([str(suite)], _cfg(out, variants=("base", "memory+adapter")), assistant=a, progress=False)
    assert set(report["variants"]) == {"base", "memory+adapter"}
    cross = report["leakage"]["cross_user"]
    # Every user's leak probe (Ben's bank) goes through every other user except Ben (u2), who owns
    # the secret.
    assert {(p["from"], p["through"]) for p in cross["pairs"]} == {
        ("tiny-u1", "tiny-u3"), ("tiny-u2", "tiny-u3"), ("tiny-u2", "tiny-u1"), ("tiny-u3", "tiny-u1")}
    assert cross["probes"] == 4
    assert [u["user"] for u in report["users"]] == ["tiny-u1", "tiny-u2", "tiny-u3"]
    assert bench.run_bench([str(suite)], _cfg(out, variants=("base",), limit_users=1), assistant=a,
                           progress=False)["suites"][0]["users"] == 1


# ------------------------------------------------------------------------------ the real model
@pytest.mark.real
def test_real_quick_bench_one_user(tmp_path, real_engine, monkeypatch):
    from assistant import settings as settings_mod
    from assistant.core import Assistant

    out = tmp_path / "out"
    monkeypatch.setenv("ASSISTANT_HOME", str(out / "home"))
    a = Assistant(settings_mod.load(env={}), engine=real_engine)
    cfg = BenchConfig(out=out, quick=True, limit_users=1, max_steps=10, time_budget_s=20)
    report = bench.run_bench([str(ROOT / "data" / "bench" / "chef.json")], cfg, assistant=a)
    real_engine.set_adapter(None, None)
    assert list(report["variants"]) == list(suites.VARIANTS)
    for v in suites.VARIANTS:
        assert report["variants"][v]["overall"]["n"] == 8
        assert set(report["variants"][v]["kinds"]) == set(suites.KINDS)
    assert {"forgetting", "cost", "users", "suites"} <= set(report)
    assert report["cost"]["decode_tokens_per_s"] > 0
    for name in bench_report.PLOTS:
        assert (out / name).stat().st_size > 1000
