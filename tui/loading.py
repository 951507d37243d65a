"""What the first start does and how long it takes: a plan of steps with estimates, and a
progress line that follows the engine's messages.

The first start converts the packaged GGUF into a safetensors folder (once), loads it, measures
which dtype is fastest here (once) and loads the memory's embedder. On a 2-core Xeon under a load
of about 3 that took: conversion 29 s for the 98 MB GGUF, calibration 73 s for the 538 MB of
float32 weights, the embedder 3 s; the estimates below scale those by size and by how busy the
machine is now. Later starts only load the model and the embedder (a few seconds).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONVERT_S_PER_MB = 0.30  # seconds per MB of GGUF
CALIBRATE_S_PER_MB = 0.14  # seconds per MB of float32 weights
LOAD_S_PER_MB = 0.01
EMBEDDER_S = 4.0
F32_PER_GGUF_MB = 5.5  # the default Q4_1 GGUF (98 MB) dequantizes to 538 MB of float32


@dataclass
class Step:
    key: str  # "convert", "load", "calibrate", "embedder"
    label: str
    estimate_s: float
    once: bool = False


@dataclass
class LoadProgress:
    steps: list[Step]
    current: int = -1
    started: float = field(default_factory=time.monotonic)
    step_started: float = field(default_factory=time.monotonic)
    detail: str = ""

    @property
    def first_start(self) -> bool:
        return any(s.once for s in self.steps)

    def advance(self, key: str, detail: str = "") -> None:
        """The step ``key`` began (steps not in the plan are added, without an estimate)."""
        index = next((i for i, s in enumerate(self.steps) if s.key == key), None)
        if index is None:
            self.steps.insert(self.current + 1, Step(key, detail or key, 0.0))
            index = self.current + 1
        if index != self.current:
            self.current = index
            self.step_started = time.monotonic()
        self.detail = detail

    def on_message(self, message: str) -> None:
        """A progress message from ``Engine.load`` (model_store and calibrate)."""
        text = message.lower()
        if text.startswith("convert") and "converted in" not in text:
            self.advance("convert", message)
        elif text.startswith("loading"):
            self.advance("load", message)
        elif text.startswith("measuring") or "calibrat" in text:
            self.advance("calibrate", message)
        else:
            self.detail = message

    def remaining_s(self) -> float:
        if self.current < 0:
            return sum(s.estimate_s for s in self.steps)
        step = self.steps[self.current]
        left = max(step.estimate_s - (time.monotonic() - self.step_started), 0.0)
        return left + sum(s.estimate_s for s in self.steps[self.current + 1:])

    def line(self) -> str:
        """E.g. "step 2/4: measuring this CPU's speed (once) · 35 s · about 40 s left"."""
        if self.current < 0:
            return "starting…"
        step = self.steps[self.current]
        elapsed = time.monotonic() - self.step_started
        parts = [f"step {self.current + 1}/{len(self.steps)}: {step.label}", f"{elapsed:.0f} s"]
        left = self.remaining_s()
        if step.estimate_s and elapsed > step.estimate_s * 1.5:
            parts.append("taking longer than estimated (a busy machine?)")
        elif left >= 1:
            parts.append(f"about {_human(left)} left")
        return " · ".join(parts)


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    return f"{seconds / 60:.0f} min"


def busy_factor() -> float:
    """How much slower than the measured estimates this machine is now (>= 1)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 1.0
    return max(1.0, load / max(os.cpu_count() or 1, 1))


def _model_sizes(settings: Any) -> tuple[Path | None, float, float, bool]:
    """(model folder, GGUF MB, float32 MB, needs conversion) for ``settings.model.name``."""
    from assistant import model_store, paths

    name = settings.model.name
    gguf: Path | None = None
    folder: Path | None = None
    try:
        if name == "default":
            gguf = model_store.default_gguf()
            folder = paths.models_dir() / model_store.DEFAULT_MODEL_ID
        else:
            path = Path(name).expanduser()
            if path.is_dir() and (path / "config.json").is_file():
                folder = path
            elif path.is_file() or path.is_dir():
                gguf = path if path.is_file() else next(iter(sorted(path.glob("*.gguf"))), None)
                if gguf is not None:
                    folder = paths.models_dir() / model_store._slug(gguf)
    except Exception:  # noqa: BLE001 - Engine.load reports the real problem
        return None, 0.0, 0.0, False
    convert = folder is not None and gguf is not None and not (folder / model_store.SOURCE_FILE).is_file()
    gguf_mb = gguf.stat().st_size / 1e6 if gguf is not None and gguf.is_file() else 0.0
    weights = sorted(folder.glob("*.safetensors")) if folder is not None and folder.is_dir() else []
    f32_mb = sum(w.stat().st_size for w in weights) / 1e6 if weights else gguf_mb * F32_PER_GGUF_MB
    return folder, gguf_mb, f32_mb, convert


def _calibrated(folder: Path | None) -> bool:
    """Whether calibration was measured on this CPU with this torch (any thread count): the
    engine's exact key needs torch imported, which alone takes long on a busy machine, and this
    is only for the estimate."""
    from importlib.metadata import PackageNotFoundError, version

    from assistant.calibration import CALIBRATION_FILE

    if folder is None:
        return False
    try:
        known = json.loads((folder / CALIBRATION_FILE).read_text())
        torch_version = version("torch")
    except (OSError, ValueError, PackageNotFoundError):
        return False
    from assistant.calibration import cpu_name

    cpu = cpu_name()
    return any(key.startswith(cpu + "|") and f"|torch={torch_version}|" in key for key in known)


def plan(settings: Any) -> list[Step]:
    """The steps this start will take, with estimates (quick: no torch import)."""
    folder, gguf_mb, f32_mb, convert = _model_sizes(settings)
    slow = busy_factor()
    steps: list[Step] = []
    if convert:
        steps.append(Step("convert", "converting the model to a fast format (once)",
                          CONVERT_S_PER_MB * gguf_mb * slow, once=True))
    steps.append(Step("load", "loading the model", (1.0 + LOAD_S_PER_MB * f32_mb) * slow))
    if "auto" in (settings.model.prefill_dtype, settings.model.decode_dtype) and not _calibrated(folder):
        steps.append(Step("calibrate", "measuring this CPU's speed per number format (once)",
                          CALIBRATE_S_PER_MB * f32_mb * slow, once=True))
    if settings.memory.enabled:
        steps.append(Step("embedder", "loading the memory's embedder", EMBEDDER_S * slow))
    return steps


def intro(steps: list[Step]) -> str:
    """The note shown in the chat on a first start: what happens and how long it takes."""
    total = sum(s.estimate_s for s in steps)
    names = ", ".join(f"{s.label} (about {_human(s.estimate_s)})" for s in steps if s.estimate_s >= 1)
    return (f"First start: preparing the model, about {_human(total)} in all: {names}. This happens once; "
            "later starts take seconds. You can type your first message meanwhile.")
