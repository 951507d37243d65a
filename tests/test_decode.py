"""The hand-written int8 decode step against transformers' own forward over the same weights."""

import copy

import pytest

from assistant.engine import Engine
from assistant.generation import GenParams, KVSession
from tests.conftest import make_tiny_model

MSGS = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "The capital of France?"}]


@pytest.fixture(autouse=True)
def _needs_int8():
    from assistant import int8

    if not int8.available():
        pytest.skip("this torch has no int8 weight matmul")


def _pair(tokenizer, arch="llama"):
    model = make_tiny_model(tokenizer, arch)
    fast = Engine(copy.deepcopy(model), tokenizer, context_tokens=256, prefill_dtype="bfloat16", decode_dtype="int8")
    slow = Engine(model, tokenizer, context_tokens=256, prefill_dtype="bfloat16", decode_dtype="int8", fast_decode=False)
    return fast, slow


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_decode_step_matches_the_transformers_forward(tiny_tokenizer, arch):
    import torch
    from transformers import DynamicCache

    fast, slow = _pair(tiny_tokenizer, arch)
    assert fast.decode_path == "int8 step" and slow.decode_path.startswith("transformers")
    ids = fast.render(MSGS)
    with torch.inference_mode():
        cache = DynamicCache(config=fast.config)
        fast.model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
        kv = fast._kv
        kv.load(cache, len(ids), len(ids) + 8)
        ref_cache = DynamicCache(config=slow.config)
        slow.model(input_ids=torch.tensor([ids]), cache=ref_cache, use_cache=True)
        token = 5
        for _ in range(6):  # several positions: the KV buffer and the rotary table are used
            mine = fast._decoder.step(token, kv)
            ref = slow._models["int8"](input_ids=torch.tensor([[token]]), cache=ref_cache, use_cache=True).logits[0, -1].float()
            assert (mine - ref).abs().max() < 0.05 * ref.abs().max() + 0.02
            assert int(mine.argmax()) == int(ref.argmax())
            token = int(ref.argmax())
    assert kv.length == len(ids) + 6


def test_fast_decode_generates_what_the_transformers_path_generates(tiny_tokenizer):
    fast, slow = _pair(tiny_tokenizer)
    ids = fast.render(MSGS)
    params = GenParams(temperature=0, max_new_tokens=24)
    assert fast.stream(ids, params).collect() == slow.stream(ids, params).collect()


def test_conversation_cache_holds_decoded_tokens_and_next_turn_matches_a_fresh_prefill(tiny_tokenizer):
    fast, _ = _pair(tiny_tokenizer)
    session = KVSession()
    first = fast.stream(fast.render(MSGS), GenParams(temperature=0, max_new_tokens=10), session=session)
    reply = first.collect()
    assert len(session.ids) == first.stats.prompt_tokens + first.stats.completion_tokens - 1
    assert session.cache.layers[0].keys.shape[-2] == len(session.ids)
    turn2 = fast.render(MSGS + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And Germany?"}])
    cached = fast.stream(turn2, GenParams(temperature=0, max_new_tokens=8), session=session)
    text = cached.collect()
    assert cached.stats.cached_tokens >= len(fast.render(MSGS))
    fast.clear_shared_prefix()
    assert text == fast.stream(turn2, GenParams(temperature=0, max_new_tokens=8)).collect()


def test_a_reply_longer_than_the_kv_chunk_grows_the_buffer(tiny_tokenizer):
    from assistant import decode

    fast, slow = _pair(tiny_tokenizer)
    fast.eos_ids = slow.eos_ids = set()
    ids = fast.render(MSGS)
    n = decode._CHUNK - len(ids) + 20  # crosses the first chunk's end
    params = GenParams(temperature=0, max_new_tokens=min(n, 256 - len(ids) - 1))
    fast.context_tokens = slow.context_tokens = 512
    gen = fast.stream(ids, params)
    gen.collect()
    assert gen.stats.completion_tokens == params.max_new_tokens
    assert fast._kv.k.shape[2] >= len(ids) + params.max_new_tokens - 1


def test_adapter_merge_reaches_the_fused_weights_and_removal_is_exact(tiny_tokenizer):
    import torch

    fast, _ = _pair(tiny_tokenizer)
    wqkv = fast._decoder._steps[0][1][0]
    before = wqkv.clone()
    ids = fast.render(MSGS)
    params = GenParams(temperature=0, max_new_tokens=12)
    base_text = fast.stream(ids, params).collect()
    name = "model.layers.0.self_attn.v_proj.weight"
    delta = torch.full_like(dict(fast.model.named_parameters())[name], 0.4, dtype=torch.float32)
    fast.set_adapter("ann/general/v0001", {name: delta})
    assert not torch.equal(wqkv, before)  # the fused q/k/v matmul sees the merged v
    fast.set_adapter(None, None)
    assert torch.equal(wqkv, before)
    assert fast.stream(ids, params).collect() == base_text


def test_second_start_reads_the_quantized_weights_from_disk_and_decodes_the_same(tmp_path, tiny_tokenizer, home, monkeypatch):
    from assistant import calibration, int8
    from assistant import settings as settings_mod

    folder = tmp_path / "tiny"
    make_tiny_model(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    s = settings_mod.load(env={}, overrides={"model.name": str(folder), "model.prefill_dtype": "bfloat16",
                                             "model.decode_dtype": "int8"})
    first = Engine.load(s)
    assert (folder / calibration.QUANTIZED_FILE).is_file()
    quantized = []
    real_linear = int8.linear

    def spy(weight, bias=None, dtype=None, stored=None):
        quantized.append(stored is None)
        return real_linear(weight, bias, dtype, stored)

    monkeypatch.setattr(int8, "linear", spy)
    second = Engine.load(s)
    assert quantized and not any(quantized)  # every layer came from the cache
    ids = first.render(MSGS)
    params = GenParams(temperature=0, max_new_tokens=16)
    assert first.stream(ids, params).collect() == second.stream(ids, params).collect()
    # new weights (another stamp): the cache is not used
    (folder / "model.safetensors").touch()
    import os
    st = (folder / "model.safetensors").stat()
    os.utime(folder / "model.safetensors", (st.st_atime, st.st_mtime + 10))
    quantized.clear()
    Engine.load(s)
    assert quantized and all(quantized)


def test_calibration_measured_under_load_is_measured_again_when_quiet(tmp_path, tiny_tokenizer, home, monkeypatch):
    from assistant import calibration
    from assistant import settings as settings_mod

    folder = tmp_path / "tiny"
    make_tiny_model(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    s = settings_mod.load(env={}, overrides={"model.name": str(folder)})
    monkeypatch.setattr(calibration, "load_per_cpu", lambda: 3.0)
    said = []
    Engine.load(s, said.append)
    assert any("busy" in m for m in said) and any("calibration 1/" in m for m in said)
    assert calibration.cached_calibration(folder) is not None  # still busy: the result stands
    monkeypatch.setattr(calibration, "load_per_cpu", lambda: 0.2)
    assert calibration.cached_calibration(folder) is None  # quiet now: measure again
    said.clear()
    Engine.load(s, said.append)
    assert any("calibration 1/" in m for m in said)
    (entry,) = __import__("json").loads((folder / calibration.CALIBRATION_FILE).read_text()).values()
    assert entry["load_per_cpu"] == 0.2
    said.clear()
    Engine.load(s, said.append)
    assert not any("calibration" in m for m in said)  # quiet result: kept


def test_decode_runs_on_the_thread_count_calibration_chose_and_prefill_keeps_all(tmp_path, tiny_tokenizer, home, monkeypatch):
    import json

    import torch

    from assistant import calibration
    from assistant import settings as settings_mod

    folder = tmp_path / "tiny"
    make_tiny_model(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    s = settings_mod.load(env={}, overrides={"model.name": str(folder)})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine = Engine.load(s)
        (entry,) = json.loads((folder / calibration.CALIBRATION_FILE).read_text()).values()
        assert entry["decode_threads"] in (1, 2)
        assert all("decode_token_s_1_thread" in t for t in entry["timings"].values())
        engine.decode_threads = 1  # as if one thread had measured faster
        seen = []
        gen = engine.stream(engine.render(MSGS), GenParams(temperature=0, max_new_tokens=6))
        for _ in gen:
            seen.append(torch.get_num_threads())
        assert seen and set(seen) == {1}  # while decoding
        assert torch.get_num_threads() == 2  # back for the next prefill
        # threads the user set are used for both phases
        assert Engine.load(settings_mod.load(env={}, overrides={"model.name": str(folder), "model.threads": 2})).decode_threads == 0
    finally:
        torch.set_num_threads(before)


@pytest.mark.real
def test_real_model_decodes_with_the_fast_step_and_starts_from_the_caches(real_models_dir, home):
    import resource
    import time

    from assistant import calibration
    from assistant import settings as settings_mod

    s = settings_mod.load(env={}, overrides={"model.prefill_dtype": "bfloat16", "model.decode_dtype": "int8"})
    Engine.load(s)  # writes the int8 cache if it is missing
    folder = home / "models" / "smollm2-135m-instruct"
    assert (folder / calibration.QUANTIZED_FILE).is_file()
    t = time.perf_counter()
    engine = Engine.load(s)
    load_s = time.perf_counter() - t
    assert engine.decode_path == "int8 step"
    ids = engine.render([{"role": "user", "content": "What is the capital of France?"}])
    gen = engine.stream(ids, GenParams(temperature=0, max_new_tokens=24))
    assert "Paris" in gen.collect()
    print(f"warm load {load_s:.2f} s, decode {gen.stats.decode_tps:.1f} tok/s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
