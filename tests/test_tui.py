"""The terminal UI, driven through Textual's pilot with a scripted fake engine."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("textual")

from assistant.core import Assistant  # noqa: E402
from assistant.generation import Generation, GenStats  # noqa: E402
from assistant.settings import Settings  # noqa: E402

SIZE = (100, 30)
pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # the app with its model loading, learning and memory threads: seconds a test


@pytest.fixture
def anyio_backend():
    return "asyncio"


class FakeEngine:
    """The parts of Engine that Chat.send uses; answers come from a script."""

    name = "fake"
    context_tokens = 4096
    adapter_id = None
    model = None

    def __init__(self, answers=None, delay: float = 0.0, fail: Exception | None = None, load_delay: float = 0.0):
        self.answers = list(answers or ["Hello **there**! How can I help?"])
        self.delay = delay
        self.fail = fail
        self.calls = 0

    def render(self, messages, add_generation_prompt=True):
        return list(range(sum(len(m["content"]) for m in messages) // 4 + 1))

    def count_tokens(self, text):
        return len(text) // 4 + 1

    def set_adapter(self, adapter_id, deltas=None):
        self.adapter_id = adapter_id

    def stream(self, ids, params, session=None, cancel=None):
        if self.fail is not None:
            raise self.fail
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        stats = GenStats(prompt_tokens=len(ids))

        def run():
            stats.finish_reason = "stop"
            for i, word in enumerate(answer.split(" ")):
                if cancel is not None and cancel.cancelled:
                    stats.finish_reason = "cancelled"
                    return
                if self.delay:
                    time.sleep(self.delay)
                stats.completion_tokens += 1
                yield word if i == 0 else " " + word

        return Generation(run(), stats)


def make(engine=None, memory=False, keys=None, **kw):
    from tui.app import make_app

    settings = Settings()
    settings.memory.enabled = memory
    settings.learning.enabled = False
    if keys:
        settings.tui.keys = keys
    assistant = Assistant(settings, engine=engine or FakeEngine())
    kw.setdefault("onboarding", False)  # the onboarding tests below pass None (decide by itself)
    return make_app(settings, assistant, **kw)


async def wait_idle(app, pilot):
    await pilot.pause()
    await app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


async def ask(app, pilot, text):
    app.query_one("#prompt").value = text
    await pilot.press("enter")
    await wait_idle(app, pilot)


async def edit_in_editor(app, pilot, key: str, expected: str, new_text: str) -> None:
    """Open the multi-line editor with ``key``, check what it starts with, replace it and save."""
    from textual.widgets import TextArea

    from tui.screens import EditScreen

    if key is not None:
        await pilot.press(key)
        await pilot.pause()
    assert isinstance(app.screen, EditScreen)
    area = app.screen.query_one(TextArea)
    assert area.text == expected
    area.text = new_text
    await pilot.press("ctrl+s")


def log_text(app) -> str:
    from tui.widgets import AssistantMessage, UserMessage

    parts = []
    for w in app.query_one("#log").children:
        if isinstance(w, AssistantMessage):
            parts.append(w.text)
        elif isinstance(w, UserMessage):
            parts.append(w.text)
    return "\n".join(parts)


async def test_send_streams_reply_and_journals():
    app = make(FakeEngine(["The capital of France is **Paris**."]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_idle(app, pilot)
        await ask(app, pilot, "What is the capital of France?")
        from tui.widgets import AssistantMessage

        answers = list(app.query(AssistantMessage))
        assert answers[-1].text == "The capital of France is **Paris**."
        assert "Paris" in answers[-1].markdown.source
        turn = app.chat.journal.turn(answers[-1].turn_id)
        assert turn.message == "What is the capital of France?"
        assert app.query_one("#prompt").value == ""
        # history: up brings the last message back
        await pilot.press("up")
        assert app.query_one("#prompt").value == "What is the capital of France?"
        await pilot.press("down")
        assert app.query_one("#prompt").value == ""


async def test_first_frame_does_not_wait_for_model_and_typing_works():
    import threading

    from assistant import engine as engine_mod

    gate = threading.Event()
    settings = Settings()
    settings.memory.enabled = False
    fake = FakeEngine(["Loaded now."])

    def slow_load(settings, progress=None):
        gate.wait(10)
        return fake

    from tui.app import make_app

    original = engine_mod.Engine.load
    engine_mod.Engine.load = staticmethod(slow_load)
    try:
        app = make_app(settings, Assistant(settings), onboarding=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            status = str(app.query_one("#status").render())
            assert "loading" in status or "step 1/" in status  # the first-start plan may already show
            assert app.query_one("#spinner").display
            await pilot.press("h", "i")
            assert app.query_one("#prompt").value == "hi"
            gate.set()
            await pilot.press("enter")
            await wait_idle(app, pilot)
            assert "Loaded now." in log_text(app)
            assert "ready" in str(app.query_one("#status").render())
            assert not app.query_one("#spinner").display
    finally:
        engine_mod.Engine.load = original
        gate.set()


async def test_escape_cancels_a_long_reply():
    long = " ".join(f"word{i}" for i in range(400))
    app = make(FakeEngine([long], delay=0.01))
    async with app.run_test(size=SIZE) as pilot:
        app.query_one("#prompt").value = "tell me a long story"
        await pilot.press("enter")
        await pilot.pause(0.3)
        await pilot.press("escape")
        await wait_idle(app, pilot)
        from tui.widgets import AssistantMessage

        answer = list(app.query(AssistantMessage))[-1]
        assert 0 < len(answer.text) < len(long)
        assert "stopped" in str(answer.meta.render())
        assert app.chat.journal.turn(answer.turn_id).finish_reason == "cancelled"


async def test_quit_while_answering_stops_generation():
    long = " ".join(f"word{i}" for i in range(2000))
    app = make(FakeEngine([long], delay=0.01))
    start = time.monotonic()
    async with app.run_test(size=SIZE) as pilot:
        app.query_one("#prompt").value = "go on forever"
        await pilot.press("enter")
        await pilot.pause(0.2)
        await pilot.press("ctrl+q")
        await pilot.pause(0.2)
    assert time.monotonic() - start < 10
    assert app.return_code == 0


async def test_rating_and_correction_write_the_journal():
    app = make(FakeEngine(["Two plus two is five."]))
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "What is 2+2?")
        turn_id = app.chat.last_turn_id
        await pilot.press("ctrl+g")
        assert app.chat.journal.turn(turn_id).rating == 1
        await pilot.press("ctrl+b")  # tmux's prefix: no longer bound
        assert app.chat.journal.turn(turn_id).rating == 1
        await pilot.press("ctrl+o")
        assert app.chat.journal.turn(turn_id).rating == -1
        assert any("not trained on" in n.message for n in app._notifications)
        from tui.screens import EditScreen

        await pilot.press("ctrl+r")
        await pilot.pause()
        # The editor starts empty; the bad answer is shown above it, read-only.
        assert isinstance(app.screen, EditScreen)
        assert str(app.screen.query_one("#edit-shown-text").render()) == "Two plus two is five."
        await edit_in_editor(app, pilot, None, "", "Two plus two is four.")
        await pilot.pause()

        assert not isinstance(app.screen, EditScreen)
        assert app.chat.journal.turn(turn_id).correction == "Two plus two is four."
        from tui.widgets import CorrectionMessage

        assert [c.text for c in app.query(CorrectionMessage)] == ["Two plus two is four."]


async def test_feedback_without_answer_warns():
    app = make()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+g")
        await pilot.pause()
        assert any("no answer" in n.message for n in app._notifications)


async def test_engine_error_notifies_and_restores_prompt():
    from assistant.errors import PromptError

    app = make(FakeEngine(fail=PromptError("the message is too long")))
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "a question")
        assert any("too long" in n.message and n.severity == "error" for n in app._notifications)
        assert app.query_one("#prompt").value == "a question"
        assert log_text(app) == ""
        app.assistant._engine = FakeEngine(["Recovered."])
        await pilot.press("enter")
        await wait_idle(app, pilot)
        assert "Recovered." in log_text(app)


async def test_unexpected_exception_keeps_app_running():
    app = make(FakeEngine(fail=RuntimeError("boom")))
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "hello")
        assert any("boom" in n.message for n in app._notifications)
        assert app.is_running


async def test_new_chat_and_conversations_resume_rename_delete():
    app = make(FakeEngine(["First answer.", "Second answer."]))
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "first question")
        first = app.chat.conversation_id
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert app.chat.conversation_id != first
        assert log_text(app) == ""
        await ask(app, pilot, "second question")
        second = app.chat.conversation_id

        from tui.screens import AskScreen, ConversationsScreen

        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ConversationsScreen)
        ids = [c.id for c in screen.items]
        assert set(ids) == {first, second}
        # rename the highlighted one
        screen.query_one("#conversation-list").highlighted = ids.index(first)
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, AskScreen)
        app.screen.query_one("#answer").value = "Renamed"
        await pilot.press("enter")
        await pilot.pause()
        titles = {c.id: c.title for c in app.chat.journal.conversations()}
        assert titles[first] == "Renamed"
        # resume it
        screen.query_one("#conversation-list").highlighted = [c.id for c in screen.items].index(first)
        await pilot.press("enter")
        await pilot.pause()
        assert app.chat.conversation_id == first
        assert "First answer." in log_text(app) and "Second answer." not in log_text(app)
        assert app.chat.history and app.chat.history[0][1] == "First answer."
        # delete the other one
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#conversation-list").highlighted = [c.id for c in screen.items].index(second)
        await pilot.press("delete")
        await pilot.pause()
        assert second not in {c.id for c in app.chat.journal.conversations()}
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ConversationsScreen)


async def test_help_lists_bindings_and_remapping():
    app = make(keys={"rate_up": "f9", "nonsense": "f10"})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert any("nonsense" in n.message for n in app._notifications)
        await pilot.press("f1")
        await pilot.pause()
        from tui.app import KEYS
        from tui.screens import HelpScreen

        assert isinstance(app.screen, HelpScreen)
        text = str(app.screen.query_one("#help-text").render())
        for _action, _key, desc in KEYS:
            assert desc in text
        assert "f9" in text
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        await ask(app, pilot, "hi")
        await pilot.press("f9")
        assert app.chat.journal.turn(app.chat.last_turn_id).rating == 1


async def test_pack_switch_and_sidebar():
    app = make(user="alice")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        who = str(app.query_one("#who").render())
        assert "alice" in who and app.chat.pack.name in who
        from tui.screens import PackScreen

        await pilot.press("f4")
        await pilot.pause()
        assert isinstance(app.screen, PackScreen)
        target = next(p for p in sorted(app.assistant.catalog.packs) if p != app.chat.pack.id)
        options = app.screen.query_one("#packs")
        options.highlighted = options.get_option_index(target)
        await pilot.press("enter")
        await pilot.pause()
        assert app.chat.pack.id == target
        assert app.assistant.catalog.packs[target].name in str(app.query_one("#who").render())


async def test_copy_last_answer():
    app = make(FakeEngine(["Copy me."]))
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "hi")
        copied = []
        app.copy_to_clipboard = copied.append
        await pilot.press("ctrl+y")
        assert copied == ["Copy me."]


async def test_screenshot_svg_contains_conversation(tmp_path):
    app = make(FakeEngine(["Paris is the capital of France."]), user="alice")
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "What is the capital of France?")
        path = app.save_screenshot(path=str(tmp_path), filename="shot.svg")
    svg = open(path, encoding="utf-8").read()
    for needle in ("capital", "alice", "Memories", "used"):
        assert needle in svg


async def test_memory_browser_lists_and_deletes():
    app = make(FakeEngine(["Noted."]), memory=True, user="bob")
    store = app.assistant.memory("bob")
    keep = store.add("I am allergic to peanuts.", "fact")
    drop = store.add("My favourite colour is green.", "preference")
    async with app.run_test(size=SIZE) as pilot:
        from tui.screens import MemoryScreen

        await pilot.press("f2")
        await wait_idle(app, pilot)
        screen = app.screen
        assert isinstance(screen, MemoryScreen)
        assert {m.id for m in screen.items} == {keep.id, drop.id}
        screen.query_one("#memory-list").highlighted = [m.id for m in screen.items].index(drop.id)
        await pilot.press("delete")
        await wait_idle(app, pilot)
        assert [m.id for m in store.list()] == [keep.id]
        assert [m.id for m in screen.items] == [keep.id]
        # edit
        screen.query_one("#memory-list").focus()
        await pilot.press("ctrl+e")
        await pilot.pause()
        app.screen.query_one("TextArea").text = "I am allergic to peanuts and cashews."
        await pilot.press("ctrl+s")
        await wait_idle(app, pilot)
        for _ in range(150):  # an edit rebuilds the store in a child process: give it time
            if store.get(keep.id).text == "I am allergic to peanuts and cashews.":
                break
            await pilot.pause(0.1)
        assert store.get(keep.id).text == "I am allergic to peanuts and cashews."
        await pilot.press("escape")
        await pilot.pause()
        # an answer recalls memories and the sidebar shows them
        await ask(app, pilot, "What am I allergic to?")
        sidebar = str(app.query_one("#memories").render())
        assert "peanuts" in sidebar


def test_cli_registers_tui_subcommand():
    from cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["tui", "--user", "carol", "--pack", "general"])
    assert args.cmd == "tui" and args.user == "carol" and args.pack == "general"


# ------------------------------------------------------------------------------ learning panel
GATE = {"promote": False, "reason": "the candidate did not beat the live adapter on held-out loss",
        "live": {"user_loss": 1.25, "user_match": 0.5, "eval_loss": 2.0, "guard_ppl": 30.0},
        "candidate": {"user_loss": 1.5, "user_match": 0.25, "eval_loss": 2.1, "guard_ppl": 31.0},
        "heldout_is_separate": True}


def publish_tiny(tokenizer, user, pack, loss=1.0):
    """A saved tiny LoRA published as the next version of ``user``/``pack``."""
    from assistant import settings as settings_mod
    from assistant.adapters import AdapterStore
    from personalization import trainer
    from tests.conftest import make_tiny_model

    store = AdapterStore(user, pack)
    model = trainer.create(make_tiny_model(tokenizer), settings_mod.load(env={}).learning)
    staged = store.staging_dir()
    model.save_pretrained(str(staged))
    return store.publish(staged, {"steps": 7, "examples": 3, "created": time.time(),
                                  "gate": {"candidate": {"user_loss": loss}, "reason": "better"}})


def panel_text(app, selector) -> str:
    return str(app.screen.query_one(selector).render())


async def send_from_thread(app, user, pack, event):
    """Deliver ``event`` the way the learner does: every listener, called from another thread."""
    import asyncio
    import threading

    def deliver():
        for listener in list(app.assistant.learner.listeners):
            listener(user, pack, event)

    thread = threading.Thread(target=deliver)
    thread.start()
    await asyncio.to_thread(thread.join)


async def test_learning_panel_pending_versions_gate_and_rollback(tiny_tokenizer):
    from assistant.adapters import AdapterStore
    from personalization.learner import _write_state
    from tui.screens import LearningScreen

    app = make(FakeEngine(["Paris."]), user="ann", pack="general")
    store = AdapterStore("ann", "general")
    async with app.run_test(size=SIZE) as pilot:
        assert app.assistant.learner.notify in app.assistant.listeners  # learner.start() ran on mount
        assert "0/4 new examples" in str(app.query_one("#learning").render())
        await ask(app, pilot, "What is the capital of France?")  # (the fake engine cannot merge adapters)
        await pilot.press("ctrl+g")  # +1: one pending example
        await pilot.pause()
        assert "1/4 new examples" in str(app.query_one("#learning").render())
        v1 = publish_tiny(tiny_tokenizer, "ann", "general", loss=1.5)
        v2 = publish_tiny(tiny_tokenizer, "ann", "general", loss=1.25)
        _write_state(store, {"last_result": {"at": time.time(), "promoted": False, "version": None, "live": v2,
                                             "reason": GATE["reason"], "gate": GATE}})
        assert store.current() == v2
        await pilot.press("f5")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, LearningScreen)
        status = panel_text(app, "#learn-status")
        assert "1 new example" in status and v2 in status
        assert screen.version_ids == ["none", v2, v1]
        options = screen.query_one("#versions")
        assert options.highlighted == 1  # the live one
        assert "●" in str(options.get_option_at_index(1).prompt)
        # the last gate result
        assert "REJECTED" in panel_text(app, "#learn-verdict")
        table = screen.query_one("#gate-table")
        assert table.get_row("user_loss")[1:] == ["1.250", "1.500"]
        assert table.get_row("user_match")[1:] == ["50%", "25%"]
        assert table.get_row("guard_ppl")[1:] == ["30.00", "31.00"]
        # roll back to v1 (enter on the highlighted version), then to the base model (ctrl+o)
        options.highlighted = screen.version_ids.index(v1)
        await pilot.press("enter")
        await pilot.pause()
        assert store.current() == v1
        assert v1 in panel_text(app, "#learn-status")
        options.highlighted = 0
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert store.current() is None
        assert any("base model" in n.message for n in app._notifications)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, LearningScreen)
        assert "1/4 new examples · base model" in str(app.query_one("#learning").render())


async def test_learning_events_from_the_listener_update_panel_and_notify():
    from tui.screens import LearningScreen

    app = make(user="ann", pack="general")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await pilot.pause()
        assert isinstance(app.screen, LearningScreen)
        await send_from_thread(app, "ann", "general", {"phase": "training", "step": 3, "steps": 10, "loss": 1.234,
                                                       "eta_s": 12.0, "examples": 6})
        await pilot.pause()
        await pilot.pause()
        phase = panel_text(app, "#learn-phase")
        assert "step 3/10" in phase and "1.234" in phase
        bar = app.screen.query_one("#learn-progress")
        assert bar.display and bar.total == 10 and bar.progress == 3
        assert "step 3/10" in str(app.query_one("#learning").render())  # the sidebar follows too
        await send_from_thread(app, "ann", "general", {"phase": "gating"})
        await pilot.pause()
        assert "checking" in panel_text(app, "#learn-phase")
        await send_from_thread(app, "ann", "general", {"phase": "done", "promoted": False, "version": None,
                                                       "live": None, "reason": GATE["reason"], "gate": GATE})
        await pilot.pause()
        await pilot.pause()
        assert "not promoted" in panel_text(app, "#learn-phase")
        assert any("rejected" in n.message for n in app._notifications)
        await send_from_thread(app, "ann", "general", {"phase": "failed", "error": "out of memory"})
        await pilot.pause()
        await pilot.pause()
        assert any("out of memory" in n.message and n.severity == "error" for n in app._notifications)
    assert app._learning_listener not in app.assistant.learner.listeners  # removed when the app closed


async def test_learn_now_runs_in_a_worker_and_shows_the_result(monkeypatch):
    import threading

    from personalization.gate import Decision, Scores
    from personalization.learner import RoundResult
    from tui.screens import LearningScreen

    app = make(user="ann", pack="general")
    learner = app.assistant.learner
    calls = []
    release = threading.Event()

    def fake_round(user, pack, **kw):
        calls.append((user, pack, threading.current_thread() is threading.main_thread()))
        for listener in list(learner.listeners):
            listener(user, pack, {"phase": "training", "step": 1, "steps": 2, "loss": 0.5, "eta_s": 1.0, "examples": 4})
        release.wait(5)
        decision = Decision(True, "the candidate beat the live adapter", Scores(1.2, 0.5, 2.0, 30.0),
                            Scores(0.9, 0.75, 2.0, 30.1), True)
        for listener in list(learner.listeners):  # the real learner reports "done" too: shown once
            listener(user, pack, {"phase": "done", "promoted": True, "version": "v0001", "live": "v0001",
                                  "reason": decision.reason, "gate": decision.to_json()})
        return RoundResult(user, pack, True, "v0001", "v0001", decision, 4, 2, 1.0, 100, 1.5)

    monkeypatch.setattr(learner, "run_round", fake_round)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await pilot.pause()
        assert isinstance(app.screen, LearningScreen)
        await pilot.press("ctrl+l")
        for _ in range(50):
            await pilot.pause(0.02)
            if "step 1/2" in panel_text(app, "#learn-phase"):
                break
        assert "step 1/2" in panel_text(app, "#learn-phase")  # the UI is live while the round runs
        await pilot.press("ctrl+l")  # a second one is refused
        await pilot.pause()
        assert any("already running" in n.message for n in app._notifications)
        release.set()
        await wait_idle(app, pilot)
        assert calls == [("ann", "general", False)]
        assert "v0001 promoted" in panel_text(app, "#learn-phase")
        done = [n for n in app._notifications if "v0001 is now live" in n.message]
        assert len(done) == 1

        def broken(user, pack, **kw):
            raise RuntimeError("no GPU memory left")

        monkeypatch.setattr(learner, "run_round", broken)
        await pilot.press("ctrl+l")
        await wait_idle(app, pilot)
        assert any("no GPU memory left" in n.message and n.severity == "error" for n in app._notifications)
        assert "failed" in panel_text(app, "#learn-phase")
        assert app.is_running


# ------------------------------------------------------------------------------ onboarding
async def test_onboarding_on_first_run_creates_the_chat(home):
    from tui.screens import OnboardingScreen
    from tui.widgets import NoteMessage, StarterQuestion

    app = make(onboarding=None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, OnboardingScreen)
        assert app.chat is None
        pack_ids = screen.pack_ids
        assert "chef" in pack_ids
        assert "home-cooking" in str(screen.query_one("#onboard-packs").get_option("chef").prompt)
        # an invalid name is refused inline
        screen.query_one("#onboard-name").value = "no spaces please"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, OnboardingScreen)
        assert "invalid user name" in str(screen.query_one("#onboard-error").render())
        await pilot.press("ctrl+r", "ctrl+g")  # chat keys do nothing here
        await pilot.pause()
        screen.query_one("#onboard-name").value = "alice"
        await pilot.press("enter")
        await pilot.pause()
        assert str(screen.query_one("#onboard-error").render()) == ""
        assert screen.query_one("#onboard-packs").has_focus
        screen.query_one("#onboard-packs").highlighted = pack_ids.index("chef")
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(app.screen, OnboardingScreen)
        assert app.chat.user == "alice" and app.chat.pack.id == "chef"
        assert "alice" in str(app.query_one("#who").render())
        notes = [str(n.render()) for n in app.query(NoteMessage)]
        assert sum(app.chat.pack.disclaimer in n for n in notes) == 1
        starters = [s.question for s in app.query(StarterQuestion)]
        assert starters and starters[0] == app.chat.pack.starter_questions[0]
        await pilot.click(StarterQuestion)
        await pilot.pause()
        assert app.query_one("#prompt").value == starters[0]
        await ask(app, pilot, "What temperature should chicken reach?")
        assert app.chat.journal.turns()[0].pack == "chef"
    assert (home / "users" / "alice").is_dir()
    # the next start (no --user / --pack) goes straight to alice's chat
    again = make(onboarding=None)
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert not isinstance(again.screen, OnboardingScreen)
        assert again.chat.user == "alice" and again.chat.pack.id == "chef"


async def test_onboarding_skipped_when_user_and_pack_are_given_or_users_exist(home):
    from tui.screens import OnboardingScreen

    app = make(onboarding=None, user="bob", pack="general")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert not isinstance(app.screen, OnboardingScreen)
        assert app.chat.user == "bob"
    (home / "users").mkdir(exist_ok=True)
    other = make(onboarding=None)  # bob exists now: no onboarding, the user last used here
    async with other.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert not isinstance(other.screen, OnboardingScreen)
        assert other.chat.user == "bob"


async def test_onboarding_with_only_user_given_prefills_the_name():
    from tui.screens import OnboardingScreen

    app = make(onboarding=None, user="carol")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, OnboardingScreen)
        assert app.screen.query_one("#onboard-name").value == "carol"
        await pilot.click("#onboard-start")
        await pilot.pause()
        assert app.chat.user == "carol" and app.chat.pack.id == "general"


@pytest.mark.real
async def test_real_model_answers_capital(real_engine):
    from tui.app import make_app

    settings = Settings()
    settings.memory.enabled = False
    settings.generation.temperature = 0
    app = make_app(settings, Assistant(settings, engine=real_engine), onboarding=False)
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "What is the capital of France?")
        assert "Paris" in log_text(app)


async def test_compose_sends_a_multi_line_message():
    app = make(FakeEngine(["Noted both."]))
    async with app.run_test(size=SIZE) as pilot:
        app.query_one("#prompt").value = "First line"
        await edit_in_editor(app, pilot, "ctrl+t", "First line", "First line\nSecond line")
        await wait_idle(app, pilot)
        turn = app.chat.journal.turn(app.chat.last_turn_id)
        assert turn.message == "First line\nSecond line"
        assert "Noted both." in log_text(app)


async def test_typing_and_replies_pause_a_supernode_only_on_a_joined_device(home):
    """After `federate join`, a key press in the prompt makes the device's idle guard say it is in
    use, and the busy marker holds this process while a reply is generated; on a device that never
    joined the TUI writes nothing under federated/."""
    pytest.importorskip("flwr")
    import os

    from federated import config as config_mod
    from federated.idle import IdleGuard, busy_marker

    app = make(FakeEngine(["one two three four five six"], delay=0.15))
    async with app.run_test(size=SIZE) as pilot:
        await wait_idle(app, pilot)
        await pilot.press("h", "i")
        assert not (home / "federated").exists()
    config_mod.record_join("127.0.0.1:9092", "general", True, None, home)
    guard = IdleGuard(config_mod.FederatedConfig(idle_seconds=30.0, max_cpu_percent=100.0, require_mains=False))
    old = time.time() - 3600
    activity = home / "federated" / "activity"
    app = make(FakeEngine(["one two three four five six"], delay=0.15))
    async with app.run_test(size=SIZE) as pilot:
        await wait_idle(app, pilot)
        for f in [activity, *(home / "users").rglob("journal.sqlite3*")]:
            if f.exists():
                os.utime(f, (old, old))
        assert guard.why_not() == ""
        await pilot.press("h", "i")
        assert "used" in guard.why_not()
        app.query_one("#prompt").value = "hello there"
        await pilot.press("enter")
        seen = ""
        for _ in range(40):
            await pilot.pause(0.05)
            if busy_marker(home).exists():
                seen = busy_marker(home).read_text()
                break
        assert seen == str(os.getpid()) and "generated" in guard.why_not()
        await wait_idle(app, pilot)
        assert not busy_marker(home).exists()
