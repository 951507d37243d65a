"""The line chat (`assistant chat`): feedback schedules learning as in the TUI, rounds are
announced, /continue picks up an answer cut at the token limit; the default user is shared."""

from __future__ import annotations

import json
import time

import pytest

from assistant import settings as settings_mod
from assistant.core import Assistant
from cli import main as cli


def _run_chat(monkeypatch, capsys, assistant, lines, argv=()):
    """Run `assistant chat` on ``assistant`` with ``lines`` typed; a callable line waits for a
    condition on the output so far (it gets the text, returns True when done waiting)."""
    monkeypatch.setattr(cli, "make_assistant", lambda args, quiet=False: assistant)
    seen: list[str] = []

    def output() -> str:
        captured = capsys.readouterr()
        seen.append(captured.out + captured.err)
        return "".join(seen)

    script = iter(lines)

    def fake_input(prompt=""):
        while True:
            item = next(script, None)
            if item is None:
                raise EOFError
            if callable(item):
                deadline = time.monotonic() + 240
                while not item(output()) and time.monotonic() < deadline:
                    time.sleep(0.1)
                continue
            return item

    monkeypatch.setattr("builtins.input", fake_input)
    args = cli.build_parser().parse_args(["chat", "--pack", "general", "--temperature", "0", *argv])
    assert args.func(args) == 0
    return output()


def _assistant(engine, **learning):
    settings = settings_mod.load(env={})
    settings.memory.enabled = False
    for key, value in learning.items():
        setattr(settings.learning, key, value)
    return Assistant(settings, engine=engine)


@pytest.mark.slow
def test_chat_correction_starts_a_learning_round_and_says_so(tiny_engine, monkeypatch, capsys):
    tiny_engine.context_tokens = 512
    assistant = _assistant(tiny_engine, enabled=True, min_new_examples=1, idle_seconds=0.5, max_steps=2,
                           time_budget_s=60.0)
    out = _run_chat(monkeypatch, capsys, assistant, [
        "What is two plus two?",
        "/correct Two plus two is four.",
        lambda text: "learning round finished" in text or "learning round failed" in text,
        "/learning",
        "/exit",
    ], argv=["--max-tokens", "4"])
    assert "(correction saved (1/1 new examples): a learning round starts after 0.5 s without activity)" in out
    assert "[learning round started:" in out
    assert "[learning round finished:" in out, out[-2000:]
    # the gate's verdict is named with its thresholds, promoted or not
    assert "is now live" in out or "needs at least 2% lower" in out
    assert "0/1 new examples" in out  # /learning after the round: nothing left waiting
    assert assistant.learner.notify not in assistant.listeners or assistant.learner._stop.is_set()


def test_chat_says_honestly_when_learning_is_off(tiny_engine, monkeypatch, capsys):
    tiny_engine.context_tokens = 512
    assistant = _assistant(tiny_engine, enabled=False)
    out = _run_chat(monkeypatch, capsys, assistant, ["Hello there", "/good", "/bad", "/exit"], argv=["--max-tokens", "3"])
    assert "rated +1, saved; automatic learning is off (learning.enabled = false)" in out
    assert "assistant learn --user me --pack general" in out
    assert "rated -1: a bad answer alone is not trained on" in out
    assert "I'll learn from it" not in out
    assert assistant.learner.notify not in assistant.listeners


def test_chat_marks_a_cut_answer_and_continue_continues_it(tiny_engine, monkeypatch, capsys):
    tiny_engine.context_tokens = 512
    assistant = _assistant(tiny_engine, enabled=False)
    out = _run_chat(monkeypatch, capsys, assistant, ["Tell me a long story", "/continue", "/exit"],
                    argv=["--max-tokens", "3"])
    assert "…[stopped at 3 tokens — type /continue to continue]" in out
    assert out.count("assistant> ") == 2
    turns = assistant.journal("me").turns()
    assert [t.finish_reason for t in turns] == ["length", "length"]
    from cli.chat import CONTINUE_PROMPT

    assert turns[1].message == CONTINUE_PROMPT
    assert turns[1].conversation_id == turns[0].conversation_id  # the same conversation: it sees the cut answer


def test_default_user_is_the_one_last_used_in_the_tui(home, capsys):
    assert settings_mod.load(env={}).chat.user == "me"
    (home / "users" / "alice").mkdir(parents=True)
    settings_mod.remember_choice("alice", "chef")
    assert settings_mod.load(env={}).chat.user == "alice"
    assert settings_mod.load(env={}, overrides={"chat.user": "bob"}).chat.user == "bob"  # a flag wins
    (home / "config.toml").write_text('[chat]\nuser = "carol"\n')
    assert settings_mod.load(env={}).chat.user == "carol"  # so does the config file
    (home / "config.toml").unlink()
    # a deleted user is not the default any more
    (home / "users" / "alice").rmdir()
    assert settings_mod.load(env={}).chat.user == "me"
    # the old TUI file is still read
    (home / settings_mod.LAST_CHOICE).unlink()
    (home / "users" / "dan").mkdir(parents=True)
    (home / "tui.json").write_text(json.dumps({"user": "dan", "pack": "general"}))
    assert settings_mod.load(env={}).chat.user == "dan"


def test_user_list_stars_the_default_user(home, capsys):
    assert cli.main(["user", "list"]) == 0
    assert "no users yet" in capsys.readouterr().out
    for name in ("alice", "bob"):
        (home / "users" / name).mkdir(parents=True)
    settings_mod.remember_choice("bob", "general")
    assert cli.main(["user", "list"]) == 0
    out = capsys.readouterr().out
    assert "* bob" in out and "  alice" in out


def test_pack_new_names_a_command_that_runs(tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)  # `assistant` is not on PATH
    assert cli.main(["pack", "new", "mypack", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    command = out.split("check it with `", 1)[1].split(" pack validate", 1)[0]
    assert command.endswith("run.sh") and not command.startswith("assistant")


@pytest.mark.real
def test_real_chat_cut_answer_continues(real_engine, monkeypatch, capsys):
    assistant = _assistant(real_engine, enabled=False)
    out = _run_chat(monkeypatch, capsys, assistant, ["Explain how to make bread, step by step.", "/continue", "/exit"],
                    argv=["--max-tokens", "24"])
    assert "…[stopped at 24 tokens" in out
    answers = [part.split("\n", 1)[0] for part in out.split("assistant> ")[1:]]
    assert len(answers) == 2 and all(len(a.strip()) > 10 for a in answers)
    assert answers[1].strip()[:40] != answers[0].strip()[:40]  # it went on, not over again
