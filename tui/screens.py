"""Modal screens: help, pack picker, correction editor, memory browser, conversations and
first-run onboarding (the learning panel is in ``tui.learning_screen``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence, cast

from rich.markup import escape
from textual import on, work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from tui.learning_screen import GATE_ROWS, LearningScreen, describe_event, gate_rule  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from tui.app import AssistantApp


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,f1", "dismiss", "close")]

    def __init__(self, rows: Sequence[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self):
        with Vertical(id="help", classes="dialog"):
            yield Label("[b]Keys[/b]  (remap in config: [tui.keys] action = \"key\")")
            lines = [f"[b]{escape(key):>14}[/]  {escape(desc)}  [dim]{escape(action)}[/]" for action, key, desc in self.rows]
            yield Static("\n".join(lines), id="help-text")
            yield Label("[dim]Esc closes[/]")


class PackScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "close")]

    def __init__(self, packs: dict[str, Any], current: str) -> None:
        super().__init__()
        self.packs, self.current = packs, current

    def compose(self):
        with Vertical(classes="dialog"):
            yield Label("[b]Choose a pack[/b]")
            options = [Option(f"{'● ' if pid == self.current else '  '}{p.name} [dim]({pid})[/] — {escape(p.description[:60])}", id=pid)
                       for pid, p in sorted(self.packs.items())]
            yield OptionList(*options, id="packs")

    @on(OptionList.OptionSelected)
    def chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class EditScreen(ModalScreen[str | None]):
    """A TextArea starting with ``text``; ctrl+s saves, esc cancels.

    ``shown`` is read-only text displayed above the editor (the answer being corrected), so the
    editor itself can start empty and the user writes the better answer from scratch.
    """

    BINDINGS = [Binding("ctrl+s", "save", "save", priority=True), Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, title: str, text: str = "", *, shown: str | None = None, shown_title: str = "",
                 placeholder: str = "") -> None:
        super().__init__()
        self.title_text, self.text = title, text
        self.shown, self.shown_title, self.placeholder = shown, shown_title, placeholder

    def compose(self):
        with Vertical(classes="dialog", id="edit"):
            yield Label(f"[b]{escape(self.title_text)}[/b]  [dim]ctrl+s saves, esc cancels[/]")
            if self.shown is not None:
                yield Label(f"[dim]{escape(self.shown_title or 'For reference (not editable)')}[/]")
                with VerticalScroll(id="edit-shown"):
                    yield Static(self.shown, markup=False, id="edit-shown-text")
                yield Label("[dim]Your text:[/]")
            yield TextArea(self.text, id="editor", soft_wrap=True, placeholder=self.placeholder)
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    def action_save(self) -> None:
        text = self.query_one(TextArea).text.strip()
        self.dismiss(text or None)

    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


class AskScreen(ModalScreen[str | None]):
    """One line of text (a conversation title)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, question: str, value: str = "") -> None:
        super().__init__()
        self.question, self.value = question, value

    def compose(self):
        with Vertical(classes="dialog small"):
            yield Label(self.question)
            yield Input(self.value, id="answer")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class MemoryScreen(ModalScreen[None]):
    """List and search memories; edit or forget the highlighted one."""

    BINDINGS = [
        Binding("escape", "dismiss", "close"),
        Binding("ctrl+e", "edit", "edit", priority=True),
        Binding("delete,ctrl+d", "forget", "forget", priority=True),
    ]

    def __init__(self, store: Any) -> None:
        super().__init__()
        self.store = store
        self.items: list[Any] = []

    def compose(self):
        with Vertical(classes="dialog", id="memory-browser"):
            yield Label("[b]Memories[/b]  [dim]type to search · enter/ctrl+e edit · del/ctrl+d forget · esc close[/]")
            if self.store is None:
                yield Static("Memory is switched off (memory.enabled = false).", id="memory-off")
            yield Input(placeholder="search memories…", id="memory-search")
            yield OptionList(id="memory-list")

    def on_mount(self) -> None:
        self.reload()

    @on(Input.Changed, "#memory-search")
    def _search(self) -> None:
        self.reload()

    @on(Input.Submitted, "#memory-search")
    def _to_list(self) -> None:
        self.query_one(OptionList).focus()

    @work(thread=True, exclusive=True, group="memory")
    def reload(self) -> None:
        if self.store is None:
            return
        query = self.query_one("#memory-search", Input).value.strip()
        try:
            items = self.store.search(query, k=50) if query else self.store.list()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.app.call_from_thread(self.notify, str(exc), severity="error")
            return
        self.app.call_from_thread(self._show, items)

    def _show(self, items: list[Any]) -> None:
        self.items = items
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([Option(f"[b]{m.id}[/] [i]{m.kind}[/]: {escape(m.text)}", id=m.id) for m in items]
                            or [Option("[dim]no memories[/]", disabled=True)])
        if items:
            options.highlighted = 0

    def _current(self) -> Any:
        index = self.query_one(OptionList).highlighted
        return self.items[index] if index is not None and 0 <= index < len(self.items) else None

    @on(OptionList.OptionSelected)
    def _selected(self) -> None:
        self.action_edit()

    def action_edit(self) -> None:
        memory = self._current()
        if memory is None:
            return

        def save(text: str | None) -> None:
            if text and text != memory.text:
                self._apply(lambda: self.store.edit(memory.id, text), "memory updated")

        self.app.push_screen(EditScreen(f"Edit memory {memory.id}", memory.text), save)

    def action_forget(self) -> None:
        memory = self._current()
        if memory is not None:
            self._apply(lambda: self.store.forget([memory.id]), f"forgot {memory.id}")

    def _apply(self, change: Any, done: str) -> None:
        try:
            change()
        except Exception as exc:  # noqa: BLE001
            self.notify(str(exc), severity="error")
            return
        self.notify(done)
        self.reload()


class ConversationsScreen(ModalScreen[str | None]):
    """Past conversations: enter resumes, ctrl+r renames, del/ctrl+d deletes."""

    BINDINGS = [
        Binding("escape", "dismiss(None)", "close"),
        Binding("ctrl+r", "rename", "rename", priority=True),
        Binding("delete,ctrl+d", "delete", "delete", priority=True),
    ]

    def __init__(self, journal: Any, current: str) -> None:
        super().__init__()
        self.journal, self.current = journal, current
        self.items: list[Any] = []

    def compose(self):
        with Vertical(classes="dialog", id="conversations"):
            yield Label("[b]Conversations[/b]  [dim]enter resume · ctrl+r rename · del/ctrl+d delete · esc close[/]")
            yield OptionList(id="conversation-list")

    def on_mount(self) -> None:
        self.reload()

    def reload(self) -> None:
        items = []
        for conv in self.journal.conversations():
            turns = self.journal.turns(conversation_id=conv.id)
            if not turns and conv.id != self.current:
                continue  # empty conversations left behind by "new chat"
            title = conv.title or (turns[0].message[:50] if turns else "(new conversation)")
            items.append((conv, title, len(turns)))
        self.items = [c for c, _, _ in items]
        options = self.query_one(OptionList)
        options.clear_options()
        for conv, title, n in items:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(conv.updated))
            mark = "● " if conv.id == self.current else "  "
            options.add_option(Option(f"{mark}{escape(title)} [dim]{conv.pack} · {n} turns · {when}[/]", id=conv.id))
        if items:
            options.highlighted = 0
        options.focus()

    def _current(self) -> Any:
        index = self.query_one(OptionList).highlighted
        return self.items[index] if index is not None and 0 <= index < len(self.items) else None

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_rename(self) -> None:
        conv = self._current()
        if conv is None:
            return

        def done(title: str | None) -> None:
            if title:
                self.journal.rename_conversation(conv.id, title)
                self.reload()

        self.app.push_screen(AskScreen("New title:", conv.title), done)

    def action_delete(self) -> None:
        conv = self._current()
        if conv is not None:
            self.journal.delete_conversation(conv.id)
            self.notify("conversation deleted")
            if conv.id == self.current:
                app = cast("AssistantApp", self.app)  # this screen is pushed only by the chat app
                app.conversation_deleted()
                self.current = app.chat.conversation_id
            self.reload()


# ---------------------------------------------------------------------------------- onboarding
class OnboardingScreen(ModalScreen[tuple[str, str]]):
    """First run: a name (it names the user's folder) and a pack, then the chat starts."""

    def __init__(self, packs: dict[str, Any], user: str = "", pack: str | None = None) -> None:
        super().__init__()
        self.packs, self.user, self.pack = packs, user, pack
        self.pack_ids = sorted(packs)

    def compose(self):
        with Vertical(classes="dialog", id="onboarding"):
            yield Static("[b]Welcome![/b] Everything stays on this computer: your conversations, memories and what "
                         "the assistant learns from your feedback.")
            yield Label("Your name [dim](letters, digits, '.', '_' or '-')[/]:")
            yield Input(self.user, placeholder="e.g. alice", id="onboard-name")
            yield Static("", id="onboard-error")
            yield Label("What should it help with? [dim](enter starts; switch packs any time)[/]")
            yield OptionList(*[Option(f"[b]{escape(self.packs[pid].name)}[/] [dim]({pid})[/]\n  "
                                      f"{escape(self.packs[pid].description)}", id=pid) for pid in self.pack_ids],
                             id="onboard-packs")
            with Horizontal(classes="buttons"):
                yield Button("Start", variant="primary", id="onboard-start")

    def on_mount(self) -> None:
        options = self.query_one("#onboard-packs", OptionList)
        if self.pack in self.pack_ids:
            options.highlighted = self.pack_ids.index(self.pack)
        elif self.pack_ids:
            options.highlighted = 0
        self.query_one("#onboard-name", Input).focus()

    def _checked_name(self) -> str | None:
        from assistant.errors import AssistantError
        from assistant.paths import check_user_name

        name_input = self.query_one("#onboard-name", Input)
        error = self.query_one("#onboard-error", Static)
        try:
            name = check_user_name(name_input.value.strip())
        except AssistantError as exc:
            error.update(f"[red]{escape(str(exc))}[/]")
            error.display = True
            name_input.focus()
            return None
        error.update("")
        error.display = False
        return name

    @on(Input.Changed, "#onboard-name")
    def _typing(self) -> None:
        error = self.query_one("#onboard-error", Static)
        error.update("")
        error.display = False

    @on(Input.Submitted, "#onboard-name")
    def _name_entered(self) -> None:
        if self._checked_name() is not None:
            self.query_one("#onboard-packs", OptionList).focus()

    @on(OptionList.OptionSelected, "#onboard-packs")
    def _pack_chosen(self) -> None:
        self.finish()

    @on(Button.Pressed, "#onboard-start")
    def _start(self) -> None:
        self.finish()

    def finish(self) -> None:
        name = self._checked_name()
        if name is None:
            return
        index = self.query_one("#onboard-packs", OptionList).highlighted
        if index is None or not (0 <= index < len(self.pack_ids)):
            self.notify("choose a pack", severity="warning")
            return
        self.dismiss((name, self.pack_ids[index]))
