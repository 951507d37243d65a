"""What one generation is made of: its parameters (validated), its statistics, the cancel flag,
a conversation's KV session, the streamed result, and the chat templates the engine renders with."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from assistant.errors import ModelError
from assistant.settings import GenerationSettings

FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Gemma's turn format: "user" and "model" turns, each closed by <end_of_turn>; Gemma has no system
# role, so a system message opens the first user turn, separated by a blank line.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = ns.system + m['content'] + '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def template_for(tokenizer: Any, name: str = "the model") -> str:
    """A chat template for a tokenizer that ships none, chosen by the turn markers its vocabulary
    has; a clear error when there is no known format to use."""
    vocab = tokenizer.get_vocab()
    if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab:
        return GEMMA_TEMPLATE
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return FALLBACK_TEMPLATE
    raise ModelError(
        f"{name} has no chat template and no turn markers this program knows: set `model.chat_template` in "
        "config.toml to a Jinja chat template file for it (or add chat_template.jinja to the model folder)"
    )


@dataclass
class GenParams(GenerationSettings):
    """One generation's parameters: the generation settings (same fields, same defaults; a
    repetition penalty above 1 discourages repeating recent tokens, which the small default model
    does without it) plus what only a call sets."""

    stop: Sequence[str] = ()
    penalty_window: int = 64

    def __post_init__(self) -> None:  # out-of-range values fail here, with the valid range
        from assistant.settings import check_generation

        check_generation({k: getattr(self, k) for k in ("temperature", "top_p", "max_new_tokens", "repetition_penalty", "seed")})


@dataclass
class GenStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from the conversation cache
    completion_tokens: int = 0
    ttft_s: float = 0.0  # time to first token (prefill + first sample)
    decode_s: float = 0.0
    finish_reason: str = ""  # "stop" (end of turn / stop string), "length", "cancelled"

    @property
    def decode_tps(self) -> float:
        n = self.completion_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


class CancelToken:
    """Set from any thread; the decode loop checks it before every token."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class KVSession:
    """A conversation's KV cache, the token ids it holds and the adapter it was computed with."""

    ids: list[int] = field(default_factory=list)
    cache: Any = None
    adapter: str | None = None

    def reset(self) -> None:
        self.ids = []
        self.cache = None
        self.adapter = None


class Streamed:
    """Text that streams: iterating yields ``chunks`` and collects them into ``text``."""

    chunks: Iterator[str]
    text: str

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self.chunks:
                self.text += chunk
                yield chunk
        finally:  # a reader that stops early closes the source too (it finishes its turn, frees the engine)
            close = getattr(self.chunks, "close", None)
            if close is not None:
                close()

    def collect(self) -> str:
        for _ in self:
            pass
        return self.text


class Generation(Streamed):
    """Iterate for text chunks; afterwards ``text`` and ``stats`` hold the result."""

    def __init__(self, chunks: Iterator[str], stats: GenStats) -> None:
        self.chunks = chunks
        self.stats = stats
        self.text = ""

