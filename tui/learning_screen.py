"""The learning panel: pending examples, live training progress, the last gate result with
its thresholds, and the adapter versions (use one, or roll back to the base model)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from rich.markup import escape
from textual import on
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

if TYPE_CHECKING:
    from tui.app import AssistantApp

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
    def _pack_adapter_dir(self) -> Any:
        return self.assistant.pack(self.pack).adapter_dir()

    def _store(self) -> Any:
        from assistant.adapters import AdapterStore

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
            from assistant.adapters import pack_store, shipped_store

            pack_live = pack_store(self.pack).current()
            if pack_live is None:
                shipped = shipped_store(self.pack, self._pack_adapter_dir())
                pack_live = f"{shipped.current()} (shipped with the pack)" if shipped and shipped.current() else None
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
        cast("AssistantApp", self.app).learn_now(self.user, self.pack)  # pushed only by the chat app

    @on(Button.Pressed, "#learn-now")
    def _learn_button(self) -> None:
        self.action_learn()

    @on(Button.Pressed, "#rollback")
    def _rollback_button(self) -> None:
        self.action_rollback()

    @on(Button.Pressed, "#close")
    def _close(self) -> None:
        self.dismiss()
