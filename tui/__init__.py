"""The terminal UI (Textual). Import ``tui.app`` only when the UI is wanted: it loads textual."""
