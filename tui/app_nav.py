"""The chat app's navigation: switching packs, resuming conversations, screenshots."""

from __future__ import annotations

from assistant.errors import AssistantError
from assistant.settings import remember_choice
from tui.app_host import AppHost
from tui.screens import ConversationsScreen, PackScreen
from tui.widgets import AssistantMessage, ChatLog, CorrectionMessage, UserMessage


class NavMixin(AppHost):
    """Mixed into ``AssistantApp``."""

    def action_screenshot(self, filename: str | None = None, path: str | None = None) -> None:
        self.deliver_screenshot(filename, path)

    def deliver_screenshot(self, filename: str | None = None, path: str | None = None,
                           time_format: str | None = None) -> str | None:
        """Save an SVG of the screen under the data directory (Textual's default, a Downloads
        folder, may not exist) and say where. An SVG shows the conversation as text, so while the
        data directory is encrypted it goes to the user's Pictures folder (else home) instead."""
        from pathlib import Path

        from assistant import crypto, paths

        folder = path or str(paths.home() / "screenshots")
        try:
            import os

            if path is None and crypto.mode() != "off":
                pictures = Path.home() / "Pictures"
                folder = str(pictures if pictures.is_dir() else Path.home())
            os.makedirs(folder, exist_ok=True)
            saved = self.save_screenshot(filename, folder, time_format)
        except (OSError, AssistantError) as exc:
            self.notify(f"could not save the screenshot: {exc}", title="screenshot", severity="error")
            return None
        self.notify(f"saved {saved}", title="screenshot", timeout=8)
        return saved

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
        self._conversation_intro()

    def _switch(self, pack_id: str, conversation_id: str | None = None) -> None:
        try:
            chat = self.assistant.chat(self.chat.user, pack_id, conversation_id=conversation_id)
        except AssistantError as exc:
            self.notify(str(exc), severity="error")
            return
        self.chat = chat
        remember_choice(chat.user, chat.pack.id)  # a restart comes back to this pack
        self._clear_log()
        self._show_who()
        self.refresh_learning()
        log = self.query_one(ChatLog)
        if conversation_id:
            self._conversation_intro(starters=False)
            for turn in chat.journal.turns(conversation_id=conversation_id):
                log.mount(UserMessage(turn.message))
                msg = AssistantMessage(turn.reply, turn_id=turn.id)
                log.mount(msg)
                if turn.correction:
                    log.mount(CorrectionMessage(turn.correction, turn.id))
                self._last = msg
        else:
            self._note(f"Switched to {chat.pack.name}.")
            self._conversation_intro()
