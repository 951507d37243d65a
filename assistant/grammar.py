"""Constrained decoding: JSON, JSON Schema and tool calls (the only importer of xgrammar).

A ``Constraint`` is handed to ``Engine.stream(..., constraint=...)``. Before every sample the
engine calls ``mask(logits)``, which sets the logits of every token the grammar forbids to -inf;
after it calls ``accept(token)``, which advances the grammar and returns True when the grammar
is complete (nothing but an end of turn may follow), so the engine stops there. The output is
therefore valid by construction, even from a 135M model: the model only chooses among the
tokens the grammar allows.

A constraint is single-use (one generation). Build one per reply with the factories below:

    constraint = grammar.json_object(engine)
    constraint = grammar.json_schema(engine, {"type": "object", ...})
    constraint = grammar.tool_calls(engine, tools, mode="auto" | "required" | "<function name>")
    reply = chat.send("...", constraint=constraint)

``LogprobRecorder`` uses the same two calls to record each sampled token's log-probability
(and the top alternatives) without changing the distribution; it can wrap another constraint.

Tool calls are written as ``<tool_call>{"name": NAME, "arguments": {...}}</tool_call>``; with
mode "auto" the model may write text instead, and the grammar takes over once it writes
``<tool_call>`` (xgrammar's triggered structural tags).
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

from assistant.errors import AssistantError

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
_compilers: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class GrammarError(AssistantError):
    """A schema or tool definition the grammar engine cannot use."""


def _compiler(engine: Any) -> Any:
    """One xgrammar compiler per tokenizer (building the vocabulary table takes ~0.3 s)."""
    import xgrammar as xgr

    tokenizer = engine.tokenizer
    with _lock:
        found = _compilers.get(tokenizer)
        if found is None:
            vocab = int(getattr(engine.config, "vocab_size", 0) or len(tokenizer))
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=max(vocab, len(tokenizer)),
                                                      stop_token_ids=sorted(engine.eos_ids))
            found = (xgr.GrammarCompiler(info, max_threads=2), info.vocab_size, _control_tokens(info))
            _compilers[tokenizer] = found
        return found


def _control_tokens(info: Any) -> dict[str, Any]:
    """Token ids banned by every JSON constraint: those whose bytes hold a control character, and
    those that are only a piece of a UTF-8 character.

    xgrammar 0.2.8 lets a string with ``maxLength`` hold raw control characters (its character
    class there is ``[^"\\\r\n]``), which no JSON parser accepts. Compact JSON needs no control
    character at all; tool calls keep newlines (free text before a call, and between elements).
    A byte piece lets a grammar that counts bytes as characters end a string inside a character
    (seen with a random model): without them the output is valid UTF-8, and the vocabulary's whole
    tokens still spell every common character."""
    import torch

    strict, lenient = [], []
    for i, raw in enumerate(info.decoded_vocab):
        raw = bytes(raw)
        low = {b for b in raw if b < 0x20}
        try:
            raw.decode("utf-8")
            partial = False
        except UnicodeDecodeError:
            partial = True  # a piece of a character: under a grammar it can end as invalid UTF-8
        if low or partial:
            strict.append(i)
            if partial or low - {0x0A, 0x0D}:
                lenient.append(i)
    return {"strict": torch.tensor(strict, dtype=torch.long), "lenient": torch.tensor(lenient, dtype=torch.long)}


class Constraint:
    """A compiled grammar and its matcher for one generation."""

    def __init__(self, engine: Any, compiled: Any, vocab_size: int, kind: str, banned: Any = None) -> None:
        import xgrammar as xgr

        self.kind = kind
        self._xgr = xgr
        self._tokenizer = engine.tokenizer
        self._matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=sorted(engine.eos_ids))
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._vocab = vocab_size
        self._banned = banned if banned is not None and banned.numel() else None
        self._stops = set(engine.eos_ids)
        self._filled = False
        self.ids: list[int] = []
        self._emitted = 0

    def mask(self, logits: Any) -> Any:
        if not self._filled:
            self._matcher.fill_next_token_bitmask(self._bitmask)
        self._filled = False
        row = logits.reshape(1, -1)
        if row.shape[1] > self._vocab:  # logits padded beyond the tokenizer: never allowed
            row[:, self._vocab:] = float("-inf")
        self._xgr.apply_token_bitmask_inplace(row, self._bitmask, vocab_size=min(self._vocab, row.shape[1]))
        if self._banned is not None:
            row[0, self._banned[self._banned < row.shape[1]]] = float("-inf")
        return logits

    def accept(self, token: int) -> bool:
        """Advance the grammar; True once only an end of turn can follow."""
        if self._matcher.is_terminated():
            return True
        if not self._matcher.accept_token(int(token)):
            return True  # cannot happen with the mask applied; stop rather than emit invalid output
        self.ids.append(int(token))
        if self._matcher.is_terminated():
            return True
        # Fill the next mask now: when only stop tokens remain, the grammar is complete and the
        # engine can stop without another forward pass.
        self._matcher.fill_next_token_bitmask(self._bitmask)
        self._filled = True
        return self._only_stops()

    def _only_stops(self) -> bool:
        import torch

        bits = self._bitmask[0]
        if int(torch.count_nonzero(bits)) > (len(self._stops) + 31) // 32 + 1:
            return False  # many words still have allowed tokens
        allowed = [w * 32 + b for w in torch.nonzero(bits).flatten().tolist()
                   for b in range(32) if (int(bits[w]) >> b) & 1 and w * 32 + b < self._vocab]
        return bool(allowed) and set(allowed) <= self._stops

    @property
    def text(self) -> str:
        """What the model wrote under the grammar (without the end-of-turn token)."""
        return self._tokenizer.decode(self.ids, skip_special_tokens=True)

    def take_text(self) -> str:
        """The text accepted since the last call (never half a UTF-8 character)."""
        text = self.text
        if text.endswith("\ufffd"):
            return ""
        new = text[self._emitted:]
        self._emitted = len(text)
        return new

    @property
    def complete(self) -> bool:
        return self._matcher.is_terminated() or self._matcher.is_completed()


def _check_schema(schema: Any, where: str) -> dict[str, Any]:
    if isinstance(schema, bool):
        return {} if schema else {"not": {}}
    if not isinstance(schema, dict):
        raise GrammarError(f"{where} must be a JSON Schema object")
    return schema


def json_object(engine: Any) -> Constraint:
    """Any JSON object (OpenAI's JSON mode)."""
    compiler, vocab, control = _compiler(engine)
    compiled = compiler.compile_json_schema({"type": "object"}, any_whitespace=False, strict_mode=False)
    return Constraint(engine, compiled, vocab, "json_object", control["strict"])


def json_schema(engine: Any, schema: Any, strict: bool = True) -> Constraint:
    """JSON that validates against ``schema`` (compact: no free whitespace, so a small model
    cannot wander off into blank lines)."""
    compiler, vocab, control = _compiler(engine)
    try:
        compiled = compiler.compile_json_schema(json.dumps(_check_schema(schema, "the schema")),
                                                any_whitespace=False, strict_mode=bool(strict))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise GrammarError(f"the JSON Schema cannot be used for constrained decoding: {exc}") from exc
    return Constraint(engine, compiled, vocab, "json_schema", control["strict"])


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


def _tool_tags(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    return [
        {"type": "tag", "begin": f'{TOOL_OPEN}{{"name": {json.dumps(t.name)}, "arguments": ',
         "content": {"type": "json_schema", "json_schema": _check_schema(t.parameters or {"type": "object"},
                                                                         f"the parameters of {t.name}"),
                     "max_whitespace_cnt": 2},  # a small model must not wander into blank lines
         "end": f"}}{TOOL_CLOSE}"}
        for t in tools
    ]


def tool_calls(engine: Any, tools: Sequence[Tool], mode: str = "auto") -> Constraint:
    """One tool call, or (mode "auto") text that may end in one tool call.

    ``mode``: "auto" (the model chooses), "required" (one of ``tools``), or a tool's name.
    """
    if not tools:
        raise GrammarError("tool calls need at least one tool")
    if mode not in ("auto", "required"):
        tools = [t for t in tools if t.name == mode]
        if not tools:
            raise GrammarError(f"tool_choice names the function {mode!r}, which is not in tools")
    tags = _tool_tags(tools)
    if mode == "auto":
        fmt: dict[str, Any] = {"type": "triggered_tags", "triggers": [TOOL_OPEN], "tags": tags,
                               "stop_after_first": True}
    else:
        fmt = tags[0] if len(tags) == 1 else {"type": "or", "elements": tags}
    compiler, vocab, control = _compiler(engine)
    try:
        compiled = compiler.compile_structural_tag({"type": "structural_tag", "format": fmt})
    except (RuntimeError, ValueError, TypeError) as exc:
        raise GrammarError(f"the tools' parameters cannot be used for constrained decoding: {exc}") from exc
    return Constraint(engine, compiled, vocab, "tool_calls", control["lenient"])


def parse_tool_calls(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Text written under ``tool_calls`` -> (the text before any call, [(name, arguments JSON)])."""
    at = text.find(TOOL_OPEN)
    if at < 0:
        return text, []
    calls: list[tuple[str, str]] = []
    rest = text[at:]
    while rest.startswith(TOOL_OPEN):
        end = rest.find(TOOL_CLOSE)
        if end < 0:
            break  # cut off by the token budget
        try:
            call = json.loads(rest[len(TOOL_OPEN):end])
        except ValueError:
            break
        calls.append((str(call.get("name")), json.dumps(call.get("arguments"), ensure_ascii=False)))
        rest = rest[end + len(TOOL_CLOSE):].lstrip()
    return text[:at].rstrip(), calls


class LogprobRecorder:
    """Records, for every sampled token, its log-probability and the ``top`` most likely tokens,
    from the logits the sampler saw (after any repetition penalty and grammar mask, before
    temperature). Wraps an optional inner constraint."""

    def __init__(self, engine: Any, top: int = 0, inner: Constraint | None = None) -> None:
        self.inner = inner
        self.top = top
        self._tokenizer = engine.tokenizer
        self._engine = engine
        self._last: Any = None
        self.entries: list[dict[str, Any]] = []  # as sampled
        self.prompt_ids: list[int] | None = None  # set by the chat: what copied text is scored after

    def mask(self, logits: Any) -> Any:
        import torch

        if self.inner is not None:
            logits = self.inner.mask(logits)
        self._last = torch.log_softmax(logits.float(), dim=-1)
        return logits

    @property
    def shapes_output(self) -> bool:
        """False when only recording: the reply is the one it would be without logprobs."""
        return self.inner is not None

    def matched(self, text: str) -> list[dict[str, Any]]:
        """The recorded entries that spell the start of ``text`` (a grounded answer may start
        with copied notes and drop sampled sentences, so the two can part)."""
        out, pos = [], 0
        for entry in self.entries:
            piece = self.token_text(entry["token_id"])
            if not piece or not text.startswith(piece, pos):
                break
            out.append(entry)
            pos += len(piece)
        return out

    def for_text(self, text: str) -> list[dict[str, Any]]:
        """Entries for exactly the tokens of ``text``, the answer as the user got it: the sampled
        ones where they spell it, the rest (copied notes, a fixed answer, a notice) scored by the
        model after ``prompt_ids`` as if it had produced them."""
        import torch

        out = self.matched(text)
        rest = text[sum(len(self.token_text(e["token_id"])) for e in out):]
        if rest and self.prompt_ids is not None:
            tokens = self._tokenizer(rest, add_special_tokens=False)["input_ids"]
            prefix = list(self.prompt_ids) + [e["token_id"] for e in out]
            tokens = tokens[: max(0, self._engine.context_tokens - len(prefix))]
            if tokens:
                for row, token in zip(self._engine.forced_logits(prefix, tokens), tokens, strict=False):
                    out.append(self._entry(torch.log_softmax(row.float(), dim=-1), token))
        return out

    def accept(self, token: int) -> bool:
        self.entries.append(self._entry(self._last, token))
        return self.inner.accept(token) if self.inner is not None else False

    def _entry(self, lp: Any, token: int) -> dict[str, Any]:
        entry = {"token_id": int(token), "logprob": float(lp[int(token)]), "top": []}
        if self.top:
            values, idx = lp.topk(self.top)
            entry["top"] = [(int(i), float(v)) for v, i in zip(values.tolist(), idx.tolist(), strict=False)]
        return entry

    def token_text(self, token_id: int) -> str:
        return self._tokenizer.decode([token_id], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> list[int]:
        return list(self.token_text(token_id).encode("utf-8", errors="replace"))

    def __getattr__(self, name: str) -> Any:  # text, take_text, ids, kind of the inner constraint
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)
