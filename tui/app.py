"""The Textual chat app: ``make_app(settings)`` builds it for the CLI and the tests.

The model loads in a thread after the first frame; answers stream in a thread worker and
reach the widgets only through ``call_from_thread``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.actions import SkipAction
from textual.app import App
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Footer, Header, Input

from assistant.engine import CancelToken
from assistant.errors import AssistantError
from tui.screens import (
    ConversationsScreen, EditScreen, HelpScreen, LearningScreen, MemoryScreen, OnboardingScreen, PackScreen,
    describe_event,
)
from tui.widgets import (
    AssistantMessage, ChatLog, CorrectionMessage, NoteMessage, PromptInput, Sidebar, StarterQuestion, UserMessage,
    format_memories,
)

# (action, default key, description): ids for `settings.tui.keys` remapping.
KEYS: list[tuple[str, str, str]] = [
    ("cancel", "escape", "stop the answer"),
    ("rate_up", "ctrl+g", "good answer (+1)"),
    ("rate_down", "ctrl+b", "bad answer (-1)"),
    ("correct", "ctrl+r", "correct the answer"),
    ("copy", "ctrl+y", "copy the answer"),
    ("compose", "ctrl+t", "write a multi-line message"),
    ("new_chat", "ctrl+n", "new chat"),
    ("help", "f1", "help"),
    ("memories", "f2", "memories"),
    ("conversations", "f3", "conversations"),
    ("packs", "f4", "switch pack"),
    ("learning", "f5", "learning and adapters"),
    ("quit", "ctrl+q", "quit"),
]
OTHER_KEYS: list[tuple[str, str, str]] = [
    ("submit", "enter", "send the message"),
    ("history", "up / down", "previous / next message you sent"),
    ("select", "click an answer", "show the memories it used"),
    ("(editor)", "ctrl+s", "save in the correction / memory editor"),
    ("(memories)", "ctrl+e, del", "edit / forget the highlighted memory"),
    ("(conversations)", "ctrl+r, del", "rename / delete the highlighted conversation"),
    ("(learning)", "ctrl+l", "learn from your feedback now"),
    ("(learning)", "enter, ctrl+o", "use the highlighted adapter version (or the base model)"),
    ("select", "click a suggestion", "put a starter question in the prompt"),
]
_SHOWN = {"cancel", "rate_up", "rate_down", "correct", "help", "memories", "conversations", "learning", "quit"}
LAST_CHOICE = "tui.json"  # the name and pack chosen at onboarding, used while config.toml names neither


class LearningEvent(Message):
    """A learner event, posted from the learner's thread (post_message is thread-safe)."""

    def __init__(self, user: str, pack: str, event: dict[str, Any], manual: bool = False) -> None:
        super().__init__()
        self.user, self.pack, self.event, self.manual = user, pack, event, manual


def existing_users() -> list[str]:
    """Users with a folder under ``users_dir()`` (the onboarding runs while there are none)."""
    from assistant import paths

    root = paths.users_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and paths._USER_RE.match(p.name))


def _last_choice_file():
    from assistant import paths

    return paths.home() / LAST_CHOICE


def read_last_choice() -> dict[str, str]:
    try:
        data = json.loads(_last_choice_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_last_choice(user: str, pack: str) -> None:
    path = _last_choice_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"user": user, "pack": pack}))
    except OSError:
        pass


def round_summary(result: Any) -> dict[str, Any]:
    """A ``RoundResult`` as the dict the learner's "done" event carries."""
    decision = getattr(result, "decision", None)
    return {
        "phase": "done", "promoted": bool(getattr(result, "promoted", False)), "version": getattr(result, "version", None),
        "live": getattr(result, "live", None),
        "reason": decision.reason if decision is not None else getattr(result, "message", ""),
        "gate": decision.to_json() if decision is not None else None,
    }


class AssistantApp(App):
    CSS_PATH = "styles.tcss"
    TITLE = "assistant"
    BINDINGS = [
        Binding(key, action, desc, id=action, show=action in _SHOWN, priority=key != "escape")
        for action, key, desc in KEYS
    ]

    def __init__(self, settings: Any, assistant: Any, user: str | None = None, pack: str | None = None,
                 onboarding: bool | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.assistant = assistant
        # First run (no user yet, and not both --user and --pack): ask for a name and a pack.
        if onboarding is None:
            onboarding = not (user and pack) and not existing_users()
        self.onboarding = onboarding
        self._given = (user, pack)
        if onboarding:
            self.chat: Any = None
            if pack:
                assistant.pack(pack)  # a bad pack name fails here, before the UI starts
            if user:
                from assistant.paths import check_user_name

                check_user_name(user)
        else:
            self.chat = assistant.chat(user, pack)  # bad user or pack names fail here, before the UI starts
        self.keymap = {k: v for k, v in dict(settings.tui.keys or {}).items()}
        self._cancel: CancelToken | None = None
        self._last: AssistantMessage | None = None
        self._generating = False
        self.learning_progress: dict[tuple[str, str], dict[str, Any]] = {}  # rounds in progress, by (user, pack)
        self._manual_round: tuple[str, str] | None = None
        self._quitting = threading.Event()

    # ------------------------------------------------------------------ layout
    def compose(self):
        yield Header()
        with Horizontal(id="main"):
            yield ChatLog(id="log")
            yield Sidebar(id="sidebar")
        yield PromptInput(placeholder="Type a message and press Enter", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        unknown = sorted(set(self.keymap) - {a for a, _, _ in KEYS})
        if unknown:
            self.notify(f"unknown action(s) in tui.keys: {', '.join(unknown)}", severity="warning")
        self.set_keymap({k: v for k, v in self.keymap.items() if k not in unknown})
        self.query_one("#hints").update("\n".join(f"[b]{escape(k)}[/] {escape(d)}" for _a, k, d in self.key_rows()
                                                  if _a in _SHOWN or _a in ("packs", "copy", "new_chat")))
        learner = self.assistant.learner
        learner.listeners.append(self._learning_listener)
        learner.start()  # rounds start by themselves once enough feedback has gathered and the user is idle
        if self.assistant.engine_loaded:
            self._engine_ready()
        else:
            self._set_status("loading the model…", busy=True)
            self.load_engine()  # loads while the onboarding is on screen, too
        if self.chat is None:
            user, pack = self._given
            self.query_one("#who").update("[dim]welcome[/]")
            self.push_screen(OnboardingScreen(self.assistant.catalog.packs, user or "",
                                              pack or self.settings.chat.pack), self._onboarded)
        else:
            self._chat_started()

    def on_unmount(self) -> None:
        self._quitting.set()
        learner = self.assistant.learner
        if self._learning_listener in learner.listeners:
            learner.listeners.remove(self._learning_listener)

    def _onboarded(self, choice: tuple[str, str] | None) -> None:
        if not choice:
            return
        user, pack = choice
        try:
            self.chat = self.assistant.chat(user, pack)
        except AssistantError as exc:
            self.notify(str(exc), severity="error")
            self.push_screen(OnboardingScreen(self.assistant.catalog.packs, user, pack), self._onboarded)
            return
        write_last_choice(user, pack)
        self._chat_started()
        self.notify(f"welcome, {user}! Rate answers (+1/-1) or correct them: the assistant learns from it.",
                    title="ready", timeout=8)

    def _chat_started(self) -> None:
        self._show_who()
        self.query_one(PromptInput).focus()
        self._conversation_intro()
        self.refresh_learning()

    def _conversation_intro(self, starters: bool = True) -> None:
        """The pack's disclaimer (once, at the top of a conversation) and its starter questions."""
        pack = self.chat.pack
        self._note(pack.disclaimer or pack.description)
        prompt = self.query_one(PromptInput)
        questions = list(pack.starter_questions or [])
        prompt.placeholder = ("Type a message and press Enter" + (f" (e.g. {questions[0]})" if questions else ""))
        if starters and questions:
            log = self.query_one(ChatLog)
            log.mount(NoteMessage("Try asking (click to use):"))
            for question in questions[:4]:
                log.mount(StarterQuestion(question))

    def key_rows(self) -> list[tuple[str, str, str]]:
        """Every binding with the key in effect (after remapping)."""
        return [(a, self.keymap.get(a, k), d) for a, k, d in KEYS] + OTHER_KEYS

    def _show_who(self) -> None:
        if self.chat is None:
            return
        pack = self.chat.pack
        self.query_one("#who").update(f"[b]User[/] {escape(self.chat.user)}\n[b]Pack[/] {escape(pack.name)} [dim]({pack.id})[/]")
        self.sub_title = f"{self.chat.user} · {pack.name}"

    def _set_status(self, text: str, busy: bool = False) -> None:
        self.query_one("#status").update(text)
        self.query_one("#spinner").display = busy

    def _note(self, text: str) -> None:
        if text:
            self.query_one(ChatLog).mount(NoteMessage(text))

    # ------------------------------------------------------------------ model loading
    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def load_engine(self) -> None:
        try:
            self.assistant.engine  # noqa: B018 - the property loads it
        except Exception as exc:  # noqa: BLE001
            self.call_from_thread(self._set_status, "[red]the model failed to load[/]")
            self.call_from_thread(self.notify, str(exc), title="model", severity="error", timeout=30)
            return
        self.call_from_thread(self._engine_ready)

    def _engine_ready(self) -> None:
        engine = self.assistant.engine
        self._set_status(f"ready · {escape(str(getattr(engine, 'name', 'model')))}")

    # ------------------------------------------------------------------ chatting
    @on(Input.Submitted, "#prompt")
    def submitted(self, event: Input.Submitted) -> None:
        self.send_text(event.value)

    def action_compose(self) -> None:
        """A multi-line message: an editor prefilled with what is typed so far; ctrl+s sends."""
        prompt = self.query_one(PromptInput)

        def send(text: str | None) -> None:
            if text:
                self.send_text(text)

        self.push_screen(EditScreen("Write a message (several lines are fine)", prompt.value), send)

    def send_text(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if self._generating:
            self.notify("wait for the answer (or press Esc to stop it)", severity="warning")
            return
        prompt = self.query_one(PromptInput)
        prompt.remember(text)
        prompt.value = ""
        log = self.query_one(ChatLog)
        user_msg = UserMessage(text)
        answer = AssistantMessage()
        log.mount(user_msg)
        log.mount(answer)
        answer.set_meta("…")
        self._generating = True
        self._cancel = CancelToken()
        if not self.assistant.engine_loaded:
            self._set_status("waiting for the model…", busy=True)
        self.generate(text, user_msg, answer, self._cancel)

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def generate(self, text: str, user_msg: UserMessage, answer: AssistantMessage, cancel: CancelToken) -> None:
        try:
            reply = self.chat.send(text, cancel=cancel)
            buffer: list[str] = []
            last = time.monotonic()
            self.call_from_thread(answer.start_stream)
            for chunk in reply:
                buffer.append(chunk)
                now = time.monotonic()
                if now - last >= 0.05:  # coalesce: at most ~20 UI updates a second
                    self.call_from_thread(answer.write, "".join(buffer))
                    buffer.clear()
                    last = now
            if buffer:
                self.call_from_thread(answer.write, "".join(buffer))
        except Exception as exc:  # noqa: BLE001 - every failure is shown, none kills the app
            try:
                self.call_from_thread(self._failed, text, user_msg, answer, exc)
            except RuntimeError:  # the app has closed meanwhile
                pass
            return
        self.call_from_thread(self._finished, answer, reply)

    async def _finished(self, answer: AssistantMessage, reply: Any) -> None:
        stats = reply.stats
        parts = []
        if stats.finish_reason == "cancelled":
            parts.append("[yellow]stopped[/]")
        if stats.completion_tokens:
            tps = f" · {stats.decode_tps:.1f} tok/s" if stats.decode_tps else ""
            parts.append(f"{stats.completion_tokens} tokens{tps}")
        if reply.flags:
            parts.append("flags: " + ", ".join(reply.flags))
        if reply.memories:
            parts.append("memories: " + " ".join(m.short_id for m in reply.memories))
        await answer.finish("[dim]" + " · ".join(parts) + "[/]" if parts else "")
        answer.turn_id, answer.memories, answer.text = reply.turn_id, list(reply.memories), reply.text
        self._last = answer
        self._select(answer)
        self._done()

    async def _failed(self, text: str, user_msg: UserMessage, answer: AssistantMessage, exc: Exception) -> None:
        await answer.finish()
        await user_msg.remove()
        await answer.remove()
        message = str(exc) if isinstance(exc, AssistantError) else f"{type(exc).__name__}: {exc}"
        self.notify(message, title="could not answer", severity="error", timeout=10)
        prompt = self.query_one(PromptInput)
        if not prompt.value:
            prompt.value = text
            prompt.cursor_position = len(text)
        self._done()

    def _done(self) -> None:
        self._generating = False
        self._cancel = None
        if self.assistant.engine_loaded:
            self._engine_ready()

    @on(StarterQuestion.Chosen)
    def _starter(self, event: StarterQuestion.Chosen) -> None:
        prompt = self.query_one(PromptInput)
        prompt.value = event.question
        prompt.cursor_position = len(event.question)
        prompt.focus()

    @on(AssistantMessage.Selected)
    def _selected(self, event: AssistantMessage.Selected) -> None:
        self._select(event.message)

    def _select(self, message: AssistantMessage) -> None:
        for other in self.query(AssistantMessage):
            other.set_class(other is message, "selected")
        self.query_one("#memories").update(format_memories(message.memories))

    # ------------------------------------------------------------------ actions
    def _chat_screen(self) -> None:
        if len(self.screen_stack) > 1 or self.chat is None:
            raise SkipAction()

    def action_cancel(self) -> None:
        self._chat_screen()
        if self._cancel is None:
            raise SkipAction()
        self._cancel.cancel()
        self.notify("stopping…", timeout=2)

    def _feedback_target(self) -> AssistantMessage | None:
        self._chat_screen()
        if self._generating:
            self.notify("wait for the answer to finish", severity="warning")
            return None
        if self._last is None or self._last.turn_id is None:
            self.notify("there is no answer yet", severity="warning")
            return None
        return self._last

    def _rate(self, rating: int) -> None:
        target = self._feedback_target()
        if target is None:
            return
        try:
            self.chat.rate(rating, target.turn_id)
        except AssistantError as exc:
            self.notify(str(exc), severity="error")
            return
        target.add_mark("[green]👍 rated +1[/]" if rating > 0 else "[red]👎 rated -1[/]")
        self.notify("thanks: rated " + ("+1" if rating > 0 else "-1"), timeout=2)
        self.refresh_learning()

    def action_rate_up(self) -> None:
        self._rate(1)

    def action_rate_down(self) -> None:
        self._rate(-1)

    def action_correct(self) -> None:
        target = self._feedback_target()
        if target is None:
            return

        def save(text: str | None) -> None:
            if not text:
                return
            try:
                self.chat.correct(text, target.turn_id)
            except AssistantError as exc:
                self.notify(str(exc), severity="error")
                return
            self.query_one(ChatLog).mount(CorrectionMessage(text, target.turn_id), after=target)
            target.add_mark("[cyan]corrected[/]")
            self.notify("correction saved: it will be learned from", timeout=3)
            self.refresh_learning()

        self.push_screen(EditScreen("Correct this answer", target.text), save)

    def action_copy(self) -> None:
        target = self._feedback_target()
        if target is not None:
            self.copy_to_clipboard(target.text)
            self.notify("answer copied", timeout=2)

    def action_new_chat(self) -> None:
        self._chat_screen()
        if self._generating:
            self.notify("wait for the answer (or press Esc)", severity="warning")
            return
        self.chat.reset()
        self._clear_log()
        self._note("New conversation.")
        self._conversation_intro()

    def _clear_log(self) -> None:
        self.query_one(ChatLog).remove_children()
        self._last = None
        self.query_one("#memories").update(format_memories([]))

    async def action_quit(self) -> None:
        if self._cancel is not None:  # let a running answer stop at the next token
            self._cancel.cancel()
        await super().action_quit()

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            raise SkipAction()
        self.push_screen(HelpScreen(self.key_rows()))

    def action_memories(self) -> None:
        self._chat_screen()
        try:
            store = self.assistant.memory(self.chat.user)
        except AssistantError as exc:
            self.notify(str(exc), severity="error")
            return
        self.push_screen(MemoryScreen(store))

    def action_packs(self) -> None:
        self._chat_screen()
        if self._generating:
            return

        def chosen(pack_id: str | None) -> None:
            if pack_id and pack_id != self.chat.pack.id:
                self._switch(pack_id=pack_id)

        self.push_screen(PackScreen(self.assistant.catalog.packs, self.chat.pack.id), chosen)

    def action_conversations(self) -> None:
        self._chat_screen()
        if self._generating:
            return

        def chosen(conv_id: str | None) -> None:
            if conv_id and conv_id != self.chat.conversation_id:
                conv = next((c for c in self.chat.journal.conversations() if c.id == conv_id), None)
                if conv is not None:
                    self._switch(pack_id=conv.pack, conversation_id=conv.id)

        self.push_screen(ConversationsScreen(self.chat.journal, self.chat.conversation_id), chosen)

    def conversation_deleted(self) -> None:
        """The conversation on screen was deleted from the conversations screen."""
        self.chat.reset()
        self._clear_log()
        self._note("New conversation.")
        self._conversation_intro()

    def _switch(self, pack_id: str, conversation_id: str | None = None) -> None:
        try:
            chat = self.assistant.chat(self.chat.user, pack_id, conversation_id=conversation_id)
        except AssistantError as exc:
            self.notify(str(exc), severity="error")
            return
        self.chat = chat
        self._clear_log()
        self._show_who()
        self.refresh_learning()
        log = self.query_one(ChatLog)
        if conversation_id:
            self._conversation_intro(starters=False)
            for turn in chat.journal.turns(conversation_id=conversation_id):
                log.mount(UserMessage(turn.message))
                msg = AssistantMessage(turn.reply, turn_id=turn.id)
                log.mount(msg)
                if turn.correction:
                    log.mount(CorrectionMessage(turn.correction, turn.id))
                self._last = msg
        else:
            self._note(f"Switched to {chat.pack.name}.")
            self._conversation_intro()

    # ------------------------------------------------------------------ learning
    def action_learning(self) -> None:
        self._chat_screen()
        self.push_screen(LearningScreen(self.assistant, self.chat.user, self.chat.pack.id))

    def _learning_listener(self, user: str, pack: str, event: Any) -> None:
        """Registered with the learner: called from its thread, so it only posts a message."""
        self.post_message(LearningEvent(user, pack, dict(event)))

    def on_learning_event(self, message: LearningEvent) -> None:
        key = (message.user, message.pack)
        event = message.event
        phase = event.get("phase")
        if phase in ("done", "failed"):
            if key == self._manual_round and not message.manual:
                return  # "learn now" reports its own result (its worker posts it next)
            if message.manual:
                self._manual_round = None
            self.learning_progress.pop(key, None)
            self._round_finished(message.user, message.pack, event)
        else:
            self.learning_progress[key] = event
        for screen in self.screen_stack:
            if isinstance(screen, LearningScreen) and (screen.user, screen.pack) == key:
                screen.apply_event(event)
        self.refresh_learning()

    def _round_finished(self, user: str, pack: str, event: dict[str, Any]) -> None:
        where = "" if self.chat is not None and (user, pack) == (self.chat.user, self.chat.pack.id) else f" ({user}/{pack})"
        if event.get("phase") == "failed":
            self.notify(f"the learning round failed{where}: {event.get('error')}", title="learning", severity="error",
                        timeout=10)
        elif event.get("promoted"):
            self.notify(f"learned from your feedback{where}: adapter {event.get('version')} is now live",
                        title="learning", timeout=8)
        elif event.get("gate"):
            self.notify(f"the new adapter was rejected{where}, the live one stays: {event.get('reason')}",
                        title="learning", severity="warning", timeout=10)
        else:
            self.notify(f"no learning round{where}: {event.get('reason')}", title="learning", severity="warning",
                        timeout=8)

    def refresh_learning(self) -> None:
        """The sidebar's learning line: pending examples, the live adapter, a round in progress."""
        if self.chat is None:
            return
        key = (self.chat.user, self.chat.pack.id)
        box = self.query_one("#learning")
        running = self.learning_progress.get(key)
        if running:
            box.update(escape(describe_event(running)))
            return
        try:
            status = self.assistant.learner.status(*key)
        except Exception as exc:  # noqa: BLE001 - e.g. a damaged adapter store
            box.update(f"[red]{escape(str(exc))}[/]")
            return
        need = self.settings.learning.min_new_examples
        live = f"adapter [b]{escape(status.live)}[/]" if status.live else "base model"
        box.update(f"{status.pending}/{need} new examples · {live}")

    def learn_now(self, user: str, pack: str) -> None:
        """Run a learning round now, in a thread worker (the UI never waits for it)."""
        if self._manual_round is not None or (user, pack) in getattr(self.assistant.learner, "_running", {}):
            self.notify("a learning round is already running", severity="warning")
            return
        self._manual_round = (user, pack)
        self.post_message(LearningEvent(user, pack, {"phase": "starting"}))
        self.learn_worker(user, pack)

    @work(thread=True, exclusive=True, group="learn", exit_on_error=False)
    def learn_worker(self, user: str, pack: str) -> None:
        learner = self.assistant.learner
        lock = getattr(learner, "_lock", None)
        if lock is not None and not lock.acquire(blocking=False):
            self.post_message(LearningEvent(user, pack, {"phase": "failed", "error": "a learning round is already running"},
                                            manual=True))
            return
        try:
            result = learner.run_round(user, pack, should_stop=self._quitting.is_set)
            event = round_summary(result)
        except Exception as exc:  # noqa: BLE001 - every failure is shown, none kills the app
            error = str(exc) if isinstance(exc, AssistantError) else f"{type(exc).__name__}: {exc}"
            event = {"phase": "failed", "error": error}
        finally:
            if lock is not None:
                lock.release()
        self.post_message(LearningEvent(user, pack, event, manual=True))


def make_app(settings: Any, assistant: Any = None, user: str | None = None, pack: str | None = None,
             onboarding: bool | None = None) -> AssistantApp:
    """The app for ``settings``; pass an ``Assistant`` to share one (tests give one with a fake engine).

    ``onboarding``: None decides by itself (first run: no user folder yet and not both ``user``
    and ``pack`` given); True / False force it. While the config names no user (or pack), the
    name and pack chosen at onboarding are used.
    """
    if assistant is None:
        from assistant.core import Assistant

        assistant = Assistant(settings)
    from assistant.settings import ChatSettings

    last = read_last_choice()
    if user is None and settings.chat.user == ChatSettings.user and last.get("user") in existing_users():
        user = last["user"]
    if pack is None and settings.chat.pack == ChatSettings.pack and last.get("pack") in assistant.catalog.packs:
        pack = last["pack"]
    return AssistantApp(settings, assistant, user=user, pack=pack, onboarding=onboarding)
