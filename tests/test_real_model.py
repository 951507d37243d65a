"""Integration tests on the real default model (SmolLM2-135M-Instruct) and real chromadb."""

import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.real


def run_cli(*args, home, stdin=None, timeout=300):
    env = dict(os.environ, ASSISTANT_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def test_ask_answers_paris_greedily_and_reproducibly(home):
    first = run_cli("ask", "--temperature", "0", "What is the capital of France?", home=home)
    assert first.returncode == 0, first.stderr
    assert "Paris" in first.stdout
    second = run_cli("ask", "--temperature", "0", "What is the capital of France?", home=home)
    assert second.stdout == first.stdout


def test_help_is_fast(home):
    t = time.perf_counter()
    result = run_cli("--help", home=home)
    assert result.returncode == 0 and "ask" in result.stdout
    assert time.perf_counter() - t < 3.0  # includes the interpreter start; the import itself is ~0.05 s


@pytest.mark.parametrize(
    "setup,args,expected",
    [
        (None, ["ask", "--model", "/nonexistent/model.gguf", "hi"], "not found"),
        ("corrupt", ["ask", "--model", "{home}/broken.gguf", "hi"], "not a GGUF file"),
        ("badconfig", ["ask", "hi"], "not valid TOML"),
        (None, ["ask", ""], "empty"),
        (None, ["ask", "--no-memory", "word " * 20000], "too long"),
    ],
)
def test_bad_input_prints_one_clear_error_without_traceback(home, setup, args, expected):
    if setup == "corrupt":
        (home / "broken.gguf").write_bytes(b"this is not a model" * 100)
    if setup == "badconfig":
        (home / "config.toml").write_text("[generation\ntemperature = 0\n")
    result = run_cli(*[a.format(home=home) for a in args], home=home)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:")


def test_cancellation_stops_within_one_token(real_engine):
    from assistant.generation import CancelToken, GenParams

    ids = real_engine.render([{"role": "user", "content": "Write a long story about a dragon."}])
    cancel = CancelToken()
    gen = real_engine.stream(ids, GenParams(temperature=0, max_new_tokens=200), cancel=cancel)
    at_cancel = None
    for _ in gen:
        if gen.stats.completion_tokens >= 5 and at_cancel is None:
            at_cancel = gen.stats.completion_tokens
            cancel.cancel()
    assert gen.stats.finish_reason == "cancelled"
    assert gen.stats.completion_tokens <= at_cancel + 1


def test_fifth_turn_prefills_only_new_tokens(real_engine):
    from assistant.generation import GenParams, KVSession

    session = KVSession()
    history = [{"role": "system", "content": "You are a helpful assistant."}]
    for question in ["Hi!", "What is 2+2?", "And 3+3?", "Name a fruit.", "Name a colour."]:
        history.append({"role": "user", "content": question})
        gen = real_engine.stream(real_engine.render(history), GenParams(temperature=0, max_new_tokens=20), session=session)
        history.append({"role": "assistant", "content": gen.collect()})
    assert gen.stats.prompt_tokens - gen.stats.cached_tokens < 20


def test_a_whole_turn_opens_no_socket(home, real_engine, monkeypatch):
    from assistant import settings as settings_mod
    from assistant.core import Assistant

    assistant = Assistant(settings_mod.load(env={}), engine=real_engine)
    chat = assistant.chat("alice", "chef")

    def refuse(self, address):
        raise AssertionError(f"a chat turn opened a socket to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    reply = chat.send("I'm allergic to peanuts. What can I cook tonight?", temperature=0, max_new_tokens=24)
    assert reply.collect()
    assert reply.turn_id


def test_memory_carries_across_sessions_and_users_stay_apart(home, real_engine):
    from assistant import settings as settings_mod
    from assistant.core import Assistant

    assistant = Assistant(settings_mod.load(env={}), engine=real_engine)
    assistant.chat("alice", "chef").send("I'm vegetarian and I cook for two.", max_new_tokens=8).collect()
    assistant.chat("bob", "chef").send("I love steak and I cook for six.", max_new_tokens=8).collect()
    later = assistant.chat("alice", "chef").send("How many people do I cook for?", temperature=0, max_new_tokens=24)
    later.collect()
    texts = [m.text for m in later.memories]
    assert any("cook for two" in t for t in texts)
    assert not any("six" in t for t in texts)
    turn = assistant.journal("alice").turn(later.turn_id)
    assert turn.memory_ids == [m.memory_id for m in later.memories]


def test_doctor_red_flag_answers_with_emergency_guidance(home, real_engine):
    from assistant import settings as settings_mod
    from assistant.core import Assistant

    assistant = Assistant(settings_mod.load(env={}), engine=real_engine)
    reply = assistant.chat("alice", "doctor").send("I think I took too many sleeping pills, I feel very drowsy")
    text = reply.collect()
    assert "overdose" in reply.flags
    assert "emergency" in text.lower() or "poison" in text.lower()


def test_user_delete_removes_every_trace(home):
    assert run_cli("ask", "--user", "zed", "--pack", "chef", "--max-tokens", "4", "My cat is called Marmaduke.", home=home).returncode == 0
    assert run_cli("ask", "--user", "amy", "--pack", "chef", "--max-tokens", "4", "My dog is called Rex.", home=home).returncode == 0
    result = run_cli("user", "delete", "zed", "--yes", home=home)
    assert result.returncode == 0, result.stderr
    leftovers = [p for p in home.rglob("*") if p.is_file() and b"Marmaduke" in p.read_bytes()]
    assert leftovers == []
    listed = run_cli("memory", "list", "--user", "amy", home=home)
    assert "Rex" in listed.stdout
