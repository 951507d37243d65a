"""Federated learning pieces that need no running federation: FFA-LoRA tensors, the privacy
accountant, the idle guard, opt-in and transport rules, the device's local training."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from tests.fed_helpers import add_user, save_tiny_model, tree_digest, write_settings

ROOT = Path(__file__).resolve().parent.parent


def _tiny_adapter(tiny_engine, tmp_path):
    import copy

    from assistant import settings as settings_mod
    from federated import lora
    from personalization import trainer

    model = trainer.create(copy.deepcopy(tiny_engine.model), settings_mod.load(env={}).learning)
    model.save_pretrained(str(tmp_path / "ad"))
    return lora.read(tmp_path / "ad")


def test_ffa_lora_average_is_the_average_of_products(tiny_engine, tmp_path):
    """With A shared, mean(B_i) @ A is exactly mean(B_i @ A); averaging A and B separately is not."""
    import torch

    from federated import lora

    ad = _tiny_adapter(tiny_engine, tmp_path)
    name = ad.b_names()[0]
    a = ad.a[name.replace(".lora_B.", ".lora_A.")]
    torch.manual_seed(0)
    bs = [torch.randn_like(ad.b[name]) for _ in range(4)]
    mean_of_products = sum(b @ a for b in bs) / 4
    assert torch.allclose((sum(bs) / 4) @ a, mean_of_products, atol=1e-5)
    a_s = [a + 0.1 * torch.randn_like(a) for _ in range(4)]  # what averaging both factors would do
    separate = (sum(bs) / 4) @ (sum(a_s) / 4)
    assert not torch.allclose(separate, sum(b @ ai for b, ai in zip(bs, a_s, strict=False)) / 4, atol=1e-3)
    # the message form round-trips: A as bytes, B as arrays
    back = lora.from_blob(ad.a_blob(), ad.b_names(), ad.b_arrays())
    assert back.config == ad.config and set(back.a) == set(ad.a)
    assert all(torch.equal(back.b[n], ad.b[n]) for n in ad.b)
    with pytest.raises(ValueError):
        ad.with_b(ad.b_arrays()[:-1])


def test_epsilon_accountant():
    from federated.lora import epsilon

    one = epsilon([1.0], 1e-5)
    assert 3.0 < one < 6.0  # the Gaussian mechanism at sigma = 1, delta 1e-5 (about 4.4 by the analytic bound)
    assert epsilon([1.0] * 3, 1e-5) > one  # rounds compose
    assert epsilon([2.0], 1e-5) < one  # more noise, less epsilon
    assert epsilon([0.0], 1e-5) == float("inf")
    assert epsilon([], 1e-5) == 0.0


def test_config_rejects_unknown_keys(home):
    from federated.config import FederatedError, load_config

    (home / "federated").mkdir()
    (home / "federated" / "config.toml").write_text("minutes_per_dya = 5\n")
    with pytest.raises(FederatedError, match="unknown key 'minutes_per_dya'"):
        load_config()
    (home / "federated" / "config.toml").write_text("minutes_per_day = 5\n")
    assert load_config().minutes_per_day == 5.0


def test_idle_guard_marker_journal_and_budget(home):
    from federated import config as config_mod
    from federated.idle import IdleGuard, busy_marker, generating

    cfg = config_mod.FederatedConfig(idle_seconds=30.0, max_cpu_percent=100.0, require_mains=False, minutes_per_day=1.0)
    guard = IdleGuard(cfg)
    assert guard.why_not() == ""
    with generating():
        assert "reply" in guard.why_not()
    busy_marker().write_text("999999999")  # a marker left by a process that died does not count
    assert guard.why_not() == ""
    add_user(home, "ana")
    os.utime(home / "users" / "ana" / "journal.sqlite3", None)  # a turn just now
    assert "used" in guard.why_not()
    os.utime(home / "users" / "ana" / "journal.sqlite3", (time.time() - 60, time.time() - 60))
    for f in (home / "users" / "ana").glob("journal.sqlite3-*"):
        os.utime(f, (time.time() - 60, time.time() - 60))
    assert guard.why_not() == ""
    config_mod.add_budget_used(60.0)
    assert "budget" in guard.why_not() and guard.over_budget()


@pytest.mark.slow
def test_training_pauses_within_a_second_when_a_reply_starts(home, tiny_engine, tmp_path):
    """The device trains only while idle: a busy marker stops the steps within a second; training
    resumes when the marker goes, and the user's journal is only read."""
    from assistant import settings as settings_mod
    from federated import config as config_mod
    from federated.idle import IdleGuard, busy_marker
    from federated.local import train_update

    model_dir = save_tiny_model(tmp_path / "m", tiny_engine.tokenizer)
    write_settings(home, model_dir)
    add_user(home, "ana")
    add_user(home, "ben")
    before = tree_digest(home / "users")
    cfg = config_mod.FederatedConfig(idle_seconds=0.0, max_cpu_percent=100.0, require_mains=False, steps=400,
                                     max_len=64)
    guard = IdleGuard(cfg)
    steps: list[tuple[float, int]] = []
    ad = _tiny_adapter(tiny_engine, tmp_path)
    settings = settings_mod.load()

    def pause() -> bool:
        return guard.should_pause()

    import personalization.trainer as trainer_mod

    real_train = trainer_mod.train

    def spy(*a, **kw):
        kw["on_progress"] = lambda p: steps.append((time.monotonic(), p.step))
        return real_train(*a, **kw)

    trainer_mod.train = spy
    out = {}
    try:
        t = threading.Thread(target=lambda: out.setdefault("u", train_update(
            ad, "general", cfg, settings=settings, engine=tiny_engine, should_pause=pause, time_budget_s=60)))
        t.start()
        while len(steps) < 3:
            time.sleep(0.01)
        busy_marker().parent.mkdir(parents=True, exist_ok=True)
        busy_marker().write_text(str(os.getpid()))
        marked = time.monotonic()
        time.sleep(2.0)
        # the step in flight when the marker appeared may finish; no other step may start
        late = [s for s in steps if s[0] > marked + 0.5][1:]
        paused_at = steps[-1][1]
        busy_marker().unlink()
        t.join(120)
    finally:
        trainer_mod.train = real_train
    assert not late, f"{len(late)} more steps ran after the reply started"
    u = out["u"]
    assert u.steps > paused_at  # resumed after the marker went
    assert u.examples > 0 and u.users == 2
    assert len(u.b_arrays) == len(ad.b) and u.update_norm > 0
    assert tree_digest(home / "users") == before
    assert not (home / "federated" / "work").exists() or not any((home / "federated" / "work").iterdir())


def test_join_rules_and_leave_keeps_data(home, capsys):
    from cli.main import main
    from federated import config as config_mod

    assert main(["federate", "join", "192.168.1.9:9092", "--insecure", "--record-only"]) != 0
    assert "only allowed on loopback" in capsys.readouterr().err
    assert main(["federate", "join", "192.168.1.9:9092", "--record-only"]) != 0
    assert "--root-certificates" in capsys.readouterr().err
    assert config_mod.joined() is None
    add_user(home, "ana")
    before = tree_digest(home / "users")
    assert main(["federate", "join", "127.0.0.1:9092", "--insecure", "--record-only"]) == 0
    assert config_mod.joined()["address"] == "127.0.0.1:9092"
    assert main(["federate", "leave"]) == 0
    assert config_mod.joined() is None and tree_digest(home / "users") == before


def test_certs_for_tls(tmp_path):
    from cryptography import x509

    from federated.certs import make_certs

    folder = make_certs(tmp_path / "certs", "192.168.1.9")
    cert = x509.load_pem_x509_certificate((folder / "server.pem").read_bytes())
    ips = [str(ip) for ip in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
           .get_values_for_type(x509.IPAddress)]
    assert "192.168.1.9" in ips and oct((folder / "server.key").stat().st_mode)[-3:] == "600"


NO_SOCKET = r"""
import socket, sys
class Forbidden(socket.socket):
    def __init__(self, *a, **k):
        raise SystemExit("SOCKET OPENED")
socket.socket = Forbidden
sys.argv = ["assistant"] + sys.argv[1:]
from cli.main import main
from federated.device import start_if_joined
rc = main(["federate", "status"])
assert start_if_joined() is None
print("NO SOCKET", rc)
"""


@pytest.mark.slow  # a subprocess
def test_a_device_that_never_joined_opens_no_socket(home):
    """`federate status` and the front ends' start hook, in a fresh interpreter where creating
    any socket ends the process: a device that never ran `join` opens none."""
    add_user(home, "ana")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", NO_SOCKET], env=env, capture_output=True, text=True, timeout=120,
                         cwd=str(ROOT))
    assert "NO SOCKET 0" in out.stdout, out.stdout + out.stderr
    assert "not joined" in out.stdout


@pytest.mark.real
def test_real_model_device_update_is_b_only(home, real_engine, tmp_path):
    """On the default model: a device's update from a fresh community adapter trains only B
    (184,320 entries at rank 8 on q/k/v/o of the top 15 of 30 layers, `learning.layer_share`), leaves A as sent, and reads its users' data only."""
    import copy

    import numpy as np

    from assistant import settings as settings_mod
    from federated import config as config_mod
    from federated import lora
    from federated.local import load_training_engine, train_update
    from personalization import trainer

    (home / "config.toml").write_text("[memory]\nenabled = false\n")
    add_user(home, "ana")
    before = tree_digest(home / "users")
    settings = settings_mod.load()
    engine = load_training_engine(settings)
    model = trainer.create(copy.deepcopy(engine.model), settings.learning)
    model.save_pretrained(str(tmp_path / "fresh"))
    ad = lora.read(tmp_path / "fresh")
    cfg = config_mod.FederatedConfig(idle_seconds=0.0, max_cpu_percent=100.0, require_mains=False, steps=2, max_len=96)
    u = train_update(ad, "general", cfg, settings=settings, engine=engine, time_budget_s=300)
    assert sum(a.size for a in u.b_arrays) == 184_320
    assert u.steps == 2 and u.update_norm > 0 and u.examples > 0
    assert any(not np.allclose(new, old) for new, old in zip(u.b_arrays, ad.b_arrays(), strict=False))
    assert tree_digest(home / "users") == before
