"""The one table from the core's error types to HTTP statuses (api/errors.py): by type, not by text."""

import pytest

from api.errors import as_api_error
from assistant.errors import (
    AssistantError,
    ConfigError,
    ContextTooLongError,
    MemoryNotFoundError,
    PackError,
    PromptError,
    StoreBusyError,
    TurnNotFoundError,
)
from assistant.grammar import GrammarError


@pytest.mark.parametrize("exc, status, code", [
    (ContextTooLongError("anything at all"), 400, "context_length_exceeded"),
    (MemoryNotFoundError("worded differently"), 404, "not_found"),
    (TurnNotFoundError("whatever"), 404, "not_found"),
    (PackError("no pack 'x'"), 404, "model_not_found"),
    (GrammarError("bad schema"), 400, "invalid_schema"),
    (ConfigError("bad value"), 400, "invalid_value"),
    (StoreBusyError("in use by PID 1"), 503, "store_busy"),
    (PromptError("no memory here, no turn either"), 400, None),  # the words no longer decide
    (AssistantError("other"), 400, None),
])
def test_error_types_map_to_statuses(exc, status, code):
    err = as_api_error(exc)
    assert (err.status, err.code) == (status, code)
    assert err.message == str(exc)


def test_unexpected_exception_is_a_500_without_its_text():
    err = as_api_error(ValueError("secret detail"))
    assert err.status == 500 and "secret" not in err.message
