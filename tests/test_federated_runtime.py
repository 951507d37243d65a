"""A real Flower federation on loopback (SuperLink, SuperNodes and app processes), tiny model."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from tests.fed_helpers import (
    USER_STRINGS,
    add_user,
    fed_config,
    read_rounds,
    save_tiny_model,
    tree_digest,
    wait_for,
    write_settings,
)

pytestmark = pytest.mark.slow  # processes, servers, the terminal UI or the real embedder at every step


def _federation(tmp_path: Path, tiny_tokenizer, users: list[str]):
    from federated import config as config_mod

    model = save_tiny_model(tmp_path / "tiny-model", tiny_tokenizer)
    server = tmp_path / "server"
    write_settings(server, model)
    devices = []
    for i, user in enumerate(users):
        home = tmp_path / f"device{i}"
        write_settings(home, model)
        fed_config(home)
        add_user(home, user)
        config_mod.record_join("127.0.0.1:0", "general", True, None, home)
        devices.append(home)
    return server, devices


# A loaded 2-core machine spawns each Flower app process slowly; a round of three tiny devices
# through the four SecAgg+ stages took 7 minutes at load average 18.
WAIT_S = 1500


def _start(server: Path, devices: list[Path], run_config: dict, capture: Path | None = None):
    from federated import runtime
    from federated.server_app import DEFAULTS

    port = runtime.free_port()
    procs = [runtime.start_superlink(server, "127.0.0.1", port, insecure=True)]
    address = f"127.0.0.1:{port}"
    ports = []
    for i, home in enumerate(devices):
        env = runtime.env_for(home)
        if capture is not None:
            env["PA_FED_CAPTURE"] = str(capture / f"device{i}")
        ports.append(runtime.free_port())
        args = runtime.launcher("flower-supernode") + ["--superlink", address, "--port", str(ports[-1]),
                "--insecure", "--max-wait-time", "120"]
        procs.append(runtime._spawn(f"supernode{i}", args, home, env=env))
    try:
        run_id = runtime.flwr_run(server, address, True, None, {"home": str(server), **run_config}, DEFAULTS)
    except BaseException:
        _stop(procs)
        raise
    return procs, run_id, ports


def _kill_app_processes(port: int) -> int:
    """SIGKILL the processes a SuperNode started for its apps (they name its runtime port)."""
    import psutil

    n = 0
    for p in psutil.Process().children(recursive=True):
        try:
            if f"127.0.0.1:{port}" in " ".join(p.cmdline()):
                p.kill()
                n += 1
        except psutil.Error:
            pass
    return n


def _stop(procs):
    for p in reversed(procs):
        p.stop()


def test_round_over_secagg_publishes_and_sends_no_user_text(tmp_path, tiny_tokenizer):
    """Three devices, one round through SecAgg+ and DP: a record with epsilon, and no message a
    device sent contains any of its users' messages, corrections or facts."""
    server, devices = _federation(tmp_path, tiny_tokenizer, ["ana", "ben", "cyd"])
    capture = tmp_path / "capture"
    procs, run_id, _ = _start(server, devices, {"num-rounds": 1, "min-devices": 3, "steps": 3, "round-timeout": 600.0,
                                                "noise-multiplier": 0.5, "pack": "general"}, capture)
    try:
        found = wait_for((server / "federated" / "rounds", "*/done.json"), WAIT_S)
        logs = "\n".join((server / "federated" / "logs" / "superlink.log").read_text().splitlines()[-40:])
        assert found, f"the run did not finish; superlink log:\n{logs}"
    finally:
        _stop(procs)
    rounds = read_rounds(server)
    assert len(rounds) == 1
    r = rounds[0]
    assert r["devices_returned"] == 3 and r["devices_failed"] == 0
    assert r["epsilon_round"] is not None and r["epsilon_round"] > 0 and r["delta"] == 1e-5
    assert r["candidate"]["guard_ppl"] > 0
    assert all(c["examples"] > 0 for c in r["clients"])
    # Every message each device sent in the round, serialised as it went on the wire.
    blobs = {d: [p.read_bytes() for p in (capture / d).glob("*.bin")] for d in ("device0", "device1", "device2")}
    assert all(len(v) >= 3 for v in blobs.values()), {k: len(v) for k, v in blobs.items()}  # SecAgg+ stages
    for user, strings in USER_STRINGS.items():
        for s in strings:
            for piece in [s, s + " (corrected)"] + [w for w in s.split() if len(w) >= 7]:
                for d, msgs in blobs.items():
                    assert not any(piece.encode() in m for m in msgs), (user, piece, d)
    # sizes were logged by the device, for the report
    sent = [json.loads(line) for line in (devices[0] / "federated" / "sent.jsonl").read_text().splitlines()]
    assert sum(s["bytes"] for s in sent) > 0


def test_a_device_killed_mid_round_loses_nothing_and_the_round_completes(tmp_path, tiny_tokenizer):
    """Device 2 is in the middle of the round (it holds the masks' key shares and is waiting to
    train) when its SuperNode and app processes are killed: SecAgg+ recovers its masks from the
    others' shares, the round completes with two devices, and device 2's data is as it was."""
    from federated.idle import busy_marker

    server, devices = _federation(tmp_path, tiny_tokenizer, ["ana", "ben", "cyd"])
    victim = devices[2]
    busy_marker(victim).write_text(str(os.getpid()))  # a "reply" in progress: it waits to train
    before = tree_digest(victim / "users")
    procs, run_id, ports = _start(server, devices, {"num-rounds": 1, "min-devices": 3, "steps": 3,
                                                    "round-timeout": 400.0, "pack": "general"})
    try:
        end = time.monotonic() + WAIT_S
        sent = victim / "federated" / "sent.jsonl"
        # stages 0 and 1 (keys and shares) answered: the victim is now inside the training stage
        while time.monotonic() < end and (not sent.is_file() or len(sent.read_text().splitlines()) < 2):
            time.sleep(1.0)
        assert sent.is_file(), "the victim never took part"
        time.sleep(5.0)
        procs[3].kill_group()
        _kill_app_processes(ports[2])
        found = wait_for((server / "federated" / "rounds", "*/done.json"), WAIT_S)
        assert found, "the round did not complete without the killed device"
    finally:
        _stop(procs)
    r = read_rounds(server)[0]
    assert r["devices_returned"] == 2 and r["candidate"] is not None
    assert tree_digest(victim / "users") == before
    from assistant.adapters import AdapterStore

    store = AdapterStore("_pack", "general", root=victim / "pack-adapters" / "general")
    assert store.current() is None or (store.path(store.current()) / "adapter_model.safetensors").is_file()
