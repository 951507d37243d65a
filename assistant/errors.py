"""The project's error hierarchy.

Every message says what went wrong *and how to fix it*; the CLI, TUI and API print the message
and never a traceback.
"""


class AssistantError(Exception):
    """Base class: an error the user can act on."""

    exit_code = 2


class ConfigError(AssistantError):
    """The settings file, an environment variable or a flag is wrong."""


class UnsafeNameError(ConfigError):
    """A user or pack name (or a path built from one) would leave the data directory."""


class ModelError(AssistantError):
    """The model is missing, corrupt, or cannot be loaded."""


class PromptError(AssistantError):
    """The prompt is empty or cannot fit in the model's context."""


class ContextTooLongError(PromptError):
    """The prompt does not fit in the model's context."""


class NotFoundError(AssistantError):
    """Something the user named (a memory, a turn) does not exist."""


class TurnNotFoundError(NotFoundError):
    """No turn with that id in the user's journal."""


class AuthError(AssistantError):
    """A key is missing, unknown, or not allowed to do this (the API answers 401/403)."""


class PackError(AssistantError):
    """A domain pack is missing or invalid."""


class MemoryStoreError(AssistantError):
    """The memory store cannot be read or written."""


class MemoryNotFoundError(MemoryStoreError, NotFoundError):
    """No memory with that id for the user."""


class AdapterError(AssistantError):
    """An adapter version is missing or cannot be loaded."""


class StoreBusyError(AssistantError):
    """Another process holds a user's stores; try again in a moment."""

    exit_code = 75  # EX_TEMPFAIL


class EncryptionError(AssistantError):
    """The data directory's encryption cannot be used as asked (see assistant/crypto.py)."""


class LockedError(EncryptionError):
    """The data directory is encrypted and no passphrase was given."""

    exit_code = 77  # EX_NOPERM


class WrongPassphraseError(EncryptionError):
    """The passphrase does not open the data directory's key; nothing was read or changed."""

    exit_code = 77


class BadInputError(AssistantError):
    """A value given on the command line or in a request is out of range."""


class Cancelled(AssistantError):
    """Generation was cancelled by the user."""
