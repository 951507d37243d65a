"""Constrained decoding in the engine's own loop: a random tiny model still writes valid output."""

from __future__ import annotations

import json

import jsonschema
import pytest

from assistant import grammar
from assistant.generation import GenParams

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 0, "maximum": 99},
                   "sunny": {"type": "boolean"}},
    "required": ["city", "days", "sunny"],
    "additionalProperties": False,
}


def _gen(engine, constraint, seed=0, temperature=1.0, max_new_tokens=200):
    ids = engine.render([{"role": "user", "content": "The capital of France is Paris."}])
    gen = engine.stream(ids, GenParams(temperature=temperature, top_p=1.0, seed=seed, max_new_tokens=max_new_tokens),
                        constraint=constraint)
    return gen.collect(), gen.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_output_validates_even_from_a_random_model(tiny_engine, seed):
    text, stats = _gen(tiny_engine, grammar.json_schema(tiny_engine, SCHEMA), seed=seed)
    assert stats.finish_reason == "stop", text  # the grammar ended the reply, not the budget
    jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_mode_and_the_constraint_text(tiny_engine):
    c = grammar.json_object(tiny_engine)
    text, stats = _gen(tiny_engine, c, seed=3, max_new_tokens=400)
    if stats.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # a random model may fill a long string: what it wrote is still a JSON prefix
        assert text.startswith("{")
    assert c.text == text and stats.completion_tokens == len(c.ids)


def test_required_tool_call_parses_with_schema_valid_arguments(tiny_engine):
    tools = [grammar.Tool("get_weather", "weather", {"type": "object", "properties": {"city": {"type": "string",
                                                     "maxLength": 10}}, "required": ["city"],
                                                     "additionalProperties": False}),
             grammar.Tool("add", "sum", {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                                                                "b": {"type": "integer", "minimum": 0, "maximum": 9}},
                                         "required": ["a", "b"], "additionalProperties": False})]
    for seed in range(3):
        text, stats = _gen(tiny_engine, grammar.tool_calls(tiny_engine, tools, "required"), seed=seed)
        before, calls = grammar.parse_tool_calls(text)
        assert before == "" and len(calls) == 1, text
        name, args = calls[0]
        schema = {t.name: t.parameters for t in tools}[name]
        jsonschema.validate(json.loads(args), schema)
    text, _ = _gen(tiny_engine, grammar.tool_calls(tiny_engine, tools, "add"), seed=5)
    assert grammar.parse_tool_calls(text)[1][0][0] == "add"
    with pytest.raises(grammar.GrammarError, match="not in tools"):
        grammar.tool_calls(tiny_engine, tools, "nope")


def test_greedy_output_is_unchanged_by_an_all_allowing_recorder(tiny_engine):
    plain, _ = _gen(tiny_engine, None, temperature=0, max_new_tokens=12)
    rec = grammar.LogprobRecorder(tiny_engine, top=3)
    recorded, stats = _gen(tiny_engine, rec, temperature=0, max_new_tokens=12)
    assert recorded == plain
    assert len(rec.entries) == stats.completion_tokens
    for e in rec.entries:  # greedy: the chosen token is the most likely one
        assert e["logprob"] <= 0 and e["top"][0][0] == e["token_id"] and len(e["top"]) == 3


def test_parse_tool_calls_keeps_text_before_a_call():
    text = 'Let me check.<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    assert grammar.parse_tool_calls(text) == ("Let me check.", [("f", '{"x": 1}')])
    assert grammar.parse_tool_calls("just text") == ("just text", [])
    assert grammar.parse_tool_calls('<tool_call>{"name": "f", "argu') == ("", [])  # cut by the budget


def test_a_schema_the_engine_cannot_compile_is_a_clear_error(tiny_engine):
    with pytest.raises(grammar.GrammarError, match="JSON Schema"):
        grammar.json_schema(tiny_engine, "not a schema")


@pytest.mark.slow
def test_the_python_api_passes_a_constraint_through_chat_send(tiny_engine, home):
    from assistant import settings as settings_mod
    from assistant.core import Assistant

    tiny_engine.context_tokens = 512
    assistant = Assistant(settings_mod.load(env={}), engine=tiny_engine)
    chat = assistant.chat("me", "general", use_memory=False)
    reply = chat.send("Where is Paris?", constraint=grammar.json_schema(assistant.engine, SCHEMA), temperature=0,
                      max_new_tokens=120)
    jsonschema.validate(json.loads(reply.collect()), SCHEMA)
    assert chat.journal.turn(reply.turn_id).reply == reply.text
