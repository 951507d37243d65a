"""Widgets of the chat screen: messages, the prompt input with history, the sidebar."""

from __future__ import annotations

from typing import Any, Sequence

from rich.markup import escape
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, LoadingIndicator, Markdown, Static


class UserMessage(Static):
    """What the user typed (plain text, never parsed as markup)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False, classes="message user")
        self.border_title = "you"
        self.text = text


class AssistantMessage(Vertical):
    """One answer: Markdown that grows as chunks stream in, and a status line underneath."""

    class Selected(Message):
        def __init__(self, message: "AssistantMessage") -> None:
            super().__init__()
            self.message = message

    def __init__(self, text: str = "", *, title: str = "assistant", turn_id: str | None = None,
                 memories: Sequence[Any] = (), classes: str = "message assistant") -> None:
        super().__init__(classes=classes)
        self.border_title = title
        self.text = text
        self.turn_id = turn_id
        self.memories = list(memories)
        self.truncated = False  # it stopped at the token limit ("continue" picks it up)
        self.markdown = Markdown(text)
        self.meta = Static("", classes="meta")
        self.stream: Any = None

    def compose(self):
        yield self.markdown
        yield self.meta

    def start_stream(self) -> Any:
        """A ``MarkdownStream``: it batches fragments when the UI falls behind (call in the app loop)."""
        self.stream = Markdown.get_stream(self.markdown)
        return self.stream

    async def write(self, fragment: str) -> None:
        self.text += fragment
        if self.stream is None:
            self.start_stream()
        await self.stream.write(fragment)

    async def finish(self, meta: str = "") -> None:
        if self.stream is not None:
            await self.stream.stop()
            self.stream = None
        self.set_meta(meta)

    def set_meta(self, meta: str) -> None:
        self.meta.update(meta)
        self.meta.display = bool(meta)

    def add_mark(self, mark: str) -> None:
        current = str(self.meta.render()) if self.meta.display else ""
        self.set_meta((current + "  " + mark).strip())

    def on_mount(self) -> None:
        self.meta.display = False

    def on_click(self) -> None:
        self.post_message(self.Selected(self))


class CorrectionMessage(AssistantMessage):
    def __init__(self, text: str, turn_id: str | None) -> None:
        super().__init__(text, title="your correction", turn_id=turn_id, classes="message correction")


class NoteMessage(Static):
    def __init__(self, text: str) -> None:
        super().__init__(text, markup=False, classes="message note")


class StarterQuestion(Static):
    """A pack's starter question; a click puts it in the prompt."""

    class Chosen(Message):
        def __init__(self, question: str) -> None:
            super().__init__()
            self.question = question

    def __init__(self, question: str) -> None:
        super().__init__("› " + question, markup=False, classes="message starter")
        self.question = question

    def on_click(self) -> None:
        self.post_message(self.Chosen(self.question))


class ChatLog(VerticalScroll):
    """The scrolling conversation; it stays anchored to the bottom while answers stream."""

    def on_mount(self) -> None:
        self.anchor()


class PromptInput(Input):
    """An Input with shell-like history on up/down."""

    BINDINGS = [
        Binding("up", "history(-1)", "previous message", show=False),
        Binding("down", "history(1)", "next message", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history: list[str] = []
        self._pos = 0
        self._draft = ""

    def remember(self, text: str) -> None:
        if text and (not self.history or self.history[-1] != text):
            self.history.append(text)
        self._pos = len(self.history)

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        if self._pos == len(self.history):
            self._draft = self.value
        self._pos = max(0, min(len(self.history), self._pos + step))
        self.value = self.history[self._pos] if self._pos < len(self.history) else self._draft
        self.cursor_position = len(self.value)


def format_memories(memories: Sequence[Any]) -> str:
    """The sidebar's "Memories used": the pack notes (file > heading) and what it remembered
    about the user that the answer used (``reply.memories``)."""
    if not memories:
        return "[dim]none[/]"
    notes = [m for m in memories if getattr(m, "kind", "") == "knowledge"]
    about = [m for m in memories if getattr(m, "kind", "") != "knowledge"]
    lines = []
    if notes:
        lines.append("[b]Notes[/]")
        for m in notes:
            cite = getattr(m, "citation", "") or "pack knowledge"
            lines.append(f"• [b]{escape(cite)}[/]\n  [dim]{escape(_snippet(m.text, 90))}[/]")
    if about:
        lines.append("[b]About you[/]")
        for m in about:
            lines.append(f"• {escape(_snippet(m.text, 160))} [dim]({escape(m.kind)})[/]")
    return "\n".join(lines)


def _snippet(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class Sidebar(Vertical):
    def compose(self):
        yield Static("", id="who")
        with Vertical(id="status-box"):
            yield LoadingIndicator(id="spinner")
            yield Static("", id="status")
        yield Static("Memories used", classes="section")
        yield Static("[dim]none[/]", id="memories")
        yield Static("Learning", classes="section")
        yield Static("", id="learning")
        yield Static("Keys", classes="section")
        yield Static("", id="hints")
