"""`assistant federate simulate`: one SuperLink and N SuperNodes on loopback, each SuperNode with
its own ``ASSISTANT_HOME`` holding bench users (data/bench/<pack>.json) replayed as journal turns
and memories through the real chat path; the last ``holdout`` users are on no device and score
the community adapter (their recalled memories in the prompt, prefer/over margins).

One machine pretends to be N: the devices' training steps take turns (a file lock), otherwise
N copies of the model would fight for two cores. Everything else (processes, SecAgg+, DP,
messages over HTTP on loopback) is the deployment path.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from assistant import paths
from federated import runtime
from federated.config import FederatedConfig, FederatedError, fed_dir, record_join, save_config


@dataclass
class SimConfig:
    devices: int = 8
    rounds: int = 3
    pack: str = "chef"
    holdout: int = 2
    steps: int = 8
    noise_multiplier: float = 0.1
    clipping_norm: float = 0.05
    out: Path | None = None
    docs: str | None = None
    round_timeout: float = 900.0
    replay_tokens: int = 16


def _suite_users(pack: str) -> list[dict[str, Any]]:
    from personalization.suites import load_suites

    users = []
    for _, data in load_suites(sorted(str(p) for p in (paths.repo_data_dir() / "bench").glob("*.json"))):
        if data["pack"] == pack:
            users += data["users"]
    if not users:
        raise FederatedError(f"no bench users for pack {pack!r} in data/bench/*.json; try --pack chef")
    return sorted(users, key=lambda u: u["id"])


def _with_home(home: Path):
    class _Ctx:
        def __enter__(self) -> None:
            self.old = os.environ.get("ASSISTANT_HOME")
            os.environ["ASSISTANT_HOME"] = str(home)

        def __exit__(self, *exc: Any) -> None:
            if self.old is None:
                os.environ.pop("ASSISTANT_HOME", None)
            else:
                os.environ["ASSISTANT_HOME"] = self.old
    return _Ctx()


def _prepare_home(home: Path, source: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    for name in ("models", "config.toml"):
        src = source / name
        if src.exists() and not (home / name).exists():
            if src.is_dir():
                (home / name).symlink_to(src.resolve(), target_is_directory=True)
            else:
                shutil.copy(src, home / name)
    knowledge = source / "knowledge"
    if knowledge.is_dir() and not (home / "knowledge").exists():
        shutil.copytree(knowledge, home / "knowledge")


def _replay(engine: Any, settings: Any, home: Path, pack: str, user: dict[str, Any], tokens: int) -> None:
    from assistant.core import Assistant

    with _with_home(home):
        a = Assistant(settings, engine=engine)
        for session in user["sessions"]:
            chat = a.chat(user["id"], pack, use_memory=True, use_adapter=False, source="bench")
            for turn in session:
                # Turns without a scripted reply only state things (memories): a fixed reply
                # instead of a generated one keeps the replay cheap; they are no training data.
                chat.send(turn["user"], scripted_reply=turn.get("assistant") or "Noted.", temperature=0, seed=0,
                          max_new_tokens=tokens).collect()
                if "rating" in turn:
                    chat.rate(int(turn["rating"]))
                if "correction" in turn:
                    chat.correct(turn["correction"])
        for user_id in list(a._journals):
            a.forget_user_handles(user_id)


def _heldout_probes(engine: Any, settings: Any, home: Path, pack_id: str, users: list[dict[str, Any]]) -> list[dict]:
    """The prompts the assistant would send for the held-out users' preference/style probes."""
    from assistant.answering import recalled_for
    from assistant.core import Assistant
    from assistant.prompt import user_block

    out = []
    with _with_home(home):
        a = Assistant(settings, engine=engine)
        pack = a.pack(pack_id)
        for user in users:
            store = a.memory(user["id"])
            for probe in user["probes"]:
                if probe["kind"] not in ("preference", "style") or "prefer" not in probe:
                    continue
                recalled = recalled_for(store, probe["ask"], pack, engine.count_tokens, settings.memory) \
                    if store is not None else []
                out.append({"user": user["id"], "id": probe["id"], "kind": probe["kind"],
                            "messages": [{"role": "system", "content": pack.system_prompt()},
                                         {"role": "user", "content": user_block(probe["ask"], recalled)}],
                            "prefer": probe["prefer"], "over": probe["over"]})
        for user_id in list(a._journals):
            a.forget_user_handles(user_id)
    return out


def setup(cfg: SimConfig, root: Path, say: Callable[[str], None]) -> tuple[Path, list[Path], dict[str, Any]]:
    from assistant import settings as settings_mod
    from assistant.engine import Engine

    users = _suite_users(cfg.pack)
    if cfg.holdout < 1 or len(users) - cfg.holdout < cfg.devices:
        raise FederatedError(f"pack {cfg.pack} has {len(users)} bench users: {cfg.devices} devices need at least "
                             f"{cfg.devices + max(1, cfg.holdout)} (one user a device, --holdout on none); "
                             "lower --devices or --holdout")
    held, train = users[-cfg.holdout:], users[:-cfg.holdout]
    source = paths.home()
    settings = settings_mod.load()
    say("loading the model for the replay")
    engine = Engine.load(settings)
    server = root / "server"
    _prepare_home(server, source)
    src_pack = source / "pack-adapters" / cfg.pack
    if src_pack.is_dir() and not (server / "pack-adapters" / cfg.pack).exists():
        shutil.copytree(src_pack, server / "pack-adapters" / cfg.pack)  # the federation starts from it
    devices, assignment = [], {}
    for i in range(cfg.devices):
        home = root / f"device{i:02d}"
        _prepare_home(home, source)
        mine = train[i::cfg.devices]
        for user in mine:
            say(f"device {i}: replaying {user['id']}")
            _replay(engine, settings, home, cfg.pack, user, cfg.replay_tokens)
        save_config(FederatedConfig(pack=cfg.pack, steps=cfg.steps, idle_seconds=0.0, max_cpu_percent=100.0,
                                    require_mains=False, minutes_per_day=60.0, max_len=192), home)
        record_join("127.0.0.1", cfg.pack, True, None, home)
        assignment[f"device{i:02d}"] = [u["id"] for u in mine]
        devices.append(home)
    say(f"held-out users {', '.join(u['id'] for u in held)}: replaying on the server's scoring side")
    scoring = root / "heldout-home"
    _prepare_home(scoring, source)
    for user in held:
        _replay(engine, settings, scoring, cfg.pack, user, cfg.replay_tokens)
    probes = _heldout_probes(engine, settings, scoring, cfg.pack, held)
    (fed_dir(server)).mkdir(parents=True, exist_ok=True)
    (fed_dir(server) / f"heldout-{cfg.pack}.json").write_text(json.dumps(probes, indent=2))
    info = {"train_users": [u["id"] for u in train], "heldout_users": [u["id"] for u in held],
            "assignment": assignment, "heldout_probes": len(probes)}
    return server, devices, info


def run_simulation(cfg: SimConfig, say: Callable[[str], None] = lambda m: None) -> str:
    from federated.server_app import DEFAULTS

    t_all = time.perf_counter()
    root = cfg.out or (fed_dir() / "sim" / time.strftime("%Y%m%d-%H%M%S"))
    root.mkdir(parents=True, exist_ok=True)
    server, devices, info = setup(cfg, root, say)
    setup_s = time.perf_counter() - t_all
    port = runtime.free_port()
    procs = [runtime.start_superlink(server, "127.0.0.1", port, insecure=True, nice=5)]
    address = f"127.0.0.1:{port}"
    lock = root / "train.lock"
    rounds_dir = fed_dir(server) / "rounds"
    run_id = -1
    try:
        for i, home in enumerate(devices):
            env = runtime.env_for(home)
            env["PA_FED_SERIAL_LOCK"] = str(lock)
            args = runtime.launcher("flower-supernode") + ["--superlink", address, "--port", str(runtime.free_port()),
                    "--insecure", "--max-wait-time", "600"]
            procs.append(runtime._spawn(f"supernode{i}", ["nice", "-n", "5"] + args, home, env=env))
        run_config = {"home": str(server), "pack": cfg.pack, "num-rounds": cfg.rounds, "min-devices": cfg.devices,
                      "steps": cfg.steps, "noise-multiplier": cfg.noise_multiplier, "clipping-norm": cfg.clipping_norm,
                      "round-timeout": cfg.round_timeout}
        run_id = runtime.flwr_run(server, address, True, None, run_config, DEFAULTS)
        say(f"run {run_id} started: {cfg.devices} devices, {cfg.rounds} rounds")
        rounds_dir = fed_dir(server) / "rounds" / str(run_id)
        seen = 0
        deadline = time.monotonic() + cfg.rounds * cfg.round_timeout + 900
        while not (rounds_dir / "done.json").is_file():
            if time.monotonic() > deadline:
                raise FederatedError(f"the simulation did not finish; logs in {fed_dir(server) / 'logs'}")
            if not procs[0].alive():
                raise FederatedError(f"the SuperLink stopped; see {procs[0].log}")
            n = len(list(rounds_dir.glob("round-*.json"))) if rounds_dir.is_dir() else 0
            if n > seen:
                seen = n
                say(f"round {n}/{cfg.rounds} recorded")
            time.sleep(2.0)
    finally:
        for p in reversed(procs):
            p.stop()
    rounds = [json.loads(p.read_text()) for p in sorted(rounds_dir.glob("round-*.json"))]
    sent = _bytes_sent(devices, run_id)
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()},
              "run_id": run_id, "setup_seconds": round(setup_s, 1), "total_seconds": round(time.perf_counter() - t_all, 1),
              "load_average": os.getloadavg(), "users": info, "rounds": rounds, "bytes_sent": sent}
    (root / "result.json").write_text(json.dumps(result, indent=2))
    report = render_report(result)
    if cfg.docs:
        docs = Path(cfg.docs)
        plot(result, docs / "federated-sim.png")
        (docs / "federated-sim.json").write_text(json.dumps(result, indent=2))
        _write_docs_numbers(docs / "federated.md", report)
    return report


def _bytes_sent(devices: list[Path], run_id: int) -> dict[str, Any]:
    per = {}
    for home in devices:
        path = fed_dir(home) / "sent.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        rows = [r for r in rows if int(r.get("run", -1)) == run_id]
        per[home.name] = {"messages": len(rows), "bytes": sum(r["bytes"] for r in rows)}
    return per


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:.0%}" if pct else (f"{v:.3f}" if isinstance(v, float) else str(v))


def render_report(result: dict[str, Any]) -> str:
    cfg = result["config"]
    rounds = result["rounds"]
    first = rounds[0]["first"] if rounds else {}
    lines = [f"{cfg['devices']} devices, {cfg['rounds']} rounds, pack {cfg['pack']}, {cfg['steps']} steps/device/round, "
             f"noise multiplier {cfg['noise_multiplier']}, clipping norm {cfg['clipping_norm']}; "
             f"held-out users {', '.join(result['users']['heldout_users'])} "
             f"({result['users']['heldout_probes']} preference/style probes); setup {result['setup_seconds']} s, "
             f"total {result['total_seconds']} s, load average at the end {', '.join(f'{x:.1f}' for x in result['load_average'])}",
             "",
             "| round | devices | eval pass | eval loss | guard ppl | held-out pass | published | bytes/device | s | epsilon (round / total, delta) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| start ({rounds[0]['previous_version'] if rounds else '-'}) | – | {_fmt(first.get('eval_pass'), True)} | "
             f"{_fmt(first.get('eval_loss'))} | {_fmt(first.get('guard_ppl'))} | {_fmt(first.get('heldout_pass'), True)} | – | – | – | – |"]
    sent = result["bytes_sent"]
    per_round = sum(v["bytes"] for v in sent.values()) / max(1, len(sent)) / max(1, len(rounds))
    for r in rounds:
        c = r.get("candidate") or {}
        lines.append(f"| {r['round']} | {r['devices_returned']}/{r['devices_returned'] + r['devices_failed']} | "
                     f"{_fmt(c.get('eval_pass'), True)} | {_fmt(c.get('eval_loss'))} | {_fmt(c.get('guard_ppl'))} | "
                     f"{_fmt(c.get('heldout_pass'), True)} | {'yes' if r.get('published') else 'no'} | {per_round:,.0f} | "
                     f"{r['seconds']} | {_fmt(r.get('epsilon_round'))} / {_fmt(r.get('epsilon_total'))}, {r['delta']} |")
    norms = [c.get("update_norm") for r in rounds for c in r.get("clients", []) if c.get("update_norm") is not None]
    if norms:
        lines.append("")
        lines.append(f"device update norms before clipping: median {sorted(norms)[len(norms) // 2]:.4f}, "
                     f"max {max(norms):.4f} (clipped to {cfg['clipping_norm']})")
    for r in rounds:
        lines.append(f"- round {r['round']}: {r.get('reason')}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = result["rounds"]
    first = rounds[0]["first"] if rounds else {}
    xs = [0] + [r["round"] for r in rounds]

    def series(key: str) -> list[float]:
        return [first.get(key) or float("nan")] + [((r.get("candidate") or {}).get(key) or float("nan")) for r in rounds]

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(xs, series("eval_pass"), "o-", label="pack eval pass rate")
    axes[0].plot(xs, series("heldout_pass"), "s-", label="held-out users pref/style")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    axes[1].plot(xs, series("guard_ppl"), "o-", color="tab:red")
    axes[1].set_title("guard perplexity", fontsize=9)
    axes[2].plot(xs[1:], [r.get("epsilon_total") or float("nan") for r in rounds], "o-", color="tab:green")
    axes[2].set_title(f"epsilon (total, delta {rounds[0]['delta'] if rounds else ''})", fontsize=9)
    for ax in axes:
        ax.set_xlabel("round (0: the previous pack adapter)")
    fig.suptitle(f"{result['config']['devices']} devices, pack {result['config']['pack']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


BEGIN, END = "<!-- sim:begin -->", "<!-- sim:end -->"


def _write_docs_numbers(path: Path, report: str) -> None:
    text = path.read_text() if path.is_file() else "# Federated learning\n\n"
    block = f"{BEGIN}\n{report}\n\n![simulation](federated-sim.png)\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text += "\n## Latest simulation\n\n" + block + "\n"
    path.write_text(text)
