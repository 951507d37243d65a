"""What the chat app's mixins (``app_learning``, ``app_loading``, ``app_nav``, ``app_feedback``) use of ``AssistantApp``.

For the type checker only: at run time ``AppHost`` is ``object``, so the mixins stay plain
classes; the type checker sees them derive from a Textual ``App`` that has the attributes and
methods ``AssistantApp`` (tui/app.py) provides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading

    from textual.app import App
    from textual.timer import Timer

    from tui.widgets import AssistantMessage

    class AppHost(App[Any]):
        settings: Any
        assistant: Any
        chat: Any
        learning_progress: dict[tuple[str, str], dict[str, Any]]
        _manual_round: tuple[str, str] | None
        _quitting: threading.Event
        _generating: bool
        _last: AssistantMessage | None
        _loading_timer: Timer | None

        def _note(self, text: str) -> None: ...
        def _set_status(self, text: str, busy: bool = False) -> None: ...
        def _conversation_intro(self, starters: bool = True) -> None: ...
        def _show_who(self) -> None: ...
        def _chat_screen(self) -> None: ...
        def _clear_log(self) -> None: ...
        def refresh_learning(self) -> None: ...
        def _feedback_target(self) -> AssistantMessage | None: ...
        def _key_for(self, action: str) -> str: ...
else:
    AppHost = object
