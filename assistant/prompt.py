"""Prompt assembly within the model's context.

Layout, for KV-cache reuse: the system prompt (persona, then safety rules) first, then earlier
turns exactly as they were sent, then what changes every turn: recalled memories and the new
message. Over budget, the oldest turns go first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from assistant.errors import ContextTooLongError


@dataclass
class Recalled:
    """A memory given to the model, under a short id such as ``m1``."""

    short_id: str
    memory_id: str
    kind: str
    text: str
    citation: str = ""


@dataclass
class Built:
    ids: list[int]
    messages: list[dict[str, str]]
    dropped_turns: int


def user_block(message: str, recalled: Sequence[Recalled], style: Sequence[str] = ()) -> str:
    """The user turn as sent: what is known about the user and the pack's notes above the message,
    the answer style the user asked for right before it.

    No ids, file names or headings go into the text: a small model copies whatever markup it is
    shown into its answer. Sources travel as data (``Reply.sources``)."""
    if not recalled and not style:
        return message
    about = [r for r in recalled if r.kind != "knowledge"]
    knowledge = [r for r in recalled if r.kind == "knowledge"]
    parts: list[str] = []
    if about:
        parts.append("What I told you about myself:\n" + "\n".join(f"- {r.text}" for r in about))
    if knowledge:
        parts.append("Notes to answer from:\n" + "\n".join(f"- {r.text}" for r in knowledge))
    if style:
        parts.append("How I want answers: " + " ".join(s.rstrip(".") + "." for s in style))
    return "\n\n".join(parts) + f"\n\nMy message: {message}"


def build(
    engine: Any,
    system: str,
    history: Sequence[tuple[str, str]],
    user_text: str,
    max_new_tokens: int,
) -> Built:
    """Render the prompt, dropping the oldest turns until prompt + reply fit the context."""
    limit = engine.context_tokens - max_new_tokens
    turns = list(history)
    dropped = 0
    while True:
        messages = [{"role": "system", "content": system}]
        for sent, reply in turns:
            messages += [{"role": "user", "content": sent}, {"role": "assistant", "content": reply}]
        messages.append({"role": "user", "content": user_text})
        ids = engine.render(messages)
        if len(ids) <= limit:
            return Built(ids, messages, dropped)
        if not turns:
            raise ContextTooLongError(
                f"the message is too long: the prompt needs {len(ids)} tokens but the model's context "
                f"holds {engine.context_tokens}, with {max_new_tokens} kept for the answer. "
                "Shorten the message or lower --max-tokens."
            )
        turns.pop(0)
        dropped += 1
