"""POST /v1/chat/completions: chat, structured outputs, tool calls, logprobs; streamed or not.

* ``model`` is a pack id; ``user`` picks whose memory, adapter and journal apply.
* Stateless, as OpenAI's API: earlier messages become the chat's history, the last message is
  the user's (or a tool result) and is the new turn. Client ``system`` messages are appended to
  the pack's persona (the pack's safety rules still follow them).
* ``response_format`` (JSON mode, JSON Schema) and ``tools`` are enforced by constrained decoding
  (``assistant.grammar``): the reply is valid by construction. The pack's safety notices, which
  would break JSON, come in a separate ``safety_notice`` field; an emergency answer comes as
  ``refusal``.
* Chat recalls (and learns) memories only for keys that hold ``memory:read``; the reply then
  carries ``sources`` (memory ids, kinds, citations) and ``memories`` (the recalled texts).
* Completion ids are ``chatcmpl-<turn id>``, streamed or not (the turn id is made before the first
  token); the last chunk also carries ``turn_id``, and ``/v1/feedback`` accepts either form.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, AsyncIterator, Iterator

from fastapi import APIRouter, Depends, Request

from api import streaming
from api.deps import Ctx, ctx, scopes
from api.errors import ApiError, unsupported
from api.schemas import ChatRequest, parse
from api.structured import Structure, ToolStream, call_id, constraint_for, split_messages, structure_of

router = APIRouter()


def finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def usage(stats: Any, answer_tokens: int | None = None) -> dict[str, int]:
    """Token counts; ``answer_tokens``, when given, is the completion: a grounded answer's
    copied notes count, the sampled sentences it dropped do not."""
    p, c = stats.prompt_tokens, stats.completion_tokens if answer_tokens is None else answer_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def sources(reply: Any) -> list[dict[str, Any]]:
    """The reply's sources as data: memory ids, kinds, and for knowledge notes file and heading."""
    out = []
    for m in reply.memories:
        file, _, heading = (m.citation or "").partition(" > ")
        out.append({"memory_id": m.memory_id, "kind": m.kind, "citation": m.citation or None,
                    "file": file or None, "heading": heading or None})
    return out


def memories(reply: Any) -> list[dict[str, Any]]:
    return [{"id": m.short_id, "memory_id": m.memory_id, "kind": m.kind, "text": m.text, "citation": m.citation or None}
            for m in reply.memories]


@dataclasses.dataclass
class Started:
    chat: Any
    message: str
    overrides: dict[str, Any]
    structure: Structure
    constraint: Any  # the grammar constraint, or a LogprobRecorder around it (or alone)
    user: str


def _check(req: ChatRequest) -> None:
    if req.n != 1:
        raise unsupported("n", "only n=1")
    if req.top_logprobs and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")


def start_chat(c: Ctx, request: Request, req: ChatRequest) -> Started:
    """Everything before generation (runs on the worker: it may load the engine)."""
    from assistant import grammar

    _check(req)
    pack = c.pack(req.model)
    user = c.user(request, req.user)
    st = structure_of(req)
    if st.kind != "text" and req.stop:
        raise unsupported("stop", "it cannot be combined with response_format or tools (the grammar ends the reply)")
    system, history, message, from_tool = split_messages(req.messages)
    use_memory = "memory:read" in scopes(request) and not from_tool  # a tool result is no user statement
    chat = c.assistant.chat(user, pack.id, use_memory=use_memory, source="api")
    extra = "\n\n".join(s for s in (system, st.instruction) if s.strip())
    if extra:
        chat.pack = dataclasses.replace(pack, persona=pack.persona.strip() + "\n\n" + extra)
    chat.history = history
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    overrides: dict[str, Any] = {
        "temperature": req.temperature, "top_p": req.top_p, "seed": req.seed,
        "max_new_tokens": req.max_completion_tokens or req.max_tokens,
    }
    if stop:
        overrides["stop"] = stop
    engine = c.assistant.engine
    constraint = constraint_for(engine, st)
    if req.logprobs:
        constraint = grammar.LogprobRecorder(engine, req.top_logprobs or 0, inner=constraint)
    return Started(chat, message, overrides, st, constraint, user)


def logprob_items(recorder: Any, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def one(token_id: int, lp: float) -> dict[str, Any]:
        return {"token": recorder.token_text(token_id), "logprob": lp, "bytes": recorder.token_bytes(token_id)}

    return [one(e["token_id"], e["logprob"]) | {"top_logprobs": [one(t, v) for t, v in e["top"]]} for e in entries]


def _model_text(s: Started, reply: Any) -> str:
    inner = getattr(s.constraint, "inner", s.constraint) if s.constraint is not None else None
    return inner.text if inner is not None and s.structure.kind != "text" else reply.text


def message_of(s: Started, reply: Any) -> tuple[dict[str, Any], str]:
    """The reply as an OpenAI assistant message, and its finish reason."""
    from assistant.grammar import parse_tool_calls

    kind = s.structure.kind
    if kind != "text" and reply.stats.finish_reason == "safety":  # an emergency answer, not the model's
        return {"role": "assistant", "content": None, "refusal": reply.text}, "stop"
    finish = finish_reason(reply.stats.finish_reason)
    if kind == "text":
        return {"role": "assistant", "content": reply.text}, finish
    text = _model_text(s, reply)
    msg: dict[str, Any] = {"role": "assistant", "content": text}
    notice = reply.text.replace(text, "", 1).strip() if text else reply.text.strip()
    if kind == "tools":
        before, calls = parse_tool_calls(text)
        if not calls:
            return {"role": "assistant", "content": reply.text}, finish
        msg = {"role": "assistant", "content": before or None, "tool_calls": [
            {"id": call_id(), "type": "function", "function": {"name": name, "arguments": args}} for name, args in calls
        ]}
        finish = "tool_calls"
    if notice:
        msg["safety_notice"] = notice
    return msg, finish


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, c: Ctx = Depends(ctx)):
    req = await parse(request, ChatRequest, check_fields=True)
    if req.stream:
        return await _stream(c, request, req)

    def run() -> tuple[Started, Any]:
        s = start_chat(c, request, req)
        reply = s.chat.send(s.message, constraint=s.constraint, **s.overrides)
        reply.collect()
        return s, reply

    s, reply = await c.worker.run(run)
    message, finish = message_of(s, reply)
    lp = {"content": logprob_items(s.constraint, _entries(s, message)), "refusal": None} if req.logprobs else None
    body: dict[str, Any] = {
        "id": f"chatcmpl-{reply.turn_id}", "object": "chat.completion", "created": int(time.time()),
        "model": req.model, "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": lp}],
        "usage": usage(reply.stats, _answer_tokens(c, s, message)), "turn_id": reply.turn_id, "user": s.user,
    }
    if "memory:read" in scopes(request):
        body["sources"] = sources(reply)
        body["memories"] = memories(reply)
    return body


def _answer_tokens(c: Ctx, s: Started, message: dict[str, Any]) -> int | None:
    if s.structure.kind != "text":
        return None  # the sampled tokens are the answer
    return c.assistant.engine.count_tokens(message.get("content") or message.get("refusal") or "")


def _entries(s: Started, message: dict[str, Any], final: bool = True, text: str | None = None) -> list[dict[str, Any]]:
    """The logprob entries of a reply: for plain text, those of the text the user got (grounding
    may copy notes and drop sampled sentences); for structured output, the sampled tokens."""
    if s.structure.kind != "text":
        return s.constraint.entries
    text = (message.get("content") or message.get("refusal") or "") if text is None else text
    return s.constraint.for_text(text) if final else s.constraint.matched(text)


def _events(s: Started, reply: Any, want_logprobs: bool) -> Iterator[tuple[str, Any]]:
    """Deltas, computed on the worker thread (the constraint is not shared with the event loop)."""
    kind = s.structure.kind
    tools = ToolStream() if kind == "tools" else None
    seen_lp = 0
    shown = ""
    chunks = iter(reply)
    try:
        first = [next(chunks)]  # a prompt that does not fit fails here, before any byte is sent
    except StopIteration:
        first = []
    yield ("delta", ({"role": "assistant", "content": ""}, None))
    for chunk in itertools.chain(first, chunks):
        if kind == "text":
            deltas = [{"content": chunk}] if chunk else []
            shown += chunk
        elif reply.stats.finish_reason == "safety":
            deltas = [{"refusal": chunk}] if chunk else []
        else:
            piece = s.constraint.take_text()
            deltas = (tools.push(piece) if tools is not None else [{"content": piece}]) if piece else []
        lp = None
        entries = _entries(s, {}, final=False, text=shown) if want_logprobs else []
        if len(entries) > seen_lp:
            lp = logprob_items(s.constraint, entries[seen_lp:])
            seen_lp = len(entries)
        for i, delta in enumerate(deltas):
            yield ("delta", (delta, lp if i == 0 else None))
    if kind != "text" and reply.stats.finish_reason != "safety":
        rest = s.constraint.take_text()
        for delta in (tools.push(rest) if tools is not None else [{"content": rest}]) if rest else []:
            yield ("delta", (delta, None))
    message, finish = message_of(s, reply)
    content = message.get("content") or ""
    if want_logprobs and kind == "text":  # what the sampled tokens did not spell: scored, sent last
        rest = _entries(s, message)[seen_lp:]
        if rest:
            yield ("delta", ({"content": ""}, logprob_items(s.constraint, rest)))
    if tools is not None and tools.call is None and content.startswith(tools.seen):
        tail = content[len(tools.seen):]  # a text answer's safety notice
        if tail:
            yield ("delta", ({"content": tail}, None))
    yield ("done", (reply, "tool_calls" if tools is not None and tools.call is not None else finish, message))


async def _stream(c: Ctx, request: Request, req: ChatRequest):
    def produce(cancel: Any) -> Iterator[tuple[str, Any]]:
        s = start_chat(c, request, req)
        reply = s.chat.send(s.message, cancel=cancel, constraint=s.constraint, **s.overrides)
        started = False
        for event in _events(s, reply, bool(req.logprobs)):
            if not started:  # after the prompt was built: an error until then still gets its HTTP status
                started = True
                yield ("started", reply.turn_id)  # the completion's id is its turn's, known before any text
            if event[0] == "done":
                yield ("done", (s,) + event[1])
            else:
                yield event

    first, rest, cancel = await streaming.start(c, produce)
    stream_id = f"chatcmpl-{first[1]}"  # /v1/feedback takes it like a non-streamed completion's id
    created = int(time.time())
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    memory_scope = "memory:read" in scopes(request)

    def chunk(delta: dict[str, Any], finish: str | None = None, lp: Any = None, **extra: Any) -> str:
        logprobs = {"content": lp, "refusal": None} if lp is not None else None
        return streaming.sse({"id": stream_id, "object": "chat.completion.chunk", "created": created,
                              "model": req.model, "system_fingerprint": None,
                              "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
                              **extra})

    async def events() -> AsyncIterator[str]:
        async for kind, value in streaming.events_of(first, rest):
            if kind == "started":
                continue
            if kind == "delta":
                yield chunk(value[0], lp=value[1])
            elif kind == "done":
                s, reply, finish, message = value
                extra: dict[str, Any] = {"turn_id": reply.turn_id}
                if message.get("safety_notice"):
                    extra["safety_notice"] = message["safety_notice"]
                if memory_scope:
                    extra["sources"] = sources(reply)
                    extra["memories"] = memories(reply)
                yield chunk({}, finish, **extra)
                if include_usage:
                    yield streaming.sse({"id": stream_id, "object": "chat.completion.chunk", "created": created,
                                         "model": req.model, "choices": [],
                                         "usage": usage(reply.stats, _answer_tokens(c, s, message))})
            else:  # an error after the stream started: reported in-band
                yield streaming.error_event(value)

    return streaming.response(events(), cancel)
