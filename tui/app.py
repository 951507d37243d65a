"""The Textual chat app: ``make_app(settings)`` builds it for the CLI and the tests.

The model loads in a thread after the first frame; answers stream in a thread worker and
reach the widgets only through ``call_from_thread``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

from rich.markup import escape
from textual import on, work
from textual.actions import SkipAction
from textual.app import App
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Input, Static

from assistant.errors import AssistantError
from assistant.generation import CancelToken
from assistant.settings import remember_choice, remembered_choice
from federated.idle import Presence
from tui.app_feedback import FeedbackMixin
from tui.app_learning import LearningEvent, LearningMixin, round_summary  # noqa: F401 - re-exported
from tui.app_loading import LoadingMixin
from tui.app_nav import NavMixin
from tui.keys import KEYS, OTHER_KEYS, clashes, multiplexer_keys
from tui.keys import SHOWN as _SHOWN
from tui.screens import EditScreen, HelpScreen, MemoryScreen, OnboardingScreen
from tui.widgets import (
    AssistantMessage,
    ChatLog,
    NoteMessage,
    PromptInput,
    Sidebar,
    StarterQuestion,
    UserMessage,
    format_memories,
)

# What "continue" sends: the answer that stopped at the token limit is in the history, so the
# model picks up from its end.
CONTINUE_PROMPT = "Continue your last answer exactly where it stopped, without repeating it."
PROMPT_COMMANDS = {"/good": "rate_up", "/bad": "rate_down", "/correct": "correct", "/continue": "continue",
                   "/help": "help", "/new": "new_chat"}


def existing_users() -> list[str]:
    """Users with a folder under ``users_dir()`` (the onboarding runs while there are none)."""
    from assistant import paths

    root = paths.users_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and paths._USER_RE.match(p.name))


def read_last_choice() -> dict[str, str]:
    """The user and pack last used in the TUI (kept by ``assistant.settings``)."""
    return remembered_choice()


def write_last_choice(user: str, pack: str) -> None:
    remember_choice(user, pack)


class AssistantApp(LearningMixin, NavMixin, LoadingMixin, FeedbackMixin, App):
    CSS_PATH = "styles.tcss"
    TITLE = "assistant"
    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(key, action, desc, id=action, show=action in _SHOWN, priority=key != "escape")
          for action, key, desc in KEYS),
        # ctrl+c stops a streaming answer (as in the line chat); otherwise it falls through to the
        # prompt's copy and Textual's "press ctrl+q to quit" hint.
        Binding("ctrl+c", "stop", "stop the answer", show=False, priority=True),
        Binding("ctrl+z", "suspend_process", "suspend", show=False),  # an editor's undo comes first
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
        # Tells a SuperNode on this machine (after `assistant federate join`) to pause its training.
        self._presence = Presence()
        self._loading: Any = None  # a tui.loading.LoadProgress while the model loads
        if getattr(assistant, "_progress", "absent") is None:
            # Engine.load's messages (conversion, calibration) drive the status line.
            assistant._progress = self._load_message

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
        for warning in clashes(self.key_rows()[:len(KEYS)], multiplexer_keys()):
            self.notify(warning, title="keys", severity="warning", timeout=40)
        self.query_one("#hints", Static).update("\n".join(f"[b]{escape(k)}[/] {escape(d)}" for _a, k, d in self.key_rows()
                                                  if _a in _SHOWN or _a in ("packs", "copy", "new_chat")))
        learner = self.assistant.learner
        learner.listeners.append(self._learning_listener)
        learner.start()  # rounds start by themselves once enough feedback has gathered and the user is idle
        if self.assistant.engine_loaded:
            self._engine_ready()
        else:
            self._set_status("loading the model…", busy=True)
            self._loading_timer = self.set_interval(1.0, self._show_loading, name="loading")
            self.load_engine()  # loads while the onboarding is on screen, too
        if self.chat is None:
            user, pack = self._given
            self.query_one("#who", Static).update("[dim]welcome[/]")
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
        self._chat_started()
        self.notify(f"welcome, {user}! Rate answers (+1/-1) or correct them: the assistant learns from it.",
                    title="ready", timeout=8)

    def _chat_started(self) -> None:
        remember_choice(self.chat.user, self.chat.pack.id)  # the next start (TUI or CLI) is this user, this pack
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
        self.query_one("#who", Static).update(f"[b]User[/] {escape(self.chat.user)}\n[b]Pack[/] {escape(pack.name)} [dim]({pack.id})[/]")
        self.sub_title = f"{self.chat.user} · {pack.name}"

    def _set_status(self, text: str, busy: bool = False) -> None:
        self.query_one("#status", Static).update(text)
        self.query_one("#spinner").display = busy

    def _note(self, text: str) -> None:
        if text:
            self.query_one(ChatLog).mount(NoteMessage(text))

    # ------------------------------------------------------------------ chatting
    @on(Input.Changed, "#prompt")
    def _typing(self, event: Input.Changed) -> None:
        self._presence.typing()

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

    def send_text(self, text: str, shown: str | None = None) -> None:
        """Send ``text`` (``shown`` is what the log shows for it); /commands run their action."""
        text = text.strip()
        if not text:
            return
        word, _, rest = text.partition(" ")
        if word.lower() in PROMPT_COMMANDS and self.chat is not None:
            self._prompt_command(word.lower(), rest.strip())
            return
        if self._generating:
            self.notify("wait for the answer (or press Esc to stop it)", severity="warning")
            return
        prompt = self.query_one(PromptInput)
        if shown is None:  # "continue" leaves the prompt (and its history) as it is
            prompt.remember(text)
            prompt.value = ""
        log = self.query_one(ChatLog)
        user_msg = UserMessage(shown or text)
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
            with self._presence.generating():  # a SuperNode on this machine leaves the CPU to the reply
                reply = self.chat.send(text, cancel=cancel)
                buffer: list[str] = []
                last = time.monotonic()
                self.call_from_thread(answer.start_stream)
                for chunk in reply:
                    buffer.append(chunk)
                    now = time.monotonic()
                    if now - last >= 0.05:  # coalesce: at most ~20 UI updates a second
                        self.call_from_thread(answer.write, "".join(buffer))  # type: ignore[arg-type]  # mypy infers Never for textual's T | Awaitable[T] from a coroutine function
                        buffer.clear()
                        last = now
                if buffer:
                    self.call_from_thread(answer.write, "".join(buffer))  # type: ignore[arg-type]  # mypy infers Never for textual's T | Awaitable[T] from a coroutine function
        except Exception as exc:  # noqa: BLE001 - every failure is shown, none kills the app
            try:
                self.call_from_thread(self._failed, text, user_msg, answer, exc)  # type: ignore[arg-type]  # mypy infers Never for textual's T | Awaitable[T] from a coroutine function
            except RuntimeError:  # the app has closed meanwhile
                pass
            return
        self.call_from_thread(self._finished, answer, reply)  # type: ignore[arg-type]  # mypy infers Never for textual's T | Awaitable[T] from a coroutine function

    def _prompt_command(self, command: str, rest: str) -> None:
        """/good, /bad, /correct [TEXT], /continue, /help, /new typed in the prompt (the same as the
        keys, for terminals where a key does not arrive)."""
        prompt = self.query_one(PromptInput)
        prompt.remember(f"{command} {rest}".strip())
        prompt.value = ""
        if command == "/correct" and rest:
            target = self._feedback_target()
            if target is not None:
                self._save_correction(target, rest)
            return
        try:
            getattr(self, f"action_{PROMPT_COMMANDS[command]}")()
        except SkipAction:
            pass

    async def _finished(self, answer: AssistantMessage, reply: Any) -> None:
        stats = reply.stats
        parts = []
        if stats.finish_reason == "cancelled":
            parts.append("[yellow]stopped[/]")
        answer.truncated = stats.finish_reason == "length"
        if answer.truncated:
            key = self._key_for("continue")
            parts.append(f"[yellow]…\\[stopped at {stats.completion_tokens} tokens — press {escape(key)} or type "
                         "/continue to continue][/]")
        if stats.completion_tokens:
            tps = f" · {stats.decode_tps:.1f} tok/s" if stats.decode_tps else ""
            parts.append(f"{stats.completion_tokens} tokens{tps}")
        if reply.flags:
            parts.append("flags: " + ", ".join(reply.flags))
        if reply.memories:
            notes = sum(1 for m in reply.memories if m.kind == "knowledge")
            about = len(reply.memories) - notes
            used = [f"{n} {word}{'s' if n > 1 else ''}" for n, word in ((notes, "note"), (about, "memory")) if n]
            parts.append("used " + " and ".join(used).replace("memorys", "memories") + " (see the panel)")
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
        if not prompt.value and text != CONTINUE_PROMPT:
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
        self.query_one("#memories", Static).update(format_memories(message.memories))

    # ------------------------------------------------------------------ actions
    def _chat_screen(self) -> None:
        if len(self.screen_stack) > 1 or self.chat is None:
            raise SkipAction()

    def _key_for(self, action: str) -> str:
        return next((k for a, k, _d in self.key_rows() if a == action), action)

    def action_cancel(self) -> None:
        self._chat_screen()
        if self._cancel is None:
            raise SkipAction()
        self._cancel.cancel()
        self.notify("stopping…", timeout=2)

    def action_stop(self) -> None:
        """ctrl+c: stop the answer while one streams; otherwise the key goes on (copy, quit hint)."""
        if self._cancel is None or len(self.screen_stack) > 1:
            raise SkipAction()
        self.action_cancel()

    def action_continue(self) -> None:
        """Continue the last answer where the token limit stopped it (a new turn: "continue")."""
        target = self._feedback_target()
        if target is None:
            return
        if not getattr(target, "truncated", False):
            self.notify("the last answer is complete (it did not stop at the token limit)", severity="warning")
            return
        self.send_text(CONTINUE_PROMPT, shown="(continue)")

    def _feedback_target(self) -> AssistantMessage | None:
        self._chat_screen()
        if self._generating:
            self.notify("wait for the answer to finish", severity="warning")
            return None
        if self._last is None or self._last.turn_id is None:
            self.notify("there is no answer yet", severity="warning")
            return None
        return self._last

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
        self.query_one("#memories", Static).update(format_memories([]))

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
    from personalization.learner import attach

    attach(assistant)  # the TUI watches and runs learning rounds

    # The user and pack last used here, while config.toml (or a flag) names neither. The user
    # is also every other command's default (assistant.settings.load applies it).
    last = remembered_choice()
    if user is None and settings.chat.user == ChatSettings.user and last.get("user") in existing_users():
        user = last["user"]
    if (pack is None and settings.chat.pack == ChatSettings.pack and last.get("pack") in assistant.catalog.packs
            and last.get("user") == (user or settings.chat.user)):
        pack = last["pack"]
    return AssistantApp(settings, assistant, user=user, pack=pack, onboarding=onboarding)
