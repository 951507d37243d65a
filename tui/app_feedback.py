"""The chat app's feedback: +1 / -1 on the last answer and the correction editor; each says what
happens to the feedback next (learning_notice.feedback_outlook)."""

from __future__ import annotations

from assistant.errors import AssistantError
from assistant.learning_notice import feedback_outlook
from tui.app_host import AppHost
from tui.screens import EditScreen
from tui.widgets import AssistantMessage, ChatLog, CorrectionMessage


class FeedbackMixin(AppHost):
    """Mixed into ``AssistantApp``."""

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
        if rating > 0:
            self.notify("rated +1, " + self._outlook(), timeout=6)
        else:
            self.notify(f"rated -1: a bad answer alone is not trained on; correct it ({self._key_for('correct')} "
                        "or /correct TEXT) to teach the right one", timeout=6)
        self.refresh_learning()

    def _outlook(self) -> str:
        return feedback_outlook(self.assistant, self.chat.user, self.chat.pack.id,
                                background=self.assistant.learner.notify in self.assistant.listeners)

    def action_rate_up(self) -> None:
        self._rate(1)

    def action_rate_down(self) -> None:
        self._rate(-1)

    def action_correct(self) -> None:
        target = self._feedback_target()
        if target is None:
            return

        def save(text: str | None) -> None:
            if text:
                self._save_correction(target, text)

        # The editor starts empty: the better answer is written from scratch, with the bad one
        # shown read-only above it (pre-filling it invited small edits of a wrong answer).
        self.push_screen(EditScreen("Write the answer it should have given", "", shown=target.text,
                                    shown_title="The answer you are correcting (read-only):",
                                    placeholder="Type the correct answer here"), save)

    def _save_correction(self, target: AssistantMessage, text: str) -> None:
        try:
            self.chat.correct(text, target.turn_id)
        except AssistantError as exc:
            self.notify(str(exc), severity="error")
            return
        self.query_one(ChatLog).mount(CorrectionMessage(text, target.turn_id), after=target)
        target.add_mark("[cyan]corrected[/]")
        self.notify("correction " + self._outlook(), timeout=6)
        self.refresh_learning()
