"""The chat app's model loading: a thread worker after the first frame, with the first-start
plan (``tui.loading``) shown as a note and a status line that follows ``Engine.load``."""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape
from textual import work

from tui.app_host import AppHost


class LoadingMixin(AppHost):
    """Mixed into ``AssistantApp``."""

    _loading: Any = None  # a tui.loading.LoadProgress while the model loads

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def load_engine(self) -> None:
        from tui import loading

        try:
            progress = loading.LoadProgress(loading.plan(self.settings))
        except Exception:  # noqa: BLE001 - the plan is only for showing progress
            progress = loading.LoadProgress([loading.Step("load", "loading the model", 0.0)])
        progress.advance(progress.steps[0].key)
        self._loading = progress
        if progress.first_start:
            self.call_from_thread(self._note, loading.intro(progress.steps))
        try:
            self.assistant.engine  # noqa: B018 - the property loads it
            if self.settings.memory.enabled:
                progress.advance("embedder")
                from memory import embedder

                embedder.get(self.settings.memory.embedder).embed(["warm up"])  # the first answer need not wait
        except Exception as exc:  # noqa: BLE001
            self._loading = None
            if self.assistant.engine_loaded:  # only the embedder failed: the first answer says why
                self.call_from_thread(self._engine_ready)
                return
            self.call_from_thread(self._set_status, "[red]the model failed to load[/]")
            self.call_from_thread(self.notify, str(exc), title="model", severity="error", timeout=30)
            return
        seconds = time.monotonic() - progress.started
        self._loading = None
        if progress.first_start:
            self.call_from_thread(self.notify, f"the model is ready (first start took {seconds:.0f} s)", title="model",
                                  timeout=6)
        self.call_from_thread(self._engine_ready)

    def _load_message(self, message: str) -> None:
        """Engine.load's progress (called in the load thread): the timer shows it."""
        if self._loading is not None:
            self._loading.on_message(message)

    def _show_loading(self) -> None:
        progress = self._loading
        if progress is not None:
            self._set_status(escape(progress.line()), busy=True)

    def _engine_ready(self) -> None:
        if self._loading is not None:
            return  # the engine is there, the embedder is still loading
        timer = getattr(self, "_loading_timer", None)
        if timer is not None:
            timer.stop()
            self._loading_timer = None
        engine = self.assistant.engine
        self._set_status(f"ready · {escape(str(getattr(engine, 'name', 'model')))}")
