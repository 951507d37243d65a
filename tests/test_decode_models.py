"""Any model, safely: adapters tied to their base model; chat templates for models without one."""

import json

import pytest

from assistant import settings as settings_mod
from assistant.adapters import AdapterStore, live_for
from assistant.engine import Engine
from assistant.errors import ModelError
from assistant.generation import GEMMA_TEMPLATE, template_for
from personalization import trainer
from tests.conftest import make_tiny_model


def _publish(store, model, base=None):
    s = settings_mod.load(env={}).learning
    staged = store.staging_dir()
    trainer.create(model, s).save_pretrained(str(staged))
    return store.publish(staged, {"base_model": "tiny-llama"}, base=base)


def test_adapter_records_its_base_and_is_never_applied_to_another_model(home, tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer)
    store = AdapterStore("ann", "general")
    version = _publish(store, make_tiny_model(tiny_tokenizer), base=model)
    assert "base_config" in json.loads((store.path(version) / "meta.json").read_text())
    found = live_for("ann", "general", model)
    assert found is not None and found[0].user == "ann" and found[1] == version
    assert store.deltas(version, model) is not None  # the same model: deltas as before
    other = make_tiny_model(tiny_tokenizer, "qwen2")  # another model (another config hash)
    reasons: list[str] = []
    assert live_for("ann", "general", other, reasons) is None
    assert "trained on tiny-llama" in reasons[0] and "assistant learn --user ann --pack general" in reasons[0]
    assert store.deltas(version, other) is None


def test_an_adapter_without_a_recorded_base_is_checked_by_its_shapes(home, tiny_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    store = AdapterStore("bob", "general")
    version = _publish(store, make_tiny_model(tiny_tokenizer))  # published the old way: no base_config
    assert store.misfit(version, make_tiny_model(tiny_tokenizer)) is None
    torch.manual_seed(0)
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=96, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    why = store.misfit(version, wider)
    assert why is not None and "does not fit" in why
    reasons: list[str] = []
    assert live_for("bob", "general", wider, reasons) is None and reasons


def test_a_pack_ships_its_starting_adapter_and_one_trained_here_comes_first(home, tiny_tokenizer):
    """A pack's `adapter/` folder applies to every user who has no adapter of their own; a pack
    adapter trained on this machine wins over it; another model skips it and says how to fix it."""
    import shutil

    from assistant.adapters import pack_store
    from assistant.packs import validate
    from tests.conftest import copy_pack

    model = make_tiny_model(tiny_tokenizer)
    pack = copy_pack("general", home / "elsewhere")
    made = AdapterStore("_pack", "general", root=home / "made")
    version = _publish(made, make_tiny_model(tiny_tokenizer), base=model)
    shutil.copytree(made.path(version), pack / "adapter" / version)
    assert any("CURRENT" in p.file for p in validate(pack, probe=False))  # a version alone is not enough
    (pack / "adapter" / "CURRENT").write_text(version)
    assert validate(pack, probe=False) == []
    found = live_for("carol", "general", model, shipped=pack / "adapter")
    assert found is not None and found[0].user == "_shipped" and found[0].root == pack / "adapter"
    local = _publish(pack_store("general"), make_tiny_model(tiny_tokenizer), base=model)
    found = live_for("carol", "general", model, shipped=pack / "adapter")
    assert found is not None and found[0].user == "_pack" and found[1] == local
    shutil.rmtree(pack_store("general").root)
    reasons: list[str] = []
    assert live_for("carol", "general", make_tiny_model(tiny_tokenizer, "qwen2"), reasons, shipped=pack / "adapter") is None
    assert "assistant pack train general" in reasons[0]
    (pack / "adapter" / version / "meta.json").unlink()
    assert any("meta.json missing" in p.message for p in validate(pack, probe=False))


def test_gemma_turn_format_without_a_shipped_template():
    from jinja2 import Template

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    text = Template(GEMMA_TEMPLATE).render(messages=msgs, bos_token="<bos>", add_generation_prompt=True)
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
                    "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n")


def test_a_tokenizer_with_no_template_and_no_known_markers_is_a_clear_error(tiny_tokenizer):
    class Bare:
        def get_vocab(self):
            return {"a": 0, "b": 1}

    with pytest.raises(ModelError, match="model.chat_template"):
        template_for(Bare(), "gemma-3-270m")
    assert "im_start" in template_for(tiny_tokenizer)


def test_model_chat_template_setting_is_used(tmp_path, tiny_tokenizer, home):
    folder = tmp_path / "tiny"
    make_tiny_model(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    s = settings_mod.load(env={}, overrides={"model.name": str(folder), "model.chat_template": str(tpl),
                                             "model.prefill_dtype": "float32", "model.decode_dtype": "float32"})
    engine = Engine.load(s)
    assert engine.tokenizer.decode(engine.render([{"role": "user", "content": "hi"}])) == "[user] hi\n"
    s.model.chat_template = str(tmp_path / "missing.jinja")
    with pytest.raises(ModelError, match="not a file"):
        Engine.load(s)


def test_switching_the_model_with_an_adapter_present_answers_with_a_notice(home, tiny_tokenizer):
    """A user's adapter from the old model is skipped (no crash), the answer comes, and the user is told."""
    from assistant.core import Assistant

    old = make_tiny_model(tiny_tokenizer)
    _publish(AdapterStore("cat", "general"), make_tiny_model(tiny_tokenizer), base=old)
    new = Engine(make_tiny_model(tiny_tokenizer, "qwen2"), tiny_tokenizer, name="tiny-qwen", context_tokens=256)
    a = Assistant(settings_mod.load(env={}), engine=new)
    reply = a.chat("cat", "general", use_memory=False).send("Hello there, how are you", temperature=0, max_new_tokens=4)
    reply.collect()
    assert reply.stats.completion_tokens >= 1 and reply.adapter is None
    assert reply.notices and "assistant learn --user cat --pack general" in reply.notices[0]


def test_deltas_are_peft_own_merge_with_rslora_and_rank_patterns(tmp_path, tiny_tokenizer):
    """The weights the engine swaps in equal peft's merge_and_unload, whatever the adapter's
    scaling: rsLoRA and a rank/alpha pattern per module (hand-made B @ A * alpha / r was wrong)."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    from assistant.adapters import lora_deltas

    base = make_tiny_model(tiny_tokenizer)
    config = LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"],
                        rank_pattern={"q_proj": 2}, alpha_pattern={"v_proj": 3})
    peft_model = get_peft_model(copy.deepcopy(base), config)
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    peft_model.save_pretrained(str(tmp_path / "v"))
    merged = dict(peft_model.merge_and_unload().named_parameters())
    deltas = lora_deltas(tmp_path / "v", base)
    assert deltas and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in deltas)
    params = dict(base.named_parameters())
    for name, delta in deltas.items():
        assert torch.allclose(params[name].detach().float() + delta, merged[name].detach().float(), atol=1e-5), name
    assert not any("lora" in n for n, _ in base.named_parameters())  # the model itself is untouched
