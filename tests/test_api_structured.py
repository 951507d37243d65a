"""What apps call, through the official openai client, around a tiny random engine: structured
outputs and tool calls (valid by construction even from random weights), logprobs, embeddings,
models.retrieve, legacy completions, e-mail users, sources, and 400s for what is not supported."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from test_api import Server, _settings

from api import keys as api_keys

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["city", "n"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "lookup", "description": "look a word up",
                                         "parameters": {"type": "object", "properties": {
                                             "word": {"type": "string", "maxLength": 6}},
                                             "required": ["word"], "additionalProperties": False}}}


@pytest.fixture
def srv(tiny_engine, home):
    from api import make_app
    from assistant.core import Assistant

    tiny_engine.context_tokens = 1024  # the pack persona plus tool or schema instructions, in a 308-token vocabulary
    assistant = Assistant(_settings(max_body_bytes=64_000), engine=tiny_engine)
    key = api_keys.create("app", "chat,memory:read,memory:write,feedback", users="*")
    with Server(make_app(assistant)) as server:
        server.assistant, server.key = assistant, key
        yield server


@pytest.fixture
def client(srv):
    from openai import OpenAI

    return OpenAI(base_url=f"{srv.url}/v1", api_key=srv.key, max_retries=0, timeout=900)


def _ask(client, **kw):
    base = dict(model="general", temperature=0, max_tokens=80, messages=[{"role": "user", "content": "Paris?"}])
    return client.chat.completions.create(**(base | kw))


@pytest.mark.slow
def test_json_schema_and_json_mode(client):
    out = _ask(client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].message.content), SCHEMA)
    out = _ask(client, response_format={"type": "json_object"}, max_tokens=100)
    text = out.choices[0].message.content
    assert text.startswith("{") and (out.choices[0].finish_reason == "length" or isinstance(json.loads(text), dict))
    streamed = "".join(ev.choices[0].delta.content or "" for ev in _ask(
        client, stream=True, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
        if ev.choices)
    jsonschema.validate(json.loads(streamed), SCHEMA)


@pytest.mark.slow
def test_tool_call_shape_streamed_and_not(client, srv):
    out = _ask(client, tools=[TOOL], tool_choice="required")
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "lookup" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), TOOL["function"]["parameters"])
    named = _ask(client, tools=[TOOL], tool_choice={"type": "function", "function": {"name": "lookup"}})
    assert named.choices[0].message.tool_calls[0].function.name == "lookup"

    events = list(_ask(client, tools=[TOOL], tool_choice="required", stream=True))
    deltas = [ev.choices[0].delta for ev in events if ev.choices]
    assert deltas[0].role == "assistant"
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert calls[0].id.startswith("call_") and calls[0].function.name == "lookup" and calls[0].function.arguments == ""
    assert all(tc.index == 0 and tc.id is None for tc in calls[1:])
    jsonschema.validate(json.loads("".join(tc.function.arguments for tc in calls)), TOOL["function"]["parameters"])
    assert [ev.choices[0].finish_reason for ev in events if ev.choices][-1] == "tool_calls"

    # the tool's result comes back as a `tool` message; the model answers (no tool this time)
    history = [{"role": "user", "content": "Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": '{"meaning": "a city"}'}]
    out = client.chat.completions.create(model="general", temperature=0, max_tokens=8, messages=history,
                                         tools=[TOOL], tool_choice="none")
    assert out.choices[0].finish_reason in ("stop", "length") and out.choices[0].message.tool_calls is None
    turn = srv.assistant.journal("me").turn(out.id[len("chatcmpl-"):])
    assert "<tool_response>" in turn.prompt[-1]["content"] and '"meaning": "a city"' in turn.prompt[-1]["content"]
    assert '<tool_call>{"name": "lookup"' in turn.prompt[-2]["content"]


@pytest.mark.slow
def test_logprobs_match_usage_and_text(client):
    out = _ask(client, max_tokens=10, logprobs=True, top_logprobs=3)
    lp = out.choices[0].logprobs.content
    assert len(lp) == out.usage.completion_tokens
    # a token copied from the notes need not be the model's top choice; a sampled (greedy) one is
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob + 1e-5 >= t.logprob for t in lp)
    assert "".join(t.token for t in lp) == out.choices[0].message.content
    plain = _ask(client, max_tokens=10)
    assert plain.choices[0].message.content == out.choices[0].message.content  # asking logprobs changes nothing
    events = [ev.choices[0] for ev in _ask(client, max_tokens=10, logprobs=True, stream=True) if ev.choices]
    streamed = [t.token for ev in events if ev.logprobs for t in ev.logprobs.content]
    assert "".join(streamed) == "".join(ev.delta.content or "" for ev in events) == out.choices[0].message.content
    assert plain.choices[0].logprobs is None


@pytest.mark.slow  # a real HTTP server
def test_embeddings_models_retrieve_and_completions(client):
    from memory import embedder

    dim = embedder.get("default").dim
    emb = client.embeddings.create(model="all-MiniLM-L6-v2", input=["tea", "coffee"])  # the client asks base64
    assert [len(d.embedding) for d in emb.data] == [dim, dim] and emb.usage.prompt_tokens > 0
    raw = httpx.post(f"{client.base_url}embeddings", headers={"Authorization": f"Bearer {client.api_key}"},
                     json={"model": "all-MiniLM-L6-v2", "input": "tea"}, timeout=300).json()
    assert raw["data"][0]["embedding"] == pytest.approx(emb.data[0].embedding, abs=1e-6)
    assert client.models.retrieve("general").id == "general"
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.models.retrieve("astrology")
    done = client.completions.create(model="general", prompt="The capital of France is", max_tokens=5,
                                     temperature=0, logprobs=2)
    choice = done.choices[0]
    assert done.usage.completion_tokens == len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) <= 5
    assert choice.logprobs.text_offset[0] == 0 and all(v <= 0 for v in choice.logprobs.token_logprobs)
    events = [c for c in client.completions.create(model="general", prompt="The capital of France is", max_tokens=5,
                                                    temperature=0, stream=True) if c.choices]
    assert events[-1].choices[0].finish_reason == "length" and sum(len(c.choices[0].text) for c in events) > 0


@pytest.mark.slow
def test_email_user_and_sources(client, srv):
    h = {"Authorization": f"Bearer {srv.key}"}
    r = httpx.post(f"{srv.url}/v1/memories", headers=h, json={"user": "ann@example.com", "text": "My dog is Rex."},
                   timeout=60)
    assert r.status_code == 201, r.text
    out = _ask(client, user="ann@example.com", max_tokens=4, messages=[{"role": "user", "content": "My dog's name?"}])
    folder = api_keys.user_folder("ann@example.com")
    assert out.model_extra["user"] == folder
    assert srv.assistant.journal(folder).turn(out.id[len("chatcmpl-"):]) is not None
    sources = out.model_extra["sources"]
    assert any(s["kind"] == "fact" and s["memory_id"] == r.json()["id"] for s in sources)


@pytest.mark.parametrize("extra, param", [
    ({"n": 2}, "n"), ({"frequency_penalty": 0.5}, "frequency_penalty"), ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"made_up_field": 1}, "made_up_field"), ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [TOOL], "response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_object"}, "stop": ["}"]}, "stop"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools.0"),
])
@pytest.mark.slow  # a real HTTP server
def test_unsupported_fields_are_400_naming_the_field(srv, extra, param):
    body = {"model": "general", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | extra
    r = httpx.post(f"{srv.url}/v1/chat/completions", headers={"Authorization": f"Bearer {srv.key}"}, json=body, timeout=300)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.slow
def test_neutral_values_of_unimplemented_fields_are_accepted(srv):
    body = {"model": "general", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "parallel_tool_calls": True}
    r = httpx.post(f"{srv.url}/v1/chat/completions", headers={"Authorization": f"Bearer {srv.key}"}, json=body,
                   timeout=600)
    assert r.status_code == 200, r.text
