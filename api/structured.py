"""OpenAI messages, ``response_format`` and ``tools`` -> what the chat and the grammar need.

Tool calls travel in the conversation as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
in the assistant's text and tool results as ``<tool_response>...</tool_response>`` in the next
user-side turn (the format the system prompt teaches the model); ``assistant.grammar`` makes the
model's calls valid by construction.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from api.errors import ApiError, unsupported
from assistant.grammar import TOOL_CLOSE, TOOL_OPEN, Tool

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Structure:
    """What a chat request asks of the reply's form."""

    kind: str = "text"  # text, json_object, json_schema, tools
    schema: Any = None
    strict: bool = True
    tools: list[Tool] = field(default_factory=list)
    mode: str = "auto"  # for tools: auto, required, or a function name
    instruction: str = ""  # added to the system prompt


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"{where}: only text content parts are supported", param=where)
        parts.append(part["text"])
    return "".join(parts)


def _call_text(calls: list[dict[str, Any]], where: str) -> str:
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if call.get("type", "function") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ApiError(400, f"{where}.tool_calls.{j}: a tool call needs type 'function' and function.name",
                           param=f"{where}.tool_calls")
        raw = fn.get("arguments") or "{}"
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise ApiError(400, f"{where}.tool_calls.{j}.function.arguments is not JSON", param=where) from exc
        out.append(TOOL_OPEN + json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False) + TOOL_CLOSE)
    return "".join(out)


def split_messages(messages: list[Any]) -> tuple[str, list[tuple[str, str]], str, bool]:
    """OpenAI messages -> (client system text, history pairs, the new user-side message,
    whether that message is a tool result)."""
    system: list[str] = []
    turns: list[tuple[str, str]] = []  # (side, text): side "user" (user or tool) or "assistant"
    kinds: list[str] = []
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if m.role in ("system", "developer"):
            system.append(_text_of(m.content, where))
        elif m.role == "user":
            turns.append(("user", _text_of(m.content, where)))
            kinds.append("user")
        elif m.role == "assistant":
            text = _text_of(m.content, where)
            if m.tool_calls:
                text = (text + "\n" if text.strip() else "") + _call_text(m.tool_calls, where)
            turns.append(("assistant", text))
            kinds.append("assistant")
        elif m.role == "tool":
            body = _text_of(m.content, where)
            turns.append(("user", f"<tool_response>\n{body}\n</tool_response>"))
            kinds.append("tool")
        else:
            raise ApiError(400, f"messages[{i}]: role {m.role!r} is not supported (use system, user, assistant or tool)",
                           param=f"{where}.role")
    if not turns or turns[-1][0] != "user":
        raise ApiError(400, "the last message must be the user's (or a tool result)", param="messages")
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for side, text in turns[:-1]:
        if side == "user":
            pending = text if pending is None else pending + "\n" + text
        else:
            history.append((pending or "", text))
            pending = None
    last = turns[-1][1] if pending is None else pending + "\n" + turns[-1][1]
    return "\n".join(s for s in system if s.strip()), history, last, kinds[-1] == "tool"


def _tools(raw: list[dict[str, Any]]) -> list[Tool]:
    tools = []
    for i, t in enumerate(raw):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise ApiError(400, f"tools[{i}]: only tools of type 'function' with a 'function' object are supported",
                           param=f"tools.{i}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ApiError(400, f"tools[{i}].function.name must be 1-64 letters, digits, '_' or '-'",
                           param=f"tools.{i}.function.name")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON Schema object",
                           param=f"tools.{i}.function.parameters")
        tools.append(Tool(name, str(fn.get("description") or ""), params))
    if len({t.name for t in tools}) != len(tools):
        raise ApiError(400, "two tools have the same name", param="tools")
    return tools


def _mode(choice: Any, tools: list[Tool]) -> str:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise ApiError(400, "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', ...}",
                           param="tool_choice")
        return choice
    fn = choice.get("function") if choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if name not in {t.name for t in tools}:
        raise ApiError(400, f"tool_choice names the function {name!r}, which is not in tools", param="tool_choice")
    return name


def structure_of(req: Any) -> Structure:
    """Check ``response_format``, ``tools`` and ``tool_choice`` and say what the reply must be."""
    fmt = req.response_format or {"type": "text"}
    ftype = fmt.get("type")
    if not req.tools and req.tool_choice not in (None, "none"):
        raise ApiError(400, "tool_choice needs tools", param="tool_choice")
    tools = _tools(req.tools) if req.tools else []
    mode = _mode(req.tool_choice, tools) if tools else "none"
    if tools and mode != "none":
        if ftype != "text":
            raise unsupported("response_format", "it cannot be combined with tools (use tool_choice 'none')")
        listing = json.dumps([{"name": t.name, "description": t.description, "parameters": t.parameters}
                              for t in tools], ensure_ascii=False)
        instruction = ("You can call these functions:\n<tools>\n" + listing + "\n</tools>\n"
                       f"To call one, reply with {TOOL_OPEN}{{\"name\": NAME, \"arguments\": ARGUMENTS}}{TOOL_CLOSE}. "
                       "A message in <tool_response> holds a call's result: answer the user with it.")
        return Structure("tools", tools=tools, mode=mode, instruction=instruction)
    if ftype == "text":
        return Structure()
    if ftype == "json_object":
        return Structure("json_object", instruction="Answer with one JSON object and nothing else.")
    if ftype == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), (dict, bool)):
            raise ApiError(400, "response_format.json_schema must be an object with a 'schema'",
                           param="response_format.json_schema")
        schema = spec.get("schema", {})
        return Structure("json_schema", schema=schema, strict=spec.get("strict") is not False,
                         instruction="Answer with one JSON value that follows this JSON Schema, and nothing else:\n"
                         + json.dumps(schema, ensure_ascii=False))
    raise ApiError(400, f"response_format type {ftype!r} is not supported: use 'text', 'json_object' or 'json_schema'",
                   param="response_format.type")


def constraint_for(engine: Any, st: Structure) -> Any:
    from assistant import grammar

    if st.kind == "json_object":
        return grammar.json_object(engine)
    if st.kind == "json_schema":
        return grammar.json_schema(engine, st.schema, st.strict)
    if st.kind == "tools":
        return grammar.tool_calls(engine, st.tools, st.mode)
    return None


def call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolStream:
    """Turns the text of a ``tools`` reply, as it grows, into OpenAI stream deltas: content
    first, then (once a call starts) the call's header and its arguments in pieces."""

    def __init__(self) -> None:
        self.seen = ""
        self.sent_content = 0
        self.call: dict[str, Any] | None = None
        self.args_sent = 0

    def push(self, text: str) -> list[dict[str, Any]]:
        self.seen += text
        out: list[dict[str, Any]] = []
        at = self.seen.find(TOOL_OPEN)
        if self.call is None:
            end = at if at >= 0 else _safe_end(self.seen, TOOL_OPEN)
            if end > self.sent_content:
                out.append({"content": self.seen[self.sent_content:end]})
                self.sent_content = end
            if at < 0:
                return out
            head = re.match(r'\{"name": ("(?:[^"\\]|\\.)*"), "arguments": ', self.seen[at + len(TOOL_OPEN):])
            if head is None:
                return out
            self.call = {"id": call_id(), "name": json.loads(head.group(1)),
                         "args_at": at + len(TOOL_OPEN) + head.end()}
            out.append({"tool_calls": [{"index": 0, "id": self.call["id"], "type": "function",
                                        "function": {"name": self.call["name"], "arguments": ""}}]})
        body = self.seen[self.call["args_at"]:]
        close = body.find("}" + TOOL_CLOSE)
        end = close if close >= 0 else _safe_end(body, "}" + TOOL_CLOSE)
        if end > self.args_sent:
            out.append({"tool_calls": [{"index": 0, "function": {"arguments": body[self.args_sent:end]}}]})
            self.args_sent = end
        return out


def _safe_end(text: str, marker: str) -> int:
    """How much of ``text`` can be sent without cutting a possible start of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return len(text) - k
    return len(text)
