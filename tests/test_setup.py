"""`assistant setup`: what a new user runs first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cli.main import _timing_line
from cli.main import main as cli_main


def test_timing_line_handles_decode_only_dtypes():
    # int8 weights are calibrated for decoding only: no prefill timing (this was a KeyError)
    assert _timing_line({"decode_token_s": 0.025}) == "prefill not measured (decode only), decode 40.0 tok/s"
    assert _timing_line({"prefill_256_s": 0.25, "decode_token_s": 0.05}) == "prefill 256 tokens 0.250 s, decode 20.0 tok/s"
    assert _timing_line({}) == "prefill not measured (decode only)"


def _copy_model(src: Path, dest: Path, calibration: bool = False) -> None:
    """The converted model, without its calibration unless asked (hard links: the shared cache is
    never written; calibration.json is written by rename into this copy only)."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.name.startswith("calibration"):
            if calibration and f.name == "calibration.json":
                shutil.copy2(f, dest / f.name)
            continue
        try:
            os.link(f, dest / f.name)
        except OSError:
            shutil.copy2(f, dest / f.name)


@pytest.mark.real
@pytest.mark.timeout(2400)  # calibration measures three dtypes: minutes on a loaded machine
def test_setup_from_an_empty_home_on_the_real_model(tmp_path, monkeypatch, capsys, real_models_dir):
    home = tmp_path / "fresh-home"
    home.mkdir()
    monkeypatch.setenv("ASSISTANT_HOME", str(home))
    from assistant import model_store

    src = real_models_dir / model_store.DEFAULT_MODEL_ID
    _copy_model(src, home / "models" / model_store.DEFAULT_MODEL_ID)
    assert not (home / "models" / model_store.DEFAULT_MODEL_ID / "calibration.json").exists()
    assert cli_main(["setup"]) == 0
    out = capsys.readouterr().out
    assert f"data directory: {home}" in out
    assert "already prepared" in out
    assert "dtypes: prefill in" in out and "decode in" in out
    assert "float32: prefill 256 tokens" in out
    from assistant import int8

    if int8.available():
        assert "int8: prefill not measured (decode only), decode" in out
    assert "embedder: " in out and "384 dimensions" in out
    assert "setup done in" in out
    assert (home / "models" / model_store.DEFAULT_MODEL_ID / "calibration.json").is_file()
    assert not (src / "calibration.json.tmp").exists()
    # run again: calibration is cached, and setup still prints every dtype
    assert cli_main(["setup", "--no-memory"]) == 0
    again = capsys.readouterr().out
    assert "measuring" not in again and "dtypes: prefill in" in again


@pytest.mark.real
def test_setup_with_a_cached_decode_only_calibration(tmp_path, monkeypatch, capsys, real_models_dir):
    """The reported crash: a calibration that measured int8 decoding (no prefill time) is cached."""
    import json

    from assistant import model_store
    from assistant.calibration import CALIBRATION_FILE, machine_id
    from assistant.sampling import set_threads
    from assistant.settings import load

    home = tmp_path / "cached-home"
    monkeypatch.setenv("ASSISTANT_HOME", str(home))
    dest = home / "models" / model_store.DEFAULT_MODEL_ID
    _copy_model(real_models_dir / model_store.DEFAULT_MODEL_ID, dest, calibration=True)
    set_threads(load().model.threads)
    known = json.loads((dest / CALIBRATION_FILE).read_text()) if (dest / CALIBRATION_FILE).is_file() else {}
    if machine_id() not in known:  # make it so: the shape calibrate() writes when int8 is measured
        known[machine_id()] = {"prefill": "float32", "decode": "int8", "measured_at": 0,
                               "timings": {"float32": {"decode_token_s": 0.05, "prefill_256_s": 0.3},
                                           "int8": {"decode_token_s": 0.03}}}
        (dest / CALIBRATION_FILE).write_text(json.dumps(known))
    timings = known[machine_id()]["timings"]
    assert cli_main(["setup", "--no-memory"]) == 0
    out = capsys.readouterr().out
    for name, t in timings.items():
        assert f"  {name}: " in out
        if "prefill_256_s" not in t:
            assert f"  {name}: prefill not measured (decode only)" in out
    assert "measuring" not in out and "setup done in" in out
