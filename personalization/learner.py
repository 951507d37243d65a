"""Learning rounds: journal -> dataset -> LoRA candidate -> gate -> publish (or keep the live one).

``Learner.run_round`` runs one round now (``assistant learn``). In the long-running front ends
(TUI, local server) ``Learner.start()`` listens to new turns and feedback and runs a round in a
background thread once enough new examples have gathered and the user has been idle a while.
Training pauses between steps while a reply is being generated, so a reply waits at most one
step; training uses its own copy of the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Callable

from assistant.adapters import AdapterStore, training_ledger
from assistant.errors import AssistantError
from personalization import dataset as dataset_mod
from personalization import gate as gate_mod
from personalization import trainer as trainer_mod

STATE = "state.json"
TRAIN_SHARE = 0.6  # of the round's time budget; the gate gets the rest


@dataclass
class RoundResult:
    user: str
    pack: str
    promoted: bool
    version: str | None  # the version published by this round (None when the gate rejected it)
    live: str | None  # the live version after the round
    decision: gate_mod.Decision | None
    examples: int
    steps: int
    train_seconds: float
    train_tokens: int
    seconds: float
    message: str = ""
    stopped: str = ""
    fallback: str = ""  # when the user has no live version of their own: the pack's adapter that applies

    def table(self) -> str:
        why = f" ({self.stopped})" if self.stopped else ""
        head = (f"round for {self.user}/{self.pack}: {self.examples} training examples, {self.steps} steps{why}, "
                f"{self.train_seconds:.0f} s training ({self.train_tokens / max(self.train_seconds, 1e-9):.0f} tokens/s), "
                f"{self.seconds:.0f} s in all")
        body = "\n".join(x for x in (self.decision.table() if self.decision else "", self.message) if x)
        own = self.live or (f"none of its own: the pack's starting adapter {self.fallback} applies" if self.fallback
                            else "none (base model)")
        tail = f"live adapter: {own}"
        return "\n".join([head, body, tail])


@dataclass
class Status:
    user: str
    pack: str
    pending: int
    running: bool
    progress: dict[str, Any] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    live: str | None = None
    versions: list[str] = field(default_factory=list)


def _read_state(store: AdapterStore) -> dict[str, Any]:
    try:
        return json.loads((store.root / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(store: AdapterStore, state: dict[str, Any]) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    tmp = store.root / f"{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, store.root / STATE)


class Learner:
    def __init__(self, assistant: Any) -> None:
        self.assistant = assistant
        self.settings = assistant.settings.learning
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], dict[str, Any]] = {}
        self._last_activity = time.monotonic()
        self._timer: threading.Timer | None = None
        self._due: set[tuple[str, str]] = set()  # (user, pack) with new turns or feedback since their check
        self._due_lock = threading.Lock()
        self._stop = threading.Event()
        self._base_general = gate_mod.BaseNumbers()
        self.listeners: list[Callable[[str, str, Any], None]] = []  # (user, pack, event) for UIs

    # ------------------------------------------------------------------ what is pending
    def pending(self, user: str, pack: str) -> int:
        store = AdapterStore(user, pack)
        since = _read_state(store).get("last_round_at", 0.0)
        feedback = [t for t in self.assistant.journal(user).feedback(pack, since) if t.correction or t.rating == 1]
        return len(feedback)

    def status(self, user: str, pack: str) -> Status:
        store = AdapterStore(user, pack)
        state = _read_state(store)
        running = self._running.get((user, pack))
        return Status(user, pack, self.pending(user, pack), running is not None, dict(running or {}),
                      state.get("last_result", {}), store.current(), store.versions())

    # ------------------------------------------------------------------ one round
    def run_round(
        self, user: str, pack_id: str, *, on_progress: Callable[[trainer_mod.Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> RoundResult:
        t0 = time.perf_counter()
        pack = self.assistant.pack(pack_id)
        store = AdapterStore(user, pack_id)
        store.clean_staging()
        journal = self.assistant.journal(user)
        turns = journal.turns(pack=pack_id)
        mem = self.assistant.memory(user)
        facts = mem.list(kinds=("fact", "preference")) if mem is not None else []
        system = pack.system_prompt()
        data = dataset_mod.build(turns, facts, pack.train_examples(), system, replay_ratio=self.settings.replay_ratio,
                                 seed_value=self.settings.seed)
        data.ledger_of = (turns, facts)  # what the version will have seen (adapters.training_ledger)
        data.left_out = self._screen(data, pack, mem)
        store.current()  # raises AdapterError when `current` names a missing version
        # Where this round starts from and what it must beat: the user's live adapter, else the
        # pack's starting adapter (`assistant pack train`), else the base model.
        from assistant.adapters import live_for

        source = live_for(user, pack_id, self.assistant.engine.model, shipped=pack.adapter_dir())
        return self._round(user, pack, store, data, source, t0, on_progress, should_stop)

    def train_pack(self, pack_id: str, *, steps: int | None = None, time_budget_s: float = 1200.0,
                   on_progress: Callable[[trainer_mod.Progress], None] | None = None) -> RoundResult:
        """Train the pack's starting adapter from its ``train.jsonl``, through the same gate."""
        from assistant.adapters import pack_store

        t0 = time.perf_counter()
        pack = self.assistant.pack(pack_id)
        store = pack_store(pack_id)
        store.clean_staging()
        examples = self._pack_examples(pack)
        data = dataset_mod.Dataset()
        for i, ex in enumerate(sorted(examples, key=lambda e: e.turn_id)):
            # Every 5th example is held out for the gate, at most 16 (scoring generates answers).
            (data.heldout if i % 5 == 0 and len(data.heldout) < 16 else data.train).append(ex)
        current = store.current()
        # this round's own budget: the shared settings (read by other threads) stay as they are
        budget = dataclasses.replace(self.settings, max_steps=steps or min(400, 2 * len(data.train)),
                                     time_budget_s=max(self.settings.time_budget_s, time_budget_s))
        return self._round("_pack", pack, store, data, (store, current) if current else None, t0, on_progress, None,
                           budget)

    def _pack_examples(self, pack: Any) -> list[Any]:
        """A pack with notes: grounding examples (``personalization.grounded``), its seed questions
        asked with the notes the chat would show; without notes: the seed examples as written."""
        system = pack.system_prompt()
        seed = pack.train_examples()
        if not pack.knowledge_files():
            return [dataset_mod.Example([{"role": "system", "content": system}, {"role": "user", "content": e["prompt"]}],
                                        e["answer"], "seed", turn_id=e["id"]) for e in seed]
        from memory import embedder as embedder_mod
        from memory.knowledge import KnowledgeBase
        from personalization import grounded

        embedder = embedder_mod.get(self.assistant.settings.memory.embedder)
        notes = KnowledgeBase.open(pack.id, embedder, pack.knowledge_files())
        return grounded.build(seed, notes, embedder, system, random.Random(self.settings.seed))

    @staticmethod
    def _screen(data: Any, pack: Any, mem: Any) -> list[str]:
        """Leave out the examples whose figures contradict the pack's notes (``screen``); say which."""
        from personalization import screen

        if mem is None or not pack.knowledge_files():
            return []
        notes_for = screen.note_lookup(mem.knowledge(pack.id, pack.knowledge_files()), mem.embedder)
        found = screen.against_notes(data.train + data.pairs + data.heldout, notes_for)
        bad = {id(c.example) for c in found}
        data.train = [e for e in data.train if id(e) not in bad]
        data.pairs = [e for e in data.pairs if id(e) not in bad]
        data.heldout = [e for e in data.heldout if id(e) not in bad]
        # one line per turn or memory whose teaching was left out (each gives several examples)
        by_source = {c.example.turn_id or c.example.memory_id or id(c.example): c.describe() for c in found}
        return list(by_source.values())

    def _round(self, user: str, pack: Any, store: AdapterStore, data: Any, source: Any, t0: float,
               on_progress: Callable[[trainer_mod.Progress], None] | None, should_stop: Callable[[], bool] | None,
               settings: Any = None) -> RoundResult:
        settings = settings or self.settings  # the round's budget (train_pack passes its own)
        pack_id = pack.id
        live = store.current()
        started = time.time()
        left_out = getattr(data, "left_out", [])
        note = ""
        if left_out:
            n = len(left_out)
            note = f"{n} turn{'s' if n > 1 else ''} not learned: " + "; ".join(dict.fromkeys(left_out))
        if not data.train:
            result = RoundResult(user, pack_id, False, None, live, None, 0, 0, 0.0, 0, time.perf_counter() - t0,
                                 f"nothing to learn: {note}" if note else
                                 "nothing to learn yet: rate (/good) or correct (/correct) some answers first",
                                 fallback=self._fallback(source, store, live))
            self._remember(store, started, result)
            return result
        engine = self.assistant.engine
        base = copy.deepcopy(self._base_model(engine))
        model = trainer_mod.resume(base, source[0].path(source[1])) if source else trainer_mod.create(base, settings)
        examples = data.train + getattr(data, "pairs", []) + data.replay
        key = (user, pack_id)
        budget = float(settings.time_budget_s)
        self._running[key] = {"phase": "training", "examples": len(examples), "budget_s": budget}

        def report(p: trainer_mod.Progress) -> None:
            elapsed = time.perf_counter() - t0
            self._running[key] = {"phase": p.phase, "examples": p.examples, "step": p.step, "steps": p.total_steps,
                                  "loss": round(p.loss, 4), "eta_s": round(p.eta_s, 1),
                                  "elapsed_s": round(elapsed, 1), "budget_s": budget}
            for listener in self.listeners:
                listener(user, pack_id, self._running[key])
            if on_progress:
                on_progress(p)

        # The whole round keeps to the time budget: training gets its share, the rest is the gate's.
        train_settings = copy.copy(settings)
        train_settings.time_budget_s = max(5.0, budget * TRAIN_SHARE - (time.perf_counter() - t0))
        try:
            trained = trainer_mod.train(
                model, engine.tokenizer, engine.render, examples, train_settings, on_progress=report,
                should_pause=lambda: getattr(engine, "generating", False), should_stop=should_stop,
            )
            gating = self._gating(report, len(examples), trained.final_loss)
            decision, sets = self._judge(engine, pack, data, model, source, gating)
            version = None
            if decision.promote:
                self._running[key] = {"phase": "saving"}
                staged = store.staging_dir()
                model.save_pretrained(str(staged))
                _test_pause("PA_TEST_PAUSE_BEFORE_PUBLISH")
                parent = f"{source[0].user}/{source[1]}" if source else None
                meta = self._meta(engine, data, trained, decision, parent)
                meta["gate_sets"] = sets
                meta["sources"] = data.sources()  # the turn ids and memory ids this version trained on
                turns, facts = getattr(data, "ledger_of", ((), ()))
                meta["ledger"] = training_ledger(data, turns, facts, parent=source)
                version = store.publish(staged, meta, base=engine.model)
                live = version
                keep = self.settings.keep_versions
                if keep > 0:
                    store.prune(keep)
            out = RoundResult(user, pack_id, decision.promote, version, live, decision, len(examples), trained.steps,
                              trained.seconds, trained.tokens, time.perf_counter() - t0, message=note,
                              stopped=trained.stopped, fallback=self._fallback(source, store, live))
            self._remember(store, started, out)
            return out
        finally:
            self._running.pop(key, None)
            store.clean_staging()

    @staticmethod
    def _fallback(source: Any, store: AdapterStore, live: str | None) -> str:
        if live is not None or source is None or source[0].user == store.user:
            return ""
        return source[0].label(source[1])

    @staticmethod
    def _gating(report: Callable[[trainer_mod.Progress], None], examples: int, loss: float) -> Callable[[int], None]:
        """Progress through the gate's parts, in the same shape as training's."""
        t0 = time.perf_counter()
        parts = ["live side", "candidate", "answers"]

        def gating(done: int) -> None:
            report(trainer_mod.Progress(examples, done, len(parts), loss, time.perf_counter() - t0,
                                        phase=f"evaluating ({parts[min(done, len(parts) - 1)]})"))
        return gating

    def _judge(self, engine: Any, pack: Any, data: Any, model: Any, source: Any,
               gating: Callable[[int], None]) -> tuple[gate_mod.Decision, str]:
        """Score the live side and the candidate and apply the gate's rule."""
        pack_id = pack.id
        gating(0)
        evals, guard, sets = self._gate_sets(pack)
        near = gate_mod.near_examples(data.train, pack.eval_probes(), pack.system_prompt())
        # The live side's eval loss and guard perplexity do not depend on the user's data:
        # reuse them from the live version's meta.json, or from the base model's cache.
        known = self._known_general(engine, pack_id, source, sets)
        # The held-out answer match (greedy answers on both sides) is only measured when the
        # held-out loss alone does not already show the improvement the gate asks for.
        live_model = self._live_model(engine, source) if source else None
        scorer = live_model if live_model is not None else model

        def live_side() -> Any:  # the live weights: its own merged copy, or the base under the candidate
            return gate_mod.merged(live_model) if live_model is not None else model.disable_adapter()

        with live_side():
            live_scores = gate_mod.score(scorer, engine.tokenizer, engine.render, data.heldout, evals, guard,
                                         engine.eos_ids, known, match=False, near=near)
        if source is None:
            self._base_general[(engine.name, pack_id, sets)] = (live_scores.eval_loss, live_scores.guard_ppl,
                                                                live_scores.eval_pass)
        gating(1)
        with gate_mod.merged(model):  # scored after the live side, which may use the same base weights
            cand = gate_mod.score(model, engine.tokenizer, engine.render, data.heldout, evals, guard, engine.eos_ids,
                                  match=False, near=near)
            gating(2)
            if not gate_mod.loss_improved(live_scores, cand):
                cand.user_match = gate_mod.answer_match(model, engine.tokenizer, engine.render, data.heldout,
                                                        engine.eos_ids)
        if cand.user_match == cand.user_match:  # measured: the live side too, for the comparison
            with live_side():
                live_scores.user_match = gate_mod.answer_match(scorer, engine.tokenizer, engine.render,
                                                               data.heldout, engine.eos_ids)
        separate = data.heldout_is_separate
        if gate_mod.second_look(live_scores, cand, self.settings, separate):
            wide = gate_mod.eval_examples(pack.eval_probes(), pack.system_prompt(), limit=gate_mod.WIDE_PROBES)
            if len(wide) > len(evals):
                with live_side():
                    live_scores.eval_pass_all = gate_mod.eval_pass_rate(scorer, engine.tokenizer, engine.render,
                                                                        wide, engine.eos_ids)
                with gate_mod.merged(model):
                    cand.eval_pass_all = gate_mod.eval_pass_rate(model, engine.tokenizer, engine.render, wide,
                                                                 engine.eos_ids)
        return gate_mod.decide(live_scores, cand, self.settings, separate), sets

    def _base_model(self, engine: Any) -> Any:
        """A float32 copy of the base weights (the engine's may hold a merged adapter)."""
        import torch

        model = copy.deepcopy(engine.model).float()
        params = dict(model.named_parameters())
        for name, base in getattr(engine, "_base_weights", {}).items():
            params[name].data.copy_(base)
        for p in model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(self.settings.seed)
        return model

    def base_general(self, pack_id: str) -> dict[str, float]:
        """The base model's pack eval loss, pack eval pass rate and guard-set perplexity, as the
        gate measures them (cached: they do not depend on any user)."""
        engine = self.assistant.engine
        evals, guard, sets = self._gate_sets(self.assistant.pack(pack_id))
        key = (engine.name, pack_id, sets)
        if key not in self._base_general:
            s = gate_mod.score(self._base_model(engine), engine.tokenizer, engine.render, [], evals, guard, engine.eos_ids)
            self._base_general[key] = (s.eval_loss, s.guard_ppl, s.eval_pass)
        loss, ppl, passed = self._base_general[key]
        return {"eval_loss": loss, "guard_ppl": ppl, "eval_pass": passed}

    @staticmethod
    def _gate_sets(pack: Any) -> tuple[list[Any], list[str], str]:
        """The gate's pack eval examples, guard texts and their fingerprint."""
        evals = gate_mod.eval_examples(pack.eval_probes(), pack.system_prompt())
        guard = gate_mod.guard_texts()
        return evals, guard, gate_mod.fingerprint(evals, guard)

    def _known_general(self, engine: Any, pack_id: str, source: Any, sets: str) -> tuple[float, float, float] | None:
        if source is None:
            return self._base_general.get((engine.name, pack_id, sets))
        try:
            meta = source[0].meta(source[1])
        except AssistantError:
            return None
        cand = meta.get("gate", {}).get("candidate", {})
        if meta.get("gate_sets") == sets and all(k in cand for k in ("eval_loss", "guard_ppl", "eval_pass")):
            def num(v: Any) -> float:
                return float("nan") if v is None else float(v)  # null: not measurable on these sets

            return num(cand["eval_loss"]), num(cand["guard_ppl"]), num(cand["eval_pass"])
        return None

    def _live_model(self, engine: Any, source: Any) -> Any:
        """The live adapter (a user's or the pack's) on its own float32 copy of the base weights."""
        from assistant.adapters import load_peft

        store, live = source
        model = load_peft(self._base_model(engine), store.path(live), trainable=False)
        model.eval()
        return model

    def _meta(self, engine: Any, data: Any, result: Any, decision: Any, parent: str | None) -> dict[str, Any]:
        libs = {}
        for lib in ("torch", "transformers", "peft"):
            try:
                libs[lib] = version(lib)
            except Exception:
                libs[lib] = "unknown"
        return {
            "base_model": engine.name, "parent": parent, "created": time.time(), "libraries": libs,
            "steps": result.steps, "train_tokens": result.tokens, "train_seconds": round(result.seconds, 2),
            "final_loss": result.final_loss, "data_hash": data.hash(), "examples": len(data.train) + len(data.replay),
            "heldout": len(data.heldout), "lora": {"r": self.settings.rank, "alpha": self.settings.alpha,
                                                    "targets": list(self.settings.targets)},
            "seed": self.settings.seed, "gate": decision.to_json(),
        }

    def _remember(self, store: AdapterStore, started: float, result: RoundResult) -> None:
        state = _read_state(store)
        state["last_round_at"] = started
        state["last_result"] = {
            "at": started, "promoted": result.promoted, "version": result.version, "live": result.live,
            "reason": "; ".join(x for x in (result.decision.reason if result.decision else "", result.message) if x),
            "gate": result.decision.to_json() if result.decision else None,
        }
        _write_state(store, state)
        for listener in self.listeners:
            listener(result.user, result.pack, {"phase": "done", **state["last_result"]})

    # ------------------------------------------------------------------ background
    def start(self) -> None:
        """Listen to the assistant's turns; rounds start by themselves when due."""
        if self.notify not in self.assistant.listeners:
            self.assistant.listeners.append(self.notify)

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()

    def notify(self, user: str, pack: str) -> None:
        """A turn or feedback for ``(user, pack)``. Rounds wait until the whole assistant has been
        idle for ``idle_seconds`` (training shares the CPU with replies); then every user and pack
        noted since their last check gets one, so a second user's activity never drops the
        first one's round."""
        self._last_activity = time.monotonic()
        if not self.settings.enabled or self._stop.is_set():
            return
        with self._due_lock:
            self._due.add((user, pack))
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.settings.idle_seconds, self._run_due)
            self._timer.daemon = True
            self._timer.start()

    def _run_due(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._last_activity < self.settings.idle_seconds - 0.1:
                return  # activity since: the timer it started will come back
            with self._due_lock:
                if not self._due:
                    return
                user, pack = sorted(self._due)[0]
                self._due.discard((user, pack))
            self._maybe_run(user, pack)

    def _maybe_run(self, user: str, pack: str) -> None:
        if self._stop.is_set() or (user, pack) in self._running:
            return
        if self.pending(user, pack) < self.settings.min_new_examples:
            return
        with self._lock:
            try:
                self.run_round(user, pack, should_stop=self._stop.is_set)
            except AssistantError as exc:
                for listener in self.listeners:
                    listener(user, pack, {"phase": "failed", "error": str(exc)})
            except Exception as exc:  # a background round must never take the app down
                for listener in self.listeners:
                    listener(user, pack, {"phase": "failed", "error": f"{type(exc).__name__}: {exc}"})


def attach(assistant: Any) -> Any:
    """Wire the learner into an assistant (front ends call this; the core never imports learning)."""
    assistant.wire_learner(Learner)
    return assistant


def _test_pause(name: str) -> None:
    """Crash-safety tests set this to get a window in which to kill the process."""
    seconds = os.environ.get(name)
    if seconds:
        marker = os.environ.get(name + "_MARKER")
        if marker:
            open(marker, "w").close()
        time.sleep(float(seconds))
