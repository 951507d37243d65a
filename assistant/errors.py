"""The project's error hierarchy.

Every message says what went wrong *and how to fix it*; the CLI, TUI and API print the message
and never a traceback.
"""


class AssistantError(Exception):
    """Base class: an error the user can act on."""

    exit_code = 2


class ConfigError(AssistantError):
    """The settings file, an environment variable or a flag is wrong."""


class ModelError(AssistantError):
    """The model is missing, corrupt, or cannot be loaded."""


class PromptError(AssistantError):
    """The prompt is empty or cannot fit in the model's context."""


class PackError(AssistantError):
    """A domain pack is missing or invalid."""


class MemoryStoreError(AssistantError):
    """The memory store cannot be read or written."""


class AdapterError(AssistantError):
    """An adapter version is missing or cannot be loaded."""


class Cancelled(AssistantError):
    """Generation was cancelled by the user."""
