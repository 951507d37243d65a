"""The server's side of a pack's community adapter: the published version, its scores, the
check of each round's aggregate, and publication as a new pack adapter version.

Lives in the server's ``$ASSISTANT_HOME``: the adapter in ``pack-adapters/<pack>/`` (the same
store ``assistant pack train`` writes, so the server's own assistant uses it too), the round
records in ``federated/rounds/<run>/``, the held-out probes in ``federated/heldout-<pack>.json``.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

from federated import lora
from federated.config import fed_dir


class Community:
    def __init__(self, pack_id: str, seed: int = 0, engine: Any = None) -> None:
        from assistant import settings as settings_mod
        from assistant.adapters import pack_store, shipped_store
        from assistant.core import Assistant
        from federated.evaluation import CommunityEval, load_heldout
        from federated.local import load_training_engine

        self.settings = settings_mod.load()
        self.engine = engine or load_training_engine(self.settings)
        self.pack = Assistant(self.settings, engine=self.engine).pack(pack_id)
        self.store = pack_store(pack_id)
        self.store.clean_staging()
        cur = self.store.current()
        shipped = shipped_store(pack_id, self.pack.adapter_dir())
        shipped_cur = shipped.current() if shipped is not None else None
        if cur is not None:
            self.published = lora.read(self.store.path(cur))
            self.version = str(self.store.meta(cur).get("community_version") or f"pack-{cur}")
        elif shipped is not None and shipped_cur is not None:
            # the community starts from the adapter the pack ships, like every user does
            self.published = lora.read(shipped.path(shipped_cur))
            self.version = f"shipped-{shipped_cur}"
        else:
            self.published = self._fresh(seed)
            self.version = "fresh"
        self.work = fed_dir() / "work" / "server"
        self.eval = CommunityEval(self.engine, self.pack, load_heldout(fed_dir() / f"heldout-{pack_id}.json"))
        self.prev_scores: dict[str, Any] | None = None
        self.first_scores: dict[str, Any] | None = None

    def _fresh(self, seed: int) -> lora.Adapter:
        """No pack adapter yet: a new LoRA (random A, zero B), the same on every run with ``seed``."""
        import torch

        from personalization import trainer as trainer_mod

        torch.manual_seed(seed)
        model = trainer_mod.create(copy.deepcopy(self.engine.model), self.settings.learning)
        folder = fed_dir() / "work" / "fresh"
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(str(folder))
        out = lora.read(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return out

    def rounds_dir(self, run_id: int | str) -> Path:
        return fed_dir() / "rounds" / str(run_id)

    def baseline(self) -> dict[str, Any]:
        if self.prev_scores is None:
            self.prev_scores = self.eval.score(self.published, self.work)
            self.first_scores = dict(self.prev_scores)
        return self.prev_scores

    def check(self, rnd: int, arrays: list[Any] | None) -> dict[str, Any]:
        """Score the round's aggregate against the published adapter; publish it when better."""
        from federated.evaluation import decide

        prev = self.baseline()
        rec: dict[str, Any] = {"previous_version": self.version, "previous": prev, "first": self.first_scores}
        if arrays is None:
            rec.update(published=False, reason="no device returned an update", candidate=None, version=self.version)
            return rec
        t0 = time.perf_counter()
        cand = self.published.with_b(arrays)
        scores = self.eval.score(cand, self.work)
        ok, reason = decide(prev, scores, self.settings.learning)
        rec.update(candidate=scores, published=ok, reason=reason, eval_seconds=round(time.perf_counter() - t0, 2))
        if ok:
            staged = self.store.staging_dir()
            lora.write(staged, cand)
            version = f"community-r{rnd}-{int(time.time())}"
            self.store.publish(staged, {"community_version": version, "source": "federation", "round": rnd,
                                        "created": time.time(), "scores": scores, "previous": prev,
                                        "a_fingerprint": cand.fingerprint(), "base_model": self.engine.name})
            self.published, self.version, self.prev_scores = cand, version, scores
        rec["version"] = self.version
        return rec

    def finish(self, run_id: int | str) -> None:
        folder = self.rounds_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "done.json").write_text(json.dumps({"version": self.version, "finished": time.time()}))
        shutil.rmtree(self.work, ignore_errors=True)
