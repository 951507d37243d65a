"""Modal screens: help, pack picker, correction editor, memory browser, conversations, learning
panel and first-run onboarding."""

from __future__ import annotations

import time
from typing import Any, Sequence

from rich.markup import escape
from textual import on, work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, OptionList, ProgressBar, Static, TextArea
from textual.widgets.option_list import Option


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
                self.app.conversation_deleted()
                self.current = self.app.chat.conversation_id
            self.reload()


# ---------------------------------------------------------------------------------- learning
GATE_ROWS = [
    ("user_loss", "user held-out loss (lower is better)", "{:.3f}"),
    ("user_match", "user held-out answer match", "{:.0%}"),
    ("eval_loss", "pack eval answer loss", "{:.3f}"),
    ("guard_ppl", "guard-set perplexity", "{:.2f}"),
]


def _fmt(fmt: str, value: Any) -> str:
    if value is None or value != value:  # null / NaN: not measured
        return "–"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return "–" if value is None else str(value)


def gate_rule(gate: dict[str, Any], learning: Any) -> str:
    """The gate's checks with their numbers and thresholds, one line each (✓ passed, ✗ failed)."""
    from assistant.learning_notice import gate_checks

    marks = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]–[/]"}
    return "\n".join(f"{marks[ok]} {escape(text)}" for ok, text in gate_checks(gate, learning))


def describe_event(event: dict[str, Any]) -> str:
    """One line for a learner event (the panel and the sidebar show it)."""
    phase = event.get("phase")
    if phase == "training":
        parts = [f"training: step {event.get('step', 0)}/{event.get('steps', '?')}"]
        if event.get("loss") is not None:
            parts.append(f"loss {_fmt('{:.3f}', event['loss'])}")
        if event.get("eta_s") is not None:
            parts.append(f"~{_fmt('{:.0f}', event['eta_s'])} s left")
        if event.get("examples") is not None:
            parts.append(f"{event['examples']} examples")
        return " · ".join(parts)
    if phase == "starting":
        return "starting a learning round…"
    if phase == "gating":
        return "checking the candidate against the live adapter…"
    if phase == "saving":
        return "saving the new adapter…"
    if phase == "done":
        if event.get("promoted"):
            return f"round finished: {event.get('version')} promoted and live"
        return f"round finished: not promoted ({event.get('reason') or 'no reason given'})"
    if phase == "failed":
        return f"round failed: {event.get('error', 'unknown error')}"
    return str(phase or "")


class LearningScreen(ModalScreen[None]):
    """Pending examples, live training progress, the last gate result and the adapter versions.

    Enter (or ctrl+o) on a version makes it live; "base model" rolls back to no adapter.
    Ctrl+l runs a round now (in the app's thread worker, so closing the panel does not stop it).
    """

    BINDINGS = [
        Binding("escape", "dismiss", "close"),
        Binding("ctrl+l", "learn", "learn now", priority=True),
        Binding("ctrl+o", "rollback", "roll back to the highlighted version", priority=True),
    ]

    def __init__(self, assistant: Any, user: str, pack: str) -> None:
        super().__init__()
        self.assistant, self.user, self.pack = assistant, user, pack
        self.version_ids: list[str] = []
        self.live: str | None = None

    def compose(self):
        with Vertical(classes="dialog", id="learning-panel"):
            yield Label(f"[b]Learning[/b] · {escape(self.user)} / {escape(self.pack)}  "
                        "[dim]ctrl+l learn · enter use version · esc close[/]")
            yield Static("", id="learn-status")
            yield Static("[dim]idle[/]", id="learn-phase")
            yield ProgressBar(total=None, show_eta=False, id="learn-progress")
            yield Static("Last round", classes="section")
            yield Static("[dim]no round yet[/]", id="learn-verdict")
            yield DataTable(id="gate-table", cursor_type="none", zebra_stripes=True)
            yield Static("Adapter versions", classes="section")
            yield OptionList(id="versions")
            yield Static("", id="version-detail")
            with Horizontal(classes="buttons"):
                yield Button("Learn now", variant="primary", id="learn-now", compact=True)
                yield Button("Use selected", id="rollback", compact=True)
                yield Button("Close", id="close", compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#gate-table", DataTable)
        table.add_column("", key="metric")
        table.add_column("live", key="live")
        table.add_column("candidate", key="candidate")
        table.display = False
        self.query_one("#learn-progress").display = False
        self.reload()
        self.query_one("#versions", OptionList).focus()

    # ------------------------------------------------------------------ data
    def _store(self) -> Any:
        from personalization.adapters import AdapterStore

        return AdapterStore(self.user, self.pack)

    def reload(self, progress: bool = True) -> None:
        """Re-read the learner's status and the adapter store (and the round in progress)."""
        learner = self.assistant.learner
        settings = self.assistant.settings.learning
        try:
            status = learner.status(self.user, self.pack)
        except Exception as exc:  # noqa: BLE001 - a broken store is shown, not fatal
            self.query_one("#learn-status", Static).update(f"[red]{escape(str(exc))}[/]")
            status = None
        if status is not None:
            auto = (f"rounds start by themselves at {settings.min_new_examples} new examples after "
                    f"{settings.idle_seconds:.0f} s idle" if settings.enabled else "automatic rounds are off (learning.enabled)")
            self.live = status.live
            self.query_one("#learn-status", Static).update(
                f"[b]{status.pending}[/] new example(s) waiting (rated +1 or corrected) · "
                f"live adapter: [b]{escape(status.live or 'none (base model)')}[/]\n[dim]{escape(auto)}[/]")
            self.show_last(status.last)
        if progress:
            if status is not None and status.running and status.progress:
                self.apply_event(status.progress)
            else:
                state = getattr(self.app, "learning_progress", {}).get((self.user, self.pack))
                if state:
                    self.apply_event(state)
        self.show_versions()

    def show_last(self, last: dict[str, Any]) -> None:
        verdict = self.query_one("#learn-verdict", Static)
        table = self.query_one("#gate-table", DataTable)
        if not last:
            verdict.update("[dim]no round yet[/]")
            table.display = False
            return
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(last["at"])) if last.get("at") else ""
        mark = "[green]PROMOTED[/]" if last.get("promoted") else "[yellow]REJECTED[/]" if last.get("gate") else "[dim]no candidate[/]"
        version = f" {escape(str(last['version']))}" if last.get("version") else ""
        gate = last.get("gate") or {}
        verdict.update(f"{mark}{version} [dim]{when}[/]\n{escape(str(last.get('reason') or ''))}"
                       + (f"\n{gate_rule(gate, self.assistant.settings.learning)}" if gate else ""))
        table.clear()
        if gate:
            live, cand = gate.get("live") or {}, gate.get("candidate") or {}
            for key, label, fmt in GATE_ROWS:
                table.add_row(label, _fmt(fmt, live.get(key)), _fmt(fmt, cand.get(key)), key=key)
        table.display = bool(gate)

    def show_versions(self) -> None:
        store = self._store()
        options = self.query_one("#versions", OptionList)
        options.clear_options()
        try:
            versions = store.versions()
            live = store.current()
        except Exception as exc:  # noqa: BLE001 - e.g. CURRENT names a missing version
            versions, live = self._safe_versions(store), None
            self.query_one("#version-detail", Static).update(f"[red]{escape(str(exc))}[/]")
        self.live = live
        pack_live = None
        try:
            from personalization.adapters import pack_store

            pack_live = pack_store(self.pack).current()
        except Exception:  # noqa: BLE001
            pass
        base = "base model (no personal adapter)" + (f" [dim]· the pack's starting adapter {pack_live} applies[/]" if pack_live else "")
        self.version_ids = ["none"] + list(reversed(versions))
        rows = [Option(f"{'● ' if live is None else '  '}{base}", id="none")]
        for v in reversed(versions):
            rows.append(Option(f"{'● ' if v == live else '  '}[b]{v}[/] {escape(self._summary(store, v))}", id=v))
        options.add_options(rows)
        options.highlighted = self.version_ids.index(live) if live in self.version_ids else 0

    @staticmethod
    def _safe_versions(store: Any) -> list[str]:
        try:
            return store.versions()
        except Exception:  # noqa: BLE001
            return []

    @staticmethod
    def _summary(store: Any, version: str) -> str:
        try:
            meta = store.meta(version)
        except Exception:  # noqa: BLE001
            return "(no meta.json)"
        parts = []
        if meta.get("created"):
            parts.append(time.strftime("%Y-%m-%d %H:%M", time.localtime(meta["created"])))
        if meta.get("steps") is not None:
            parts.append(f"{meta['steps']} steps")
        if meta.get("examples") is not None:
            parts.append(f"{meta['examples']} examples")
        loss = ((meta.get("gate") or {}).get("candidate") or {}).get("user_loss")
        if isinstance(loss, (int, float)):
            parts.append(f"held-out loss {loss:.3f}")
        return " · ".join(parts)

    def apply_event(self, event: dict[str, Any]) -> None:
        """Show a learner event (called on the UI thread)."""
        phase = event.get("phase")
        text = describe_event(event)
        style = {"failed": "red", "done": "green" if event.get("promoted") else "yellow"}.get(str(phase), "")
        self.query_one("#learn-phase", Static).update(f"[{style}]{escape(text)}[/]" if style else escape(text))
        bar = self.query_one("#learn-progress", ProgressBar)
        if phase == "training" and event.get("steps"):
            bar.display = True
            bar.update(total=event["steps"], progress=event.get("step", 0))
        elif phase in ("starting", "gating", "saving"):
            bar.display = True
            if phase == "starting":
                bar.update(total=None)
        else:
            bar.display = False
        if phase in ("done", "failed"):
            self.reload(progress=False)

    # ------------------------------------------------------------------ actions
    def _highlighted(self) -> str | None:
        index = self.query_one("#versions", OptionList).highlighted
        return self.version_ids[index] if index is not None and 0 <= index < len(self.version_ids) else None

    @on(OptionList.OptionHighlighted, "#versions")
    def _highlight(self) -> None:
        version = self._highlighted()
        detail = self.query_one("#version-detail", Static)
        if version is None or version == "none":
            detail.update("[dim]enter: answer with the base model (no personal adapter)[/]")
            return
        try:
            meta = self._store().meta(version)
        except Exception as exc:  # noqa: BLE001
            detail.update(f"[red]{escape(str(exc))}[/]")
            return
        reason = ((meta.get("gate") or {}).get("reason")) or ""
        parent = meta.get("parent") or "base model"
        detail.update(f"[dim]{escape(version)}: trained from {escape(str(parent))}"
                      + (f" · gate: {escape(str(reason))}" if reason else "") + "[/]")

    @on(OptionList.OptionSelected, "#versions")
    def _selected(self) -> None:
        self.action_rollback()

    def action_rollback(self) -> None:
        version = self._highlighted()
        if version is None:
            return
        if version == (self.live or "none"):
            self.notify(f"{'the base model' if version == 'none' else version} is already live", timeout=3)
            return
        try:
            now = self._store().rollback(version)
        except Exception as exc:  # noqa: BLE001
            self.notify(str(exc), title="rollback", severity="error")
            return
        self.notify(f"now using {now}" if now else "back to the base model (no personal adapter)", title="adapters")
        self.reload(progress=False)
        refresh = getattr(self.app, "refresh_learning", None)
        if refresh is not None:
            refresh()

    def action_learn(self) -> None:
        self.app.learn_now(self.user, self.pack)

    @on(Button.Pressed, "#learn-now")
    def _learn_button(self) -> None:
        self.action_learn()

    @on(Button.Pressed, "#rollback")
    def _rollback_button(self) -> None:
        self.action_rollback()

    @on(Button.Pressed, "#close")
    def _close(self) -> None:
        self.dismiss()


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
