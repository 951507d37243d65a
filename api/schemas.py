"""Request bodies, and which OpenAI fields this server does not implement.

A field this server does not know, or knows but does not implement with the value sent, is a
400 that names it. A field sent with its neutral value (``frequency_penalty: 0``,
``logit_bias: {}``, ``parallel_tool_calls: true``...) changes nothing and is accepted, since
many clients send those by default.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import ApiError, unsupported


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingFields(_Body):
    model: str
    temperature: float | int | None = Field(default=None, ge=0, le=5)
    top_p: float | int | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class MemoryRequest(_Body):
    text: str
    kind: Literal["fact", "preference", "episode"] = "fact"
    user: str | None = None


class FeedbackRequest(_Body):
    completion_id: str
    rating: int | None = None
    correction: str | None = None
    user: str | None = None


# Known OpenAI fields that this server does not implement, with the values that change nothing.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0, None), "presence_penalty": (0, 0.0, None), "logit_bias": ({}, None),
    "store": (False, None), "metadata": ({}, None), "service_tier": ("auto", "default", None),
    "stream_options": (None,), "modalities": (["text"], None), "audio": (None,), "prediction": (None,),
    "reasoning_effort": (None,), "web_search_options": (None,), "functions": (None, []),
    "function_call": (None, "none"), "safety_identifier": (None,), "prompt_cache_key": (None,),
    "verbosity": (None,),
}
_SUPPORTED: dict[str, set[str]] = {}


def _fields(model: type[BaseModel]) -> set[str]:
    if model.__name__ not in _SUPPORTED:
        _SUPPORTED[model.__name__] = set(model.model_fields)
    return _SUPPORTED[model.__name__]


def _check_fields(data: dict[str, Any], model: type[BaseModel]) -> None:
    known = _fields(model)
    for name, value in data.items():
        if name in known:
            continue
        if name in _NEUTRAL:
            if value in _NEUTRAL[name]:
                continue
            raise unsupported(name, "send it unset or with its neutral value")
        raise ApiError(400, f"unknown field {name!r}: this server does not implement it (see the field list of "
                            "the OpenAI endpoint)", code="unsupported_parameter", param=name)


def _validation_error(exc: ValidationError) -> ApiError:
    errors = exc.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {}
    loc = ".".join(str(p) for p in first.get("loc", ()))
    return ApiError(422, f"invalid request: {loc or 'body'}: {first.get('msg', 'wrong type')}", code="invalid_type",
                    param=loc or None)


async def parse(request: Any, model: type[BaseModel], check_fields: bool = False) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({type(exc).__name__})", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    if check_fields:
        _check_fields(data, model)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from exc
