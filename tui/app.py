"""The Textual chat app: ``make_app(settings)`` builds it for the CLI and the tests.

The model loads in a thread after the first frame; answers stream in a thread worker and
reach the widgets only through ``call_from_thread``.
"""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.actions import SkipAction
from textual.app import App
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Input

from assistant.engine import CancelToken
from assistant.errors import AssistantError
from tui.screens import ConversationsScreen, EditScreen, HelpScreen, MemoryScreen, PackScreen
from tui.widgets import (
    AssistantMessage, ChatLog, CorrectionMessage, NoteMessage, PromptInput, Sidebar, UserMessage, format_memories,
)

# (action, default key, description): ids for `settings.tui.keys` remapping.
KEYS: list[tuple[str, str, str]] = [
    ("cancel", "escape", "stop the answer"),
    ("rate_up", "ctrl+g", "good answer (+1)"),
    ("rate_down", "ctrl+b", "bad answer (-1)"),
    ("correct", "ctrl+r", "correct the answer"),
    ("copy", "ctrl+y", "copy the answer"),
    ("new_chat", "ctrl+n", "new chat"),
    ("help", "f1", "help"),
    ("memories", "f2", "memories"),
    ("conversations", "f3", "conversations"),
    ("packs", "f4", "switch pack"),
    ("quit", "ctrl+q", "quit"),
]
OTHER_KEYS: list[tuple[str, str, str]] = [
    ("submit", "enter", "send the message"),
    ("history", "up / down", "previous / next message you sent"),
    ("select", "click an answer", "show the memories it used"),
    ("(editor)", "ctrl+s", "save in the correction / memory editor"),
    ("(memories)", "ctrl+e, del", "edit / forget the highlighted memory"),
    ("(conversations)", "ctrl+r, del", "rename / delete the highlighted conversation"),
]
_SHOWN = {"cancel", "rate_up", "rate_down", "correct", "help", "memories", "conversations", "quit"}


class AssistantApp(App):
    CSS_PATH = "styles.tcss"
    TITLE = "assistant"
    BINDINGS = [
        Binding(key, action, desc, id=action, show=action in _SHOWN, priority=key != "escape")
        for action, key, desc in KEYS
    ]

    def __init__(self, settings: Any, assistant: Any, user: str | None = None, pack: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.assistant = assistant
        self.chat = assistant.chat(user, pack)  # bad user or pack names fail here, before the UI starts
        self.keymap = {k: v for k, v in dict(settings.tui.keys or {}).items()}
        self._cancel: CancelToken | None = None
        self._last: AssistantMessage | None = None
        self._generating = False

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
        self._show_who()
        self.query_one("#hints").update("\n".join(f"[b]{escape(k)}[/] {escape(d)}" for _a, k, d in self.key_rows()
                                                  if _a in _SHOWN or _a in ("packs", "copy", "new_chat")))
        self.query_one(PromptInput).focus()
        self._note(self.chat.pack.disclaimer or self.chat.pack.description)
        if self.assistant.engine_loaded:
            self._engine_ready()
        else:
            self._set_status("loading the model…", busy=True)
            self.load_engine()

    def key_rows(self) -> list[tuple[str, str, str]]:
        """Every binding with the key in effect (after remapping)."""
        return [(a, self.keymap.get(a, k), d) for a, k, d in KEYS] + OTHER_KEYS

    def _show_who(self) -> None:
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
        text = event.value.strip()
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

    @on(AssistantMessage.Selected)
    def _selected(self, event: AssistantMessage.Selected) -> None:
        self._select(event.message)

    def _select(self, message: AssistantMessage) -> None:
        for other in self.query(AssistantMessage):
            other.set_class(other is message, "selected")
        self.query_one("#memories").update(format_memories(message.memories))

    # ------------------------------------------------------------------ actions
    def _chat_screen(self) -> None:
        if len(self.screen_stack) > 1:
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

    def _switch(self, pack_id: str, conversation_id: str | None = None) -> None:
        try:
            chat = self.assistant.chat(self.chat.user, pack_id, conversation_id=conversation_id)
        except AssistantError as exc:
            self.notify(str(exc), severity="error")
            return
        self.chat = chat
        self._clear_log()
        self._show_who()
        log = self.query_one(ChatLog)
        if conversation_id:
            for turn in chat.journal.turns(conversation_id=conversation_id):
                log.mount(UserMessage(turn.message))
                msg = AssistantMessage(turn.reply, turn_id=turn.id)
                log.mount(msg)
                if turn.correction:
                    log.mount(CorrectionMessage(turn.correction, turn.id))
                self._last = msg
        else:
            self._note(f"Switched to {chat.pack.name}. " + (chat.pack.disclaimer or ""))


def make_app(settings: Any, assistant: Any = None, user: str | None = None, pack: str | None = None) -> AssistantApp:
    """The app for ``settings``; pass an ``Assistant`` to share one (tests give one with a fake engine)."""
    if assistant is None:
        from assistant.core import Assistant

        assistant = Assistant(settings)
    return AssistantApp(settings, assistant, user=user, pack=pack)
