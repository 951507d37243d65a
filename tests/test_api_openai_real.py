"""The official `openai` client against a real `assistant serve` process on the real default model.

Structured outputs, a tool call round trip (streamed and not), logprobs, embeddings,
models.retrieve, legacy completions and an e-mail `user`: what apps call.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

from api import keys as api_keys

ROOT = Path(__file__).resolve().parent.parent
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                       "required": ["city"], "additionalProperties": False},
    },
}
RECIPE = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 60}, "minutes": {"type": "integer", "minimum": 1,
                                                                            "maximum": 600}},
    "required": ["name", "minutes"], "additionalProperties": False,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(home):
    """`python -m cli serve` in this test's home (the real model is linked in)."""
    port = _free_port()
    key = api_keys.create("app", "chat,memory:read,feedback", users=["me", "alice@example.com"])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 1500  # model load (and calibration on a new machine): minutes under load
        while True:
            assert proc.poll() is None, f"serve exited: {proc.stderr.read()}"
            try:
                if httpx.get(f"{url}/health", timeout=2).json().get("model_loaded"):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.5)
        yield url, key
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _tool_round_trip(client, stream: bool):
    question = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    common = dict(model="general", temperature=0, max_tokens=60, tools=[WEATHER])
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        for ev in client.chat.completions.create(messages=question, tool_choice="required", stream=True, **common):
            choice = ev.choices[0]
            for d in choice.delta.tool_calls or []:
                slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = d.id or slot["id"]
                slot["name"] += (d.function.name or "") if d.function else ""
                slot["arguments"] += (d.function.arguments or "") if d.function else ""
            finish = choice.finish_reason or finish
        assert finish == "tool_calls" and len(calls) == 1
        call = calls[0]
    else:
        out = client.chat.completions.create(messages=question, tool_choice="required", **common)
        assert out.choices[0].finish_reason == "tool_calls"
        tc = out.choices[0].message.tool_calls[0]
        call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
    assert call["id"].startswith("call_") and call["name"] == "get_weather"
    args = json.loads(call["arguments"])
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    history = question + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"temperature_c": 18, "sky": "sunny"})},
    ]
    if stream:
        parts, finish = [], None
        for ev in client.chat.completions.create(messages=history, tool_choice="none", stream=True, **common):
            if ev.choices:
                parts.append(ev.choices[0].delta.content or "")
                finish = ev.choices[0].finish_reason or finish
        answer = "".join(parts)
    else:
        out = client.chat.completions.create(messages=history, tool_choice="none", **common)
        answer, finish = out.choices[0].message.content, out.choices[0].finish_reason
    assert finish in ("stop", "length") and answer.strip() and "<tool_call>" not in answer


@pytest.mark.real
@pytest.mark.timeout(3600)
def test_openai_client_against_real_serve(served):
    from openai import OpenAI

    url, key = served
    client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)

    assert client.models.retrieve("chef").id == "chef"
    assert client.models.retrieve("all-MiniLM-L6-v2").owned_by == "embedder"

    out = client.chat.completions.create(
        model="general", temperature=0, max_tokens=120, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give me a recipe name and its cooking time in minutes, as JSON."}],
    )
    assert out.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(out.choices[0].message.content), dict)

    out = client.chat.completions.create(
        model="general", temperature=0, max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {"name": "recipe", "schema": RECIPE, "strict": True}},
        messages=[{"role": "user", "content": "Suggest a quick dinner recipe."}],
    )
    jsonschema.validate(json.loads(out.choices[0].message.content), RECIPE)

    _tool_round_trip(client, stream=False)
    _tool_round_trip(client, stream=True)

    out = client.chat.completions.create(
        model="general", temperature=0, max_tokens=12, logprobs=True, top_logprobs=2, user="alice@example.com",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens > 0  # usage counts exactly the generated tokens
    assert "".join(t.token for t in content).strip() == out.choices[0].message.content.strip()
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert out.model_extra["user"] == api_keys.user_folder("alice@example.com")

    from memory import embedder

    dim = embedder.get("default").dim
    emb = client.embeddings.create(model="all-MiniLM-L6-v2", input=["green tea", "green tea", "a tax form"])
    vectors = [d.embedding for d in emb.data]
    assert [len(v) for v in vectors] == [dim] * 3
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=False))  # noqa: E731
    assert dot(vectors[0], vectors[1]) > 0.99 > dot(vectors[0], vectors[2])
    assert emb.usage.prompt_tokens > 0

    done = client.completions.create(model="general", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert done.choices[0].text.strip() and done.usage.completion_tokens <= 6
