"""A device's part of a round: train B from the community adapter on this device's own users.

Reads each user's journal and stated facts through the same code the personal learner uses
(``personalization.dataset.build``) and trains with ``personalization.trainer``; what leaves
this module is only the B matrices and counts. Nothing of the user's data is written: the
adapter being trained lives in ``federated/work/`` and is removed afterwards, so a device killed
mid-round loses nothing (its journal, memories and adapters were only read).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable

from assistant import paths
from federated import lora
from federated.config import FederatedConfig, FederatedError, fed_dir


@dataclass
class LocalUpdate:
    b_arrays: list[Any]
    examples: int  # the users' own training examples (replay from the pack not counted)
    replay: int
    users: int
    steps: int
    seconds: float
    stopped: str
    update_norm: float


def load_training_engine(settings: Any) -> Any:
    """The base model in float32 with its tokenizer and chat template, no dtype calibration
    (training needs float32 weights, not the fastest decoding)."""
    from assistant import model_store
    from assistant.engine import Engine

    resolved = model_store.resolve(settings.model.name)
    model, tokenizer = model_store.load_folder(resolved.folder)
    for p in model.parameters():
        p.requires_grad_(False)
    return Engine(model, tokenizer, name=resolved.name, prefill_dtype="float32", decode_dtype="float32",
                  context_tokens=settings.model.context_tokens)


def device_examples(assistant: Any, pack_id: str, seed: int = 0) -> tuple[list[Any], list[Any], int]:
    """(own training examples, replay examples, users with data) of every user on this device.
    Each user's held-out examples stay out, as in the personal learner."""
    from personalization import dataset as dataset_mod

    pack = assistant.pack(pack_id)
    system = pack.system_prompt()
    own: list[Any] = []
    replay: dict[str, Any] = {}
    users = 0
    root = paths.users_dir()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not (folder / "journal.sqlite3").is_file():
            continue
        user = folder.name
        turns = assistant.journal(user).turns(pack=pack_id)
        mem = assistant.memory(user)
        facts = mem.list(kinds=("fact", "preference")) if mem is not None else []
        data = dataset_mod.build(turns, facts, pack.train_examples(), system,
                                 replay_ratio=assistant.settings.learning.replay_ratio, seed_value=seed)
        if not turns and not facts:
            continue
        users += 1
        own += data.train
        for ex in data.replay:
            replay.setdefault(ex.key(), ex)
    return own, list(replay.values()), users


def train_update(adapter: lora.Adapter, pack_id: str, cfg: FederatedConfig, *, steps: int | None = None,
                 seed: int = 0, should_pause: Callable[[], bool] | None = None,
                 should_stop: Callable[[], bool] | None = None, time_budget_s: float = 600.0,
                 settings: Any = None, engine: Any = None) -> LocalUpdate:
    from assistant import settings as settings_mod
    from assistant.core import Assistant
    from personalization import trainer as trainer_mod

    t0 = time.perf_counter()
    settings = settings or settings_mod.load()
    assistant = Assistant(settings, engine=engine)
    own, replay, users = device_examples(assistant, pack_id, seed)
    if not own:
        raise FederatedError("no training data on this device yet: its users have no corrections, "
                             "good ratings or stated facts in this pack")
    replay = replay[: max(4, len(own))]  # as much pack replay as own data: guards the pack's answers
    engine = engine or load_training_engine(settings)
    work = fed_dir() / "work" / f"round-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        lora.write(work / "in", adapter)
        model = trainer_mod.resume(engine.model, work / "in")
        for name, p in model.named_parameters():
            if "lora_A" in name:  # FFA-LoRA: A is the federation's, frozen
                p.requires_grad_(False)
        learn = dataclasses.replace(settings.learning, max_steps=steps or cfg.steps, time_budget_s=time_budget_s,
                                    seed=seed, target_loss=0.0)
        result = trainer_mod.train(model, engine.tokenizer, engine.render, own + replay, learn,
                                   should_pause=should_pause, should_stop=should_stop, max_len=cfg.max_len)
        model.save_pretrained(str(work / "out"))
        new = lora.read(work / "out")
        if set(new.b) != set(adapter.b):
            raise FederatedError("the trained adapter does not match the community adapter's layers")
        arrays = new.b_arrays()
        norm = lora.update_norm(arrays, adapter.b_arrays())
        # The base weights were wrapped in place; unwrap so a reused engine stays the base model.
        if hasattr(model, "unload"):
            model.unload()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return LocalUpdate(arrays, len(own), len(replay), users, result.steps, time.perf_counter() - t0,
                       result.stopped, norm)


def adopt(adapter: lora.Adapter, version: str, pack_id: str) -> str | None:
    """Keep the community adapter the server sent as this device's pack starting adapter (a new
    version in ``pack-adapters/<pack>/``) unless it already has it. Returns the new version."""
    from assistant.adapters import pack_store

    store = pack_store(pack_id)
    cur = store.current()
    if cur is not None:
        try:
            if store.meta(cur).get("community_version") == version:
                return None
        except Exception:
            pass
    staged = store.staging_dir()
    lora.write(staged, adapter)
    return store.publish(staged, {"community_version": version, "source": "federation", "created": time.time(),
                                  "a_fingerprint": adapter.fingerprint()})
