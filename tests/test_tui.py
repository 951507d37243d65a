"""The terminal UI, driven through Textual's pilot with a scripted fake engine."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("textual")

from assistant.core import Assistant  # noqa: E402
from assistant.engine import GenStats, Generation  # noqa: E402
from assistant.settings import Settings  # noqa: E402

SIZE = (100, 30)
pytestmark = pytest.mark.anyio


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
        app = make_app(settings, Assistant(settings))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert "loading" in str(app.query_one("#status").render())
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
        await pilot.press("ctrl+b")
        assert app.chat.journal.turn(turn_id).rating == -1
        await pilot.press("ctrl+r")
        await pilot.pause()
        from textual.widgets import TextArea

        from tui.screens import EditScreen

        assert isinstance(app.screen, EditScreen)
        area = app.screen.query_one(TextArea)
        assert area.text == "Two plus two is five."
        area.text = "Two plus two is four."
        await pilot.press("ctrl+s")
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
        for action, _key, desc in KEYS:
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
        assert store.get(keep.id).text == "I am allergic to peanuts and cashews."
        await pilot.press("escape")
        await pilot.pause()
        # an answer recalls memories and the sidebar shows them
        await ask(app, pilot, "What am I allergic to?")
        sidebar = str(app.query_one("#memories").render())
        assert "peanuts" in sidebar


def test_cli_registers_tui_subcommand():
    from assistant import cli

    cli._load_extra()
    parser = cli.build_parser()
    args = parser.parse_args(["tui", "--user", "carol", "--pack", "general"])
    assert args.cmd == "tui" and args.user == "carol" and args.pack == "general"


@pytest.mark.real
async def test_real_model_answers_capital(real_engine):
    from tui.app import make_app

    settings = Settings()
    settings.memory.enabled = False
    settings.generation.temperature = 0
    app = make_app(settings, Assistant(settings, engine=real_engine))
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "What is the capital of France?")
        assert "Paris" in log_text(app)
