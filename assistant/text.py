"""Text from outside (command line, files, API bodies) made safe for the tokenizer and SQLite.

Foundation: imports nothing of this project."""

from __future__ import annotations


def clean_text(text: object) -> str:
    """``text`` as valid Unicode: bytes that were not UTF-8 (and lone surrogates) become U+FFFD.

    Python hands undecodable command-line and file bytes over as lone surrogates, which the
    tokenizer and SQLite refuse; replacing them keeps everything else the user wrote.
    """
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", "replace")
    text = "" if text is None else str(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
