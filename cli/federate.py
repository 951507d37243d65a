"""`assistant federate ...`: serve, join, leave, status, certs, simulate (registration is light)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from assistant.errors import AssistantError
from cli.common import command_group


def _home() -> Path:
    from assistant import paths

    return paths.home()


def cmd_join(args: argparse.Namespace) -> int:
    from federated import config as config_mod
    from federated import runtime

    host, _ = runtime.split_address(args.address)
    runtime.check_transport(host, args.insecure, bool(args.root_certificates), "--root-certificates CA.crt")
    home = _home()
    rec = config_mod.record_join(args.address, args.pack or config_mod.load_config(home).pack, args.insecure,
                                 str(Path(args.root_certificates).resolve()) if args.root_certificates else None, home)
    print(f"joined {rec['address']} for pack {rec['pack']} (leave with `assistant federate leave`)")
    if args.record_only:
        return 0
    proc = runtime.start_supernode(home, args.address, args.runtime_port or runtime.free_port(), args.insecure,
                                   rec["root_certificates"])
    print(f"SuperNode running (pid {proc.popen.pid}); log: {proc.log}. Ctrl-C stops it.", flush=True)
    try:
        return proc.popen.wait()
    except KeyboardInterrupt:
        proc.stop()
        return 130


def cmd_leave(args: argparse.Namespace) -> int:
    from federated import config as config_mod

    left = config_mod.leave(_home())
    print("left the federation; journals, memories and adapters are unchanged" if left else "this device had not joined")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from federated import config as config_mod

    home = _home()
    cfg = config_mod.load_config(home)
    rec = config_mod.joined(home)
    out: dict[str, Any] = {"joined": rec is not None, "join": rec, "config": cfg.__dict__,
                           "budget_used_today_s": round(config_mod.budget_used_s(home), 1),
                           "budget_left_today_s": round(config_mod.budget_left_s(cfg, home), 1)}
    sent = config_mod.fed_dir(home) / "sent.jsonl"
    if sent.is_file():
        rows = [json.loads(line) for line in sent.read_text().splitlines() if line.strip()]
        out["messages_sent"] = len(rows)
        out["bytes_sent"] = sum(r["bytes"] for r in rows)
    rounds = sorted((config_mod.fed_dir(home) / "rounds").glob("*/round-*.json"))
    if rounds:
        last = json.loads(rounds[-1].read_text())
        out["last_round"] = {k: last.get(k) for k in ("round", "devices_returned", "published", "reason",
                                                      "epsilon_total", "delta", "version")}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"federation: {'joined ' + rec['address'] + ' (pack ' + rec['pack'] + ')' if rec else 'not joined (opt in with `assistant federate join ADDRESS`)'}")
    print(f"budget today: {out['budget_used_today_s']:.0f} s used, {out['budget_left_today_s']:.0f} s left "
          f"({cfg.minutes_per_day:g} min/day)")
    if "bytes_sent" in out:
        print(f"sent: {out['messages_sent']} messages, {out['bytes_sent']} bytes (LoRA B matrices and counts only)")
    if "last_round" in out:
        print(f"last round served here: {out['last_round']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from federated import runtime
    from federated.server_app import DEFAULTS

    home = _home()
    certs = Path(args.certificates).resolve() if args.certificates else None
    proc = runtime.start_superlink(home, args.host, args.port, args.insecure, certs)
    print(f"SuperLink on {args.host}:{args.port} (log {proc.log})", flush=True)
    try:
        local = f"127.0.0.1:{args.port}" if args.insecure else f"{args.public_name or args.host}:{args.port}"
        run_config = {"home": str(home), "pack": args.pack, "num-rounds": args.rounds, "min-devices": args.min_devices,
                      "steps": args.steps, "noise-multiplier": args.noise_multiplier,
                      "clipping-norm": args.clipping_norm, "round-timeout": args.round_timeout}
        run_id = runtime.flwr_run(home, local, args.insecure, str(certs / "ca.crt") if certs else None,
                                  run_config, DEFAULTS)
        print(f"run {run_id}: waiting for {args.min_devices} device(s), {args.rounds} round(s)", flush=True)
        done = home / "federated" / "rounds" / str(run_id) / "done.json"
        seen: set[str] = set()
        while not done.is_file():
            for path in sorted(done.parent.glob("round-*.json")):
                if path.name not in seen:
                    seen.add(path.name)
                    print(_round_line(json.loads(path.read_text())), flush=True)
            if not proc.alive():
                raise AssistantError(f"the SuperLink stopped; see {proc.log}")
            time.sleep(1.0)
        for path in sorted(done.parent.glob("round-*.json")):
            if path.name not in seen:
                print(_round_line(json.loads(path.read_text())))
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        proc.stop()


def _round_line(r: dict[str, Any]) -> str:
    c = r.get("candidate") or {}
    eps = r.get("epsilon_total")
    return (f"round {r['round']}: {r['devices_returned']} device(s) returned, {r['devices_failed']} failed; "
            f"eval pass {c.get('eval_pass')}, guard ppl {c.get('guard_ppl')}, held-out {c.get('heldout_pass')}; "
            f"{'PUBLISHED ' + str(r.get('version')) if r.get('published') else 'kept ' + str(r.get('version'))} "
            f"({r.get('reason')}); epsilon total {eps if eps is not None else 'inf'} at delta {r['delta']}; "
            f"{r['seconds']} s")


def cmd_certs(args: argparse.Namespace) -> int:
    from federated.certs import make_certs

    folder = make_certs(Path(args.folder), args.host)
    print(f"wrote {folder}/ca.crt (give it to devices: --root-certificates), server.pem and server.key "
          f"(for `assistant federate serve --certificates {folder}`)")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from federated.simulate import SimConfig, run_simulation

    cfg = SimConfig(devices=args.devices, rounds=args.rounds, pack=args.pack, holdout=args.holdout, steps=args.steps,
                    noise_multiplier=args.noise_multiplier, clipping_norm=args.clipping_norm,
                    out=Path(args.out) if args.out else None, docs=args.docs, round_timeout=args.round_timeout)
    report = run_simulation(cfg, say=lambda m: print(f"[{m}]", file=sys.stderr, flush=True))
    print(report)
    return 0


def register(sub: Any) -> None:
    p, fsub = command_group(sub, "federate", "federated learning of pack adapters with Flower (opt-in)", "federate_cmd")
    j = fsub.add_parser("join", help="opt in and run this device's SuperNode (trains only when idle)")
    j.add_argument("address", help="the server's SuperLink, HOST:PORT")
    j.add_argument("--pack", help="the pack to federate (default: federated/config.toml's pack)")
    j.add_argument("--insecure", action="store_true", help="no TLS (loopback addresses only)")
    j.add_argument("--root-certificates", help="the server's CA certificate (ca.crt), for TLS")
    j.add_argument("--runtime-port", type=int, help="the SuperNode's local app port (default: a free one)")
    j.add_argument("--record-only", action="store_true", help="record the opt-in, start nothing now")
    j.set_defaults(func=cmd_join)
    q = fsub.add_parser("leave", help="opt out (local data stays as it is)")
    q.set_defaults(func=cmd_leave)
    q = fsub.add_parser("status", help="joined or not, budget, bytes sent, the last round (opens no socket)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_status)
    s = fsub.add_parser("serve", help="run the SuperLink and the ServerApp for some rounds")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces, TLS needed)")
    s.add_argument("--port", type=int, default=9092)
    s.add_argument("--public-name", help="the host name in the server certificate (default: --host)")
    s.add_argument("--insecure", action="store_true", help="no TLS (loopback only)")
    s.add_argument("--certificates", help="folder with ca.crt, server.pem, server.key (`federate certs`)")
    _round_args(s)
    s.add_argument("--min-devices", type=int, default=2)
    s.set_defaults(func=cmd_serve)
    c = fsub.add_parser("certs", help="make a CA and a server certificate for TLS")
    c.add_argument("folder")
    c.add_argument("--host", required=True, help="the server's host name or IP, as devices will dial it")
    c.set_defaults(func=cmd_certs)
    m = fsub.add_parser("simulate", help="a measured federation on loopback: N SuperNodes, bench users")
    m.add_argument("--devices", type=int, default=8)
    m.add_argument("--holdout", type=int, default=2, help="bench users that no device holds (scored only)")
    m.add_argument("--out", help="working folder (default: a new folder under $ASSISTANT_HOME/federated/sim)")
    m.add_argument("--docs", help="write the report and plot here (e.g. docs/)")
    _round_args(m)
    m.set_defaults(func=cmd_simulate)


def _round_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pack", default="chef")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="training steps per device per round")
    p.add_argument("--noise-multiplier", type=float, default=0.1, help="DP noise std / clipping norm, on the sum")
    p.add_argument("--clipping-norm", type=float, default=0.05, help="L2 bound of one device's B update")
    p.add_argument("--round-timeout", type=float, default=900.0, help="seconds a round waits for devices")
