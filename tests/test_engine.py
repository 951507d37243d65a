"""The engine on a tiny random Llama built in memory: fast, and the real transformers code path."""

import copy
import threading

import pytest

from assistant import prompt
from assistant.engine import Engine
from assistant.errors import PromptError
from assistant.generation import CancelToken, GenParams, KVSession
from tests.conftest import make_tiny_model

MSGS = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "The capital of France?"}]


def test_streams_chunks_and_honours_max_tokens(tiny_engine):
    gen = tiny_engine.stream(tiny_engine.render(MSGS), GenParams(temperature=0, max_new_tokens=12))
    chunks = list(gen)
    assert gen.stats.completion_tokens <= 12
    assert "".join(chunks) == gen.text
    assert gen.stats.finish_reason in ("length", "stop")
    assert gen.stats.prompt_tokens == len(tiny_engine.render(MSGS))


def test_greedy_is_reproducible_and_seeded_sampling_too(tiny_engine):
    ids = tiny_engine.render(MSGS)
    a = tiny_engine.stream(ids, GenParams(temperature=0, max_new_tokens=20)).collect()
    b = tiny_engine.stream(ids, GenParams(temperature=0, max_new_tokens=20)).collect()
    assert a == b
    s1 = tiny_engine.stream(ids, GenParams(temperature=1.0, top_p=0.9, seed=7, max_new_tokens=20)).collect()
    s2 = tiny_engine.stream(ids, GenParams(temperature=1.0, top_p=0.9, seed=7, max_new_tokens=20)).collect()
    s3 = tiny_engine.stream(ids, GenParams(temperature=1.0, top_p=0.9, seed=8, max_new_tokens=20)).collect()
    assert s1 == s2
    assert s1 != s3


def test_cancel_stops_within_one_token(tiny_engine):
    cancel = CancelToken()
    gen = tiny_engine.stream(tiny_engine.render(MSGS), GenParams(temperature=1.0, seed=1, max_new_tokens=200), cancel=cancel)
    seen = 0
    for _ in gen:
        seen = gen.stats.completion_tokens
        cancel.cancel()
    assert gen.stats.finish_reason == "cancelled"
    assert gen.stats.completion_tokens <= seen + 1


def test_stops_at_end_of_turn(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    eot = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    def eot_first(_module, _inputs, logits):  # make end-of-turn the most likely token everywhere
        logits = logits.clone()
        logits[..., eot] = logits.max() + 10
        return logits

    model.lm_head.register_forward_hook(eot_first)
    engine = Engine(model, tiny_tokenizer, context_tokens=256)
    gen = engine.stream(engine.render(MSGS), GenParams(temperature=0, max_new_tokens=50))
    assert gen.collect() == ""
    assert gen.stats.finish_reason == "stop"


def test_kv_cache_reuse_prefills_only_new_tokens_and_matches_fresh_run(tiny_engine):
    session = KVSession()
    first = tiny_engine.stream(tiny_engine.render(MSGS), GenParams(temperature=0, max_new_tokens=8), session=session)
    reply = first.collect()
    turn2 = MSGS + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And Germany?"}]
    ids2 = tiny_engine.render(turn2)
    cached = tiny_engine.stream(ids2, GenParams(temperature=0, max_new_tokens=8), session=session)
    text_cached = cached.collect()
    assert cached.stats.cached_tokens >= len(tiny_engine.render(MSGS))
    fresh = tiny_engine.stream(ids2, GenParams(temperature=0, max_new_tokens=8)).collect()
    assert text_cached == fresh


def test_prefill_and_decode_in_different_dtypes(tiny_tokenizer):
    engine = Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, prefill_dtype="float32", decode_dtype="bfloat16")
    session = KVSession()
    gen = engine.stream(engine.render(MSGS), GenParams(temperature=0, max_new_tokens=10), session=session)
    gen.collect()
    assert gen.stats.completion_tokens > 0
    again = engine.stream(engine.render(MSGS + [{"role": "assistant", "content": gen.text}, {"role": "user", "content": "ok"}]),
                          GenParams(temperature=0, max_new_tokens=5), session=session)
    again.collect()
    assert again.stats.cached_tokens > 0


def test_int8_decode_follows_the_float_model(tiny_tokenizer):
    """Weight-only int8 decoding: the same first token as float32 and a working KV cache."""
    import torch

    from assistant import int8

    if not int8.available():
        pytest.skip("this torch has no int8 weight matmul")
    model = make_tiny_model(tiny_tokenizer)
    ref = Engine(copy.deepcopy(model), tiny_tokenizer, context_tokens=256)
    q = Engine(model, tiny_tokenizer, context_tokens=256, prefill_dtype="float32", decode_dtype="int8")
    ids = q.render(MSGS)
    with torch.inference_mode():
        x = torch.randn(3, 5, q.config.hidden_size)
        for name, layer in list(q._int8_layers.items())[:3]:
            w = dict(ref.model.named_parameters())[name]
            exact = torch.nn.functional.linear(x, w)
            assert (layer(x).float() - exact).abs().max() < 0.05 * exact.abs().max() + 1e-3
    a = ref.stream(ids, GenParams(temperature=0, max_new_tokens=1)).collect()
    b = q.stream(ids, GenParams(temperature=0, max_new_tokens=1)).collect()
    assert a == b  # the first token comes from the float prefill
    session = KVSession()
    gen = q.stream(ids, GenParams(temperature=0, max_new_tokens=8), session=session)
    gen.collect()
    again = q.stream(q.render(MSGS + [{"role": "assistant", "content": gen.text}, {"role": "user", "content": "ok"}]),
                     GenParams(temperature=0, max_new_tokens=4), session=session)
    again.collect()
    assert again.stats.cached_tokens > 0
    with pytest.raises(Exception, match="int8"):
        Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, prefill_dtype="int8")


def test_new_conversations_reuse_the_shared_prompt_prefix_but_never_across_adapters(tiny_tokenizer):
    import torch

    system = {"role": "system", "content": "You are a helpful assistant who answers briefly and kindly."}
    engine = Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, context_tokens=256)
    params = GenParams(temperature=0, max_new_tokens=8)
    first = engine.stream(engine.render([system, {"role": "user", "content": "Hello there"}]), params, session=KVSession())
    first.collect()
    assert first.stats.cached_tokens == 0
    ids = engine.render([system, {"role": "user", "content": "What is a good soup?"}])
    second = engine.stream(ids, params, session=KVSession())  # another conversation, same system prompt
    text = second.collect()
    assert second.stats.cached_tokens >= len(engine.render([system])) - 4
    cold = Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, context_tokens=256)
    assert text == cold.stream(ids, params).collect()  # the same answer as without any cache
    # another adapter merged: neither the shared prefix nor a conversation's own cache is reused
    session = KVSession()
    engine.stream(ids, params, session=session).collect()
    name = "model.layers.0.self_attn.k_proj.weight"
    engine.set_adapter("ann/general/v0001", {name: torch.full_like(dict(engine.model.named_parameters())[name], 0.3)})
    again = engine.stream(ids, params, session=session)  # its own cache holds the old weights' KV
    again.collect()
    assert again.stats.cached_tokens == 0 and session.adapter == "ann/general/v0001"
    engine.set_adapter(None, None)
    other = engine.stream(ids, params, session=KVSession())  # the shared prefix was the adapter's
    other.collect()
    assert other.stats.cached_tokens == 0
    engine.set_adapter("ann/general/v0001", {name: torch.full_like(dict(engine.model.named_parameters())[name], 0.3)})
    engine.stream(ids, params, session=KVSession()).collect()
    later = engine.stream(ids, params, session=KVSession())  # computed with this adapter: reused
    later.collect()
    assert later.stats.cached_tokens > 0


def test_stop_strings_are_not_emitted(tiny_engine):
    ids = tiny_engine.render(MSGS)
    full = tiny_engine.stream(ids, GenParams(temperature=0, max_new_tokens=30)).collect()
    if len(full) < 6:
        pytest.skip("the random model produced too little text")
    stop = full[3:6]
    cut = tiny_engine.stream(ids, GenParams(temperature=0, max_new_tokens=30, stop=[stop]))
    assert cut.collect() == full[: full.find(stop)]
    assert cut.stats.finish_reason == "stop"


def test_prompt_trims_oldest_history_first(tiny_engine):
    history = [(f"question number {i} ", f"answer number {i}") for i in range(20)]
    built = prompt.build(tiny_engine, "system", history, "newest question", max_new_tokens=32)
    assert len(built.ids) + 32 <= tiny_engine.context_tokens
    assert built.dropped_turns > 0
    kept = [m["content"] for m in built.messages if m["role"] == "user"]
    assert kept[-1] == "newest question"
    assert "question number 19" in kept[-2]  # the newest history survives
    assert not any("question number 0 " in k for k in kept)


def test_too_long_and_empty_prompts_raise_clear_errors(tiny_engine):
    with pytest.raises(PromptError, match="too long"):
        prompt.build(tiny_engine, "system", [], "word " * 2000, max_new_tokens=32)
    with pytest.raises(PromptError, match="empty"):
        tiny_engine.stream([], GenParams())


def test_second_architecture_from_a_model_folder(tmp_path, tiny_tokenizer, home):
    """Any local Hugging Face folder works through `model.name` (here a tiny random Qwen2)."""
    from assistant import settings as settings_mod

    folder = tmp_path / "tiny-qwen2"
    make_tiny_model(tiny_tokenizer, "qwen2").save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    s = settings_mod.load(env={}, overrides={"model.name": str(folder), "model.prefill_dtype": "float32",
                                             "model.decode_dtype": "float32"})
    engine = Engine.load(s)
    assert engine.config.model_type == "qwen2"
    gen = engine.stream(engine.render(MSGS), GenParams(temperature=0, max_new_tokens=5))
    gen.collect()
    assert gen.stats.completion_tokens >= 1


def test_auto_dtype_is_measured_and_cached(tmp_path, tiny_tokenizer, home):
    import json

    from assistant import settings as settings_mod

    folder = tmp_path / "tiny"
    make_tiny_model(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    engine = Engine.load(settings_mod.load(env={}, overrides={"model.name": str(folder)}))
    calibration = json.loads((folder / "calibration.json").read_text())
    (entry,) = calibration.values()
    from assistant import int8

    assert set(entry["timings"]) == ({"float32", "bfloat16", "int8"} if int8.available() else {"float32", "bfloat16"})
    assert "prefill_256_s" not in entry["timings"].get("int8", {})  # int8 weights only decode
    assert engine.prefill_dtype == entry["prefill"] and engine.decode_dtype == entry["decode"]


def test_engine_serialises_concurrent_generations(tiny_engine):
    ids = tiny_engine.render(MSGS)
    expected = tiny_engine.stream(ids, GenParams(temperature=0, max_new_tokens=10)).collect()
    results = []

    def run():
        results.append(tiny_engine.stream(ids, GenParams(temperature=0, max_new_tokens=10)).collect())

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


def test_score_is_the_answers_log_probability_after_the_prompt(tiny_engine):
    """Engine.score (the bench's preference probes, the learning tests) runs the batched scorer
    the gate uses; it must equal the plain sum of the answer tokens' log-probabilities."""
    import torch

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What goes with basil?"}]
    answer = "Tomatoes and mozzarella."
    lp, n = tiny_engine.score(msgs, answer)
    prompt_ids = tiny_engine.render(msgs)
    full = tiny_engine.render(msgs + [{"role": "assistant", "content": answer}], add_generation_prompt=False)
    with torch.inference_mode():
        logits = tiny_engine.model(input_ids=torch.tensor([full])).logits[0].float()
    token_lp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(full[1:])[:, None])[:, 0]
    assert n == len(full) - len(prompt_ids) > 0
    assert lp == pytest.approx(float(token_lp[len(prompt_ids) - 1 :].sum()), rel=1e-4, abs=1e-4)
