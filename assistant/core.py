"""The turn loop: one user message in, a streamed answer and the memories it used out.

    recall -> prompt.build -> engine.stream -> journal.record -> memory.extract/remember

``Assistant`` owns the long-lived parts (settings, the engine, packs, per-user journals and
memory stores); ``Chat`` is one conversation of one user with one pack.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from assistant import packs as packs_mod
from assistant import prompt as prompt_mod
from assistant import safety
from assistant.answering import GroundedStream, Plan, plan_answer, store_recall
from assistant.engine import Engine
from assistant.errors import AssistantError, PromptError
from assistant.generation import CancelToken, GenParams, GenStats, KVSession, Streamed
from assistant.journal import Turn, new_turn_id
from assistant.settings import Settings
from assistant.styling import Formatter
from assistant.text import clean_text

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_message(message: str) -> str:
    """Drop control characters (binary junk) and surrounding space; refuse an empty message."""
    text = _CONTROL_RE.sub("", clean_text(message)).strip()
    if not text:
        raise PromptError("the message is empty: type a question or statement")
    return text


class LearnerLike(Protocol):
    """What the core and the front ends ask of the background learner (personalization.learner.Learner)."""

    listeners: list[Callable[..., None]]

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def notify(self, user: str, pack: str) -> None: ...
    def pending(self, user: str, pack: str) -> int: ...
    def status(self, user: str, pack: str) -> Any: ...


class Assistant:
    """Shared state for every chat: the engine is loaded lazily, once."""

    def __init__(self, settings: Settings, engine: Engine | None = None, progress: Callable[[str], None] | None = None,
                 learner: Callable[[Assistant], LearnerLike] | None = None) -> None:
        from assistant import crypto

        # An encrypted data directory without its passphrase (or with a wrong one) stops here,
        # with how to unlock it, before the model loads or any store is opened.
        crypto.stores_key()
        self.settings = settings
        self._engine = engine
        self._progress = progress
        self._engine_lock = threading.Lock()
        self._catalog: packs_mod.Catalog | None = None
        self._journals: dict[str, Any] = {}
        self._memories: dict[str, Any] = {}
        self._lock = threading.Lock()
        # Called with (user, pack) after every journalled turn or feedback (the learner listens).
        self.listeners: list[Callable[[str, str], None]] = []
        self._learner: LearnerLike | None = None
        self._make_learner = learner

    # ---------------------------------------------------------------- parts
    @property
    def engine(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = Engine.load(self.settings, self._progress)
            return self._engine

    @property
    def engine_loaded(self) -> bool:
        return self._engine is not None

    @property
    def catalog(self) -> packs_mod.Catalog:
        if self._catalog is None:
            self._catalog = packs_mod.discover()
        return self._catalog

    def pack(self, pack_id: str | None = None) -> packs_mod.Pack:
        return self.catalog.get(pack_id or self.settings.chat.pack)

    def journal(self, user: str):
        from assistant.journal import Journal

        with self._lock:
            if user not in self._journals:
                self._journals[user] = Journal(user)
            return self._journals[user]

    def memory(self, user: str):
        """The user's memory store, or None while memory is switched off in the settings."""
        if not self.settings.memory.enabled:
            return None
        from memory.store import open_store

        with self._lock:
            if user not in self._memories:
                self._memories[user] = open_store(user, self.settings.memory)
            return self._memories[user]

    def wire_learner(self, make: Callable[[Assistant], LearnerLike]) -> None:
        """Plug learning in: the front ends do (the core never imports the learner)."""
        with self._lock:
            if self._make_learner is None:
                self._make_learner = make

    @property
    def learner(self) -> Any:  # a LearnerLike; callers in learning and the front ends use the whole Learner
        """The background learner (rounds start only after ``learner.start()``)."""
        with self._lock:
            if self._learner is None:
                if self._make_learner is None:
                    raise AssistantError("learning is not wired into this assistant: pass learner=Learner "
                                         "(personalization.learner) or call personalization.learner.attach(assistant)")
                self._learner = self._make_learner(self)
            return self._learner

    def notify_turn(self, user: str, pack: str) -> None:
        for listener in list(self.listeners):
            listener(user, pack)

    def forget_user_handles(self, user: str) -> None:
        """Close the user's open files (before `user delete`)."""
        with self._lock:
            journal = self._journals.pop(user, None)
            store = self._memories.pop(user, None)
        if journal is not None:
            journal.close()
        if store is not None:
            store.close()

    def chat(
        self,
        user: str | None = None,
        pack: str | None = None,
        *,
        use_memory: bool = True,
        use_adapter: bool = True,
        conversation_id: str | None = None,
        source: str = "chat",
    ) -> "Chat":
        from assistant.paths import check_user_name

        return Chat(
            self, check_user_name(user or self.settings.chat.user), self.pack(pack),
            use_memory=use_memory, use_adapter=use_adapter, conversation_id=conversation_id, source=source,
        )

    def params(self, pack: packs_mod.Pack, **overrides: Any) -> GenParams:
        """Generation parameters: built-in defaults < the pack's defaults < what the user set in
        config or environment < explicit overrides (flags, API fields)."""
        from assistant.settings import GenerationSettings

        defaults = GenerationSettings()
        names = ("temperature", "top_p", "max_new_tokens", "seed", "repetition_penalty")
        values: dict[str, Any] = {k: getattr(defaults, k) for k in names}
        values.update({k: v for k, v in pack.generation.items() if k in values})
        g = self.settings.generation
        user_set: set[str] = getattr(self.settings, "user_set", set())
        # what the user set (even to the default's value), or what a caller changed in place
        values.update({k: getattr(g, k) for k in names
                       if f"generation.{k}" in user_set or getattr(g, k) != getattr(defaults, k)})
        values.update({k: v for k, v in overrides.items() if v is not None})
        return GenParams(**values)


@dataclass
class Reply(Streamed):
    """Iterate for the streamed text; afterwards ``text`` is what the user saw."""

    chunks: Iterator[str]
    memories: list[prompt_mod.Recalled] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    stats: GenStats = field(default_factory=GenStats)
    turn_id: str | None = None
    text: str = ""
    adapter: str | None = None
    # How the answer was made: "" (the model), "memory" / "abstain" (from the user's memories),
    # "notes" (led by the pack's notes); numbers withheld by the check; the prompt as sent.
    grounding: str = ""
    withheld: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # things the user should know (a skipped adapter)
    prompt: list[dict[str, str]] = field(default_factory=list)

    @property
    def sources(self) -> list[dict[str, str]]:
        """What the answer used, as data: memory ids, or knowledge file and heading."""
        out = []
        for m in self.memories:
            if m.kind == "knowledge":
                file, _, heading = m.citation.partition(" > ")
                out.append({"id": m.memory_id, "kind": m.kind, "file": file, "heading": heading, "text": m.text})
            else:
                out.append({"id": m.memory_id, "kind": m.kind, "text": m.text})
        return out



class Chat:
    """One conversation: history as sent, the KV cache, and feedback on its last answer."""

    def __init__(
        self, assistant: Assistant, user: str, pack: packs_mod.Pack, *, use_memory: bool, use_adapter: bool,
        conversation_id: str | None, source: str,
    ) -> None:
        self.assistant = assistant
        self.user = user
        self.pack = pack
        self.use_memory = use_memory
        self.use_adapter = use_adapter
        self.source = source
        self.kv = KVSession()
        self.history: list[tuple[str, str]] = []
        self.last_turn_id: str | None = None
        self.journal = assistant.journal(user)
        self.conversation_id = conversation_id or self.journal.new_conversation(pack.id).id
        if conversation_id:  # resume: rebuild the history from the journal
            for turn in self.journal.turns(conversation_id=conversation_id):
                sent = turn.prompt[-1]["content"] if turn.prompt else turn.message
                self.history.append((sent, turn.reply))
                self.last_turn_id = turn.id

    def reset(self) -> None:
        """Start a new conversation (the old one stays in the journal)."""
        self.history.clear()
        self.kv.reset()
        self.last_turn_id = None
        self.conversation_id = self.journal.new_conversation(self.pack.id).id

    def send(self, message: str, cancel: CancelToken | None = None, scripted_reply: str | None = None,
             constraint: Any = None, **overrides: Any) -> Reply:
        """Answer ``message``. The reply streams when iterated; the turn is journalled at its end.

        ``scripted_reply`` records a turn with a given answer instead of generating one (the
        benchmark replays scripted users this way). ``constraint`` (``assistant.grammar``: JSON,
        JSON Schema, tool calls) is passed to the engine's decode loop; such a reply is the
        model's own (no fixed answer, no lead), with the memories and notes in its prompt.
        """
        text = clean_message(message)
        check = safety.before(self.pack, text)
        store = self.assistant.memory(self.user) if self.use_memory else None
        plan = Plan()
        plan.constraint = constraint
        if check.replace is None and scripted_reply is None and not plan.shaped:  # an emergency answer needs no recall
            plan = plan_answer(self, text, store)
            plan.constraint = constraint
        elif store is not None and check.replace is None:
            plan.recalled = store_recall(self, text, store)
        sent = prompt_mod.user_block(text, plan.recalled, plan.style)
        reply = Reply(iter(()), memories=plan.used or plan.recalled, flags=check.flags, turn_id=new_turn_id())
        reply.chunks = self._turn(reply, text, sent, check, store, cancel, scripted_reply, overrides, plan)
        return reply

    def _turn(self, reply: Reply, text: str, sent: str, check: safety.Check, store: Any,
              cancel: CancelToken | None, scripted: str | None, overrides: dict[str, Any], plan: "Plan") -> Iterator[str]:
        """The reply's stream; the turn is journalled, remembered and announced when it ends, also
        when the caller stops reading early (then the turn is what the caller was given)."""
        draft: dict[str, Any] = {}
        try:
            yield from self._stream(reply, draft, text, sent, check, store, cancel, scripted, overrides, plan)
        except GeneratorExit:
            reply.stats.finish_reason = "cancelled"
            self._record(reply, {"messages": draft.get("messages", []), "model_text": reply.text, "full": reply.text},
                         text, sent, store)
            raise
        self._record(reply, draft, text, sent, store)

    def _stream(self, reply: Reply, draft: dict[str, Any], text: str, sent: str, check: safety.Check, store: Any,
                cancel: CancelToken | None, scripted: str | None, overrides: dict[str, Any], plan: "Plan") -> Iterator[str]:
        engine = self.assistant.engine
        params = self.assistant.params(self.pack, **overrides)
        messages: list[dict[str, str]] = []
        model_text = ""
        if check.replace is not None:
            model_text = check.replace
            reply.stats.finish_reason = "safety"
            yield check.replace
        elif scripted is not None:
            model_text = scripted
            reply.stats.finish_reason = "scripted"
            yield scripted
        elif plan.answer is not None:
            model_text = plan.answer
            reply.stats.finish_reason = plan.kind
            reply.grounding = plan.kind
            if hasattr(plan.constraint, "prompt_ids"):  # logprobs asked: scored after the prompt the model would have had
                self._select_adapter(engine, reply)
                plan.constraint.prompt_ids = prompt_mod.build(
                    engine, self.pack.system_prompt(), self.history[-self._max_turns():], sent, params.max_new_tokens).ids
            yield plan.answer
        else:
            self._select_adapter(engine, reply)
            built = prompt_mod.build(engine, self.pack.system_prompt(), self.history[-self._max_turns():], sent,
                                     params.max_new_tokens)
            messages = built.messages
            reply.prompt = draft["messages"] = messages
            if check.prefix:
                yield check.prefix
            ids = built.ids
            if hasattr(plan.constraint, "prompt_ids"):
                plan.constraint.prompt_ids = ids
            room = True
            lead: list[int] = []
            # the user's answer style (numbered steps, units, ...) applied as the answer streams
            fmt = Formatter(plan.style if not plan.shaped else ())
            shown: list[str] = []

            def show(piece: str) -> str:
                out = fmt.feed(piece) if fmt.active else piece
                shown.append(out)
                return out

            if plan.lead:
                lead = engine.tokenizer(plan.lead, add_special_tokens=False)["input_ids"]
                room = len(ids) + len(lead) + 16 <= engine.context_tokens  # else the notes' sentences are the answer
                reply.grounding = "notes"
                if out := show(plan.lead):
                    yield out
            reply.stats.finish_reason = "stop"
            reply.stats.prompt_tokens = len(ids)
            if room:
                stream = GroundedStream(engine, ids + lead, params, self.kv, cancel, plan,
                                        support=self._support(text, plan))
                for chunk in stream:
                    if out := show(chunk):
                        yield out
                stream.stats.prompt_tokens -= len(lead)  # the lead is the answer's, not the prompt's
                reply.stats = stream.stats
                reply.withheld = stream.withheld
            if fmt.active and (rest := fmt.flush()):
                shown.append(rest)
                yield rest
            model_text = "".join(shown)
        facts = [m.text for m in store.list(kinds=("fact", "preference"))] if store is not None else []
        tail = "" if check.replace is not None else safety.after(self.pack, model_text, facts, check.flags)
        if tail:
            yield tail
        full = (check.prefix if check.replace is None and scripted is None and plan.answer is None else "") + model_text + tail
        draft.update(messages=messages, model_text=model_text, full=full)

    def _record(self, reply: Reply, draft: dict[str, Any], text: str, sent: str, store: Any) -> None:
        """The turn's bookkeeping: journal, history, memory extraction, the learner's notice."""
        turn = Turn(
            id=reply.turn_id or "", conversation_id=self.conversation_id, pack=self.pack.id, created=time.time(),
            message=text, prompt=draft["messages"] or [{"role": "user", "content": sent}], reply=draft["full"],
            memory_ids=[m.memory_id for m in reply.memories], adapter=reply.adapter, source=self.source,
            finish_reason=reply.stats.finish_reason,
        )
        self.journal.record(turn)
        self.last_turn_id = turn.id
        self.history.append((sent, draft["model_text"]))
        if store is not None:
            store.learn_from_message(text, pack=self.pack.id, turn_id=turn.id, hints=self.pack.extraction_hints)
            # Every user turn is kept in their words (recalled for questions about them, and for
            # "what did we talk about"); a turn that yielded facts is represented by those.
            day = time.strftime("%Y-%m-%d", time.localtime(turn.created))
            store.add(f"On {day} (in {self.pack.name}) you wrote: {text[:300]}", "episode", pack=self.pack.id,
                      source_turn=turn.id, supersede=False)
        self.assistant.notify_turn(self.user, self.pack.id)

    def _support(self, text: str, plan: "Plan") -> list[str]:
        """What numbers in an answer may come from: notes, rules, memories, the question, the history."""
        out = [text, self.pack.system_prompt(), plan.lead]
        out += [m.text for m in plan.recalled]
        out += [f.message for f in self.pack.red_flags]
        out += [sent + " " + answer for sent, answer in self.history[-self._max_turns():]]
        return out

    def _max_turns(self) -> int:
        n = self.assistant.settings.chat.history_turns
        return n if n > 0 else len(self.history) + 1

    def _select_adapter(self, engine: Engine, reply: Reply) -> None:
        """Merge the live adapter (the user's own, else the pack's starting one) into the engine."""
        from assistant.adapters import live_for

        wanted = None
        deltas = None
        reasons: list[str] = []
        # an engine without torch weights of its own (model None) cannot merge an adapter
        found = (live_for(self.user, self.pack.id, engine.model, reasons, shipped=self.pack.adapter_dir())
                 if self.use_adapter and engine.model is not None else None)
        if hasattr(reply, "notices"):  # an adapter trained on another base model is skipped, and the user told
            reply.notices += reasons
        if found is not None:
            store, current = found
            wanted = store.label(current)
            if engine.adapter_id != wanted:
                deltas = store.deltas(current, engine.model)
                if deltas is None:
                    wanted = None
        if engine.adapter_id != wanted:
            engine.set_adapter(wanted, deltas)
        reply.adapter = wanted

    def rate(self, rating: int, turn_id: str | None = None) -> str:
        target = turn_id or self.last_turn_id
        if target is None:
            raise PromptError("there is no answer to rate yet")
        self.journal.rate(target, rating)
        self.assistant.notify_turn(self.user, self.pack.id)
        return target

    def correct(self, correction: str, turn_id: str | None = None) -> str:
        target = turn_id or self.last_turn_id
        if target is None:
            raise PromptError("there is no answer to correct yet")
        self.journal.correct(target, correction)
        if target == self.last_turn_id and self.history:
            # The model must not see (and repeat) the answer the user corrected.
            sent, _ = self.history[-1]
            self.history[-1] = (sent, correction.strip())
            self.kv.reset()
        self.assistant.notify_turn(self.user, self.pack.id)
        return target
