"""The chat app's learning side: learner events (from its thread) to the sidebar, the learning
panel and notifications; "learn now" in a thread worker."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual import work
from textual.message import Message
from textual.widgets import Static

from assistant.errors import AssistantError
from assistant.learning_notice import explain_gate
from tui.app_host import AppHost
from tui.learning_screen import LearningScreen, describe_event


class LearningEvent(Message):
    """A learner event, posted from the learner's thread (post_message is thread-safe)."""

    def __init__(self, user: str, pack: str, event: dict[str, Any], manual: bool = False) -> None:
        super().__init__()
        self.user, self.pack, self.event, self.manual = user, pack, event, manual


def round_summary(result: Any) -> dict[str, Any]:
    """A ``RoundResult`` as the dict the learner's "done" event carries."""
    decision = getattr(result, "decision", None)
    reason = getattr(result, "reason", None) or (decision.reason if decision is not None else getattr(result, "message", ""))
    return {
        "phase": "done", "promoted": bool(getattr(result, "promoted", False)), "version": getattr(result, "version", None),
        "live": getattr(result, "live", None), "reason": reason,
        "gate": decision.to_json() if decision is not None else None,
    }


class LearningMixin(AppHost):
    """Mixed into ``AssistantApp`` (which provides chat, assistant, settings, notify, query_one)."""

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
            if key not in self.learning_progress and not message.manual and phase == "training":
                where = self._where(message.user, message.pack)
                self.notify(f"learning from your feedback{where}: a round started (the UI stays usable)",
                            title="learning", timeout=5)
            self.learning_progress[key] = event
        for screen in self.screen_stack:
            if isinstance(screen, LearningScreen) and (screen.user, screen.pack) == key:
                screen.apply_event(event)
        self.refresh_learning()

    def _where(self, user: str, pack: str) -> str:
        mine = self.chat is not None and (user, pack) == (self.chat.user, self.chat.pack.id)
        return "" if mine else f" ({user}/{pack})"

    def _round_finished(self, user: str, pack: str, event: dict[str, Any]) -> None:
        where = self._where(user, pack)
        if event.get("phase") == "failed":
            self.notify(f"the learning round failed{where}: {event.get('error')}", title="learning", severity="error",
                        timeout=10)
        elif event.get("promoted"):
            self.notify(f"learned from your feedback{where}: adapter {event.get('version')} is now live",
                        title="learning", timeout=8)
        elif event.get("gate"):
            why = explain_gate(event.get("gate"), self.settings.learning, str(event.get("reason") or ""))
            self.notify(f"the new adapter was rejected{where}, the live one stays: {why}",
                        title="learning", severity="warning", timeout=12)
        else:
            self.notify(f"no learning round{where}: {event.get('reason')}", title="learning", severity="warning",
                        timeout=8)

    def refresh_learning(self) -> None:
        """The sidebar's learning line: pending examples, the live adapter, a round in progress."""
        if self.chat is None:
            return
        key = (self.chat.user, self.chat.pack.id)
        box = self.query_one("#learning", Static)
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
        off = "" if self.settings.learning.enabled else "\n[dim]automatic rounds off (learning.enabled)[/]"
        box.update(f"{status.pending}/{need} new examples · {live}{off}")

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
