"""Shared fixtures. Every test gets its own ASSISTANT_HOME; nothing may reach the network."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0] if isinstance(address, tuple) else ""
    return host in ("127.0.0.1", "::1", "localhost") or str(host).startswith("127.")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection beyond this machine fails the test."""

    def guarded(self, address):
        if not _is_local(address):
            raise AssertionError(f"test tried to reach the network: {address!r}")
        return _real_connect(self, address)

    def guarded_ex(self, address):
        if not _is_local(address):
            raise AssertionError(f"test tried to reach the network: {address!r}")
        return _real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_ex)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch, request):
    """A private data directory. Real-model tests share the converted model folder."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("ASSISTANT_HOME", str(h))
    for name in list(os.environ):
        if name.startswith("ASSISTANT_") and name != "ASSISTANT_HOME":
            monkeypatch.delenv(name)
    if "real" in request.keywords:
        models = request.getfixturevalue("real_models_dir")
        (h / "models").symlink_to(models, target_is_directory=True)
    return h


@pytest.fixture(scope="session")
def real_models_dir(tmp_path_factory) -> Path:
    """The default model, converted once per test session (this is the first-start conversion)."""
    cache = os.environ.get("ASSISTANT_TEST_MODELS")
    folder = Path(cache) if cache else tmp_path_factory.mktemp("models-home") / "models"
    from assistant import model_store

    old = os.environ.get("ASSISTANT_HOME")
    os.environ["ASSISTANT_HOME"] = str(folder.parent)
    try:
        model_store.resolve("default")
    finally:
        if old is None:
            os.environ.pop("ASSISTANT_HOME", None)
        else:
            os.environ["ASSISTANT_HOME"] = old
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A small byte-level BPE tokenizer with a ChatML template, trained in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["The capital of France is Paris.", "You are a helpful assistant.", "user assistant system"] * 20
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return fast


def make_tiny_model(tokenizer, arch: str = "llama", seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), bos_token_id=0, pad_token_id=0,
    )
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    return LlamaForCausalLM(LlamaConfig(**common)).eval()


@pytest.fixture
def tiny_engine(tiny_tokenizer):
    from assistant.engine import Engine

    return Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, name="tiny", context_tokens=256)


@pytest.fixture(scope="session")
def real_engine(real_models_dir):
    """The real default model, loaded once (auto dtypes, as a user gets them)."""
    from assistant import settings as settings_mod
    from assistant.engine import Engine

    old = os.environ.get("ASSISTANT_HOME")
    os.environ["ASSISTANT_HOME"] = str(real_models_dir.parent)
    try:
        return Engine.load(settings_mod.load(env={}))
    finally:
        os.environ["ASSISTANT_HOME"] = old or ""


def copy_pack(name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(ROOT / "data" / "packs" / name, target)
    return target


@pytest.fixture(autouse=True)
def no_markup_in_real_answers(request, monkeypatch):
    """In the real tier, no answer may carry the prompt's internal markup: a note id ("[m1]") or a
    knowledge file name. Sources travel as data (``Reply.sources``)."""
    if "real" not in request.keywords:
        yield
        return
    import re

    from assistant import core

    original = core.Reply.__iter__

    def checked(self):
        yield from original(self)
        assert not re.search(r"\[m\d+\]", self.text), f"an answer shows a note id: {self.text!r}"
        assert not re.search(r"\b[\w-]+\.md\b", self.text), f"an answer shows a file name: {self.text!r}"

    monkeypatch.setattr(core.Reply, "__iter__", checked)
    yield
