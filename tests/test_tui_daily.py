"""The TUI in daily use: continue a cut answer, prompt commands, the notes and memories panel,
the gate's thresholds, first-start progress, screenshots, the remembered pack, key clashes."""

from __future__ import annotations

import pytest

pytest.importorskip("textual")

from assistant.generation import Generation, GenStats  # noqa: E402
from tests.test_tui import GATE, SIZE, FakeEngine, ask, log_text, make, panel_text, wait_idle  # noqa: E402

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class CutEngine(FakeEngine):
    """Stops at ``limit`` words with finish_reason "length", as the engine does at max_new_tokens."""

    def __init__(self, answers, limit=4):
        super().__init__(answers)
        self.limit = limit
        self.prompts = []

    def stream(self, ids, params, session=None, cancel=None):
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        stats = GenStats(prompt_tokens=len(ids))
        words = answer.split(" ")

        def run():
            for i, word in enumerate(words[: self.limit]):
                stats.completion_tokens += 1
                yield word if i == 0 else " " + word
            stats.finish_reason = "length" if len(words) > self.limit else "stop"

        return Generation(run(), stats)


@pytest.mark.slow
async def test_a_cut_answer_is_marked_and_continue_continues_it():
    from tui.app import CONTINUE_PROMPT
    from tui.widgets import AssistantMessage

    app = make(CutEngine(["one two three four five six", "five six."]))
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "count")
        first = list(app.query(AssistantMessage))[-1]
        meta = str(first.meta.render())
        assert "stopped at 4 tokens" in meta and "f6" in meta and "/continue" in meta
        await pilot.press("f6")
        await wait_idle(app, pilot)
        answers = list(app.query(AssistantMessage))
        assert answers[-1].text == "five six."
        assert "stopped at" not in str(answers[-1].meta.render())
        turn = app.chat.journal.turn(app.chat.last_turn_id)
        assert turn.message == CONTINUE_PROMPT and "(continue)" in log_text(app)
        # a complete answer: continue says so and sends nothing
        await pilot.press("f6")
        await pilot.pause()
        assert any("complete" in n.message for n in app._notifications)
        assert len(app.chat.journal.turns()) == 2


@pytest.mark.slow
async def test_prompt_commands_rate_correct_and_continue():
    app = make(CutEngine(["Two plus two is five."], limit=10))
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "What is 2+2?")
        turn_id = app.chat.last_turn_id
        await ask(app, pilot, "/good")
        assert app.chat.journal.turn(turn_id).rating == 1
        # learning is off in these tests: it says so instead of promising to learn
        assert any("automatic learning is off" in n.message for n in app._notifications)
        await ask(app, pilot, "/bad")
        assert app.chat.journal.turn(turn_id).rating == -1
        await ask(app, pilot, "/correct Two plus two is four.")
        assert app.chat.journal.turn(turn_id).correction == "Two plus two is four."
        assert len(app.chat.journal.turns()) == 1  # commands are not sent to the model
        assert app.query_one("#prompt").value == ""


async def test_feedback_with_learning_on_says_when_the_round_comes():
    app = make(FakeEngine(["Paris."]), user="ann", pack="general")
    app.settings.learning.enabled = True
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "Capital of France?")
        await pilot.press("ctrl+g")
        await pilot.pause()
        msg = next(n.message for n in app._notifications if n.message.startswith("rated +1"))
        assert "1/4 new examples" in msg and "starts by itself" in msg
    app.assistant.learner.stop()


async def test_memories_panel_lists_notes_with_citation_and_memories_with_text():
    from assistant.prompt import Recalled
    from tui.widgets import AssistantMessage

    app = make(FakeEngine(["Keep it in the fridge."]), user="ann")
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "How long does rice keep?")
        answer = list(app.query(AssistantMessage))[-1]
        answer.memories = [Recalled("m1", "k1", "knowledge", "Cooked rice keeps 3-4 days in the fridge.",
                                    "fridge-storage-times.md > Cooked food"),
                           Recalled("m2", "x1", "fact", "I am allergic to peanuts.")]
        app._select(answer)
        panel = str(app.query_one("#memories").render())
        assert "fridge-storage-times.md > Cooked food" in panel and "Cooked rice keeps" in panel
        assert "I am allergic to peanuts." in panel and "About you" in panel and "Notes" in panel
        assert "[m1]" not in panel  # internal prompt ids stay internal


@pytest.mark.slow
async def test_learning_panel_names_the_thresholds_of_a_rejection():
    import time

    from assistant.adapters import AdapterStore
    from personalization.learner import _write_state

    gate = dict(GATE, live=dict(GATE["live"], user_loss=1.25), candidate=dict(GATE["candidate"], user_loss=1.23))
    app = make(user="ann", pack="general")
    _write_state(AdapterStore("ann", "general"), {"last_result": {
        "at": time.time(), "promoted": False, "version": None, "live": None,
        "reason": "no improvement on the user's held-out examples", "gate": gate}})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await pilot.pause()
        verdict = panel_text(app, "#learn-verdict")
        assert "REJECTED" in verdict and "no improvement" in verdict
        assert "1.250 -> 1.230" in verdict and "+1.6% lower; needs at least 2% lower" in verdict
        assert "may rise at most 5%" in verdict  # the guard set's tolerance


@pytest.mark.slow
async def test_first_start_shows_steps_and_estimates(monkeypatch):
    import threading

    from assistant import engine as engine_mod
    from assistant.core import Assistant
    from assistant.settings import Settings
    from tui import loading
    from tui.app import make_app

    gate = threading.Event()
    settings = Settings()
    settings.memory.enabled = False
    fake = FakeEngine(["Ready now."])

    def slow_load(settings, progress=None):
        progress("converting SmolLM2.gguf to a safetensors model in /x (once)")
        gate.wait(10)
        progress("loading smollm2")
        progress("measuring prefill and decode speed per dtype on this machine (once)")
        return fake

    monkeypatch.setattr(engine_mod.Engine, "load", staticmethod(slow_load))
    monkeypatch.setattr(loading, "busy_factor", lambda: 1.0)
    app = make_app(settings, Assistant(settings), onboarding=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            for _ in range(40):
                await pilot.pause(0.1)
                if "step 1/3" in str(app.query_one("#status").render()):
                    break
            status = str(app.query_one("#status").render())
            assert "step 1/3: converting the model" in status and "left" in status
            assert any("First start" in str(n.render()) and "about" in str(n.render())
                       for n in app.query("NoteMessage"))
            gate.set()
            await wait_idle(app, pilot)
            assert "ready" in str(app.query_one("#status").render())
            assert any("first start took" in n.message for n in app._notifications)
    finally:
        gate.set()


def test_load_plan_knows_what_the_first_start_does(home):
    from assistant.settings import Settings
    from tui import loading

    steps = loading.plan(Settings())
    keys = [s.key for s in steps]
    assert keys == ["convert", "load", "calibrate", "embedder"]  # an empty home: everything happens
    convert = steps[0]
    assert 10 < convert.estimate_s / loading.busy_factor() < 120  # ~30 s for the 98 MB GGUF on 2 cores
    assert "about" in loading.intro(steps)


async def test_screenshot_key_saves_under_the_data_dir(home):
    app = make(FakeEngine(["Shot."]), user="alice")
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "hi")
        await pilot.press("f12")
        await pilot.pause()
        saved = [n.message for n in app._notifications if n.message.startswith("saved ")]
    assert saved, [n.message for n in app._notifications]
    path = saved[0][len("saved "):]
    assert path.startswith(str(home / "screenshots")) and "Shot." in open(path, encoding="utf-8").read()


@pytest.mark.slow
async def test_restart_remembers_the_last_pack(home):
    app = make(user="ann", pack="general", onboarding=None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        target = next(p for p in sorted(app.assistant.catalog.packs) if p != "general")
        app._switch(pack_id=target)
        await pilot.pause()
    again = make(onboarding=None)
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert again.chat.user == "ann" and again.chat.pack.id == target


def test_keys_avoid_multiplexers_and_clashes_are_warned():
    from tui.keys import KEYS, clashes, multiplexer_keys

    defaults = {key for _a, key, _d in KEYS}
    assert not defaults & {"ctrl+b", "ctrl+a", "ctrl+s", "ctrl+z", "ctrl+c", "ctrl+w", "ctrl+u", "ctrl+x"}
    taken = multiplexer_keys({"TMUX": "/tmp/tmux-0/default,1,0", "STY": "123.pts", "PATH": "/nonexistent"})
    assert taken.get("ctrl+a") == "GNU screen's command key" and "tmux" in taken.get("ctrl+b", "")
    warnings = clashes([("rate_down", "ctrl+b", "bad answer")], taken)
    assert warnings and "rate_down" in warnings[0] and "[tui.keys]" in warnings[0]
    assert clashes(KEYS, taken) == []
    assert multiplexer_keys({}) == {}


@pytest.mark.slow
async def test_ctrl_c_stops_a_streaming_answer():
    long = " ".join(f"word{i}" for i in range(400))
    app = make(FakeEngine([long], delay=0.01))
    async with app.run_test(size=SIZE) as pilot:
        app.query_one("#prompt").value = "tell me a long story"
        await pilot.press("enter")
        await pilot.pause(0.3)
        await pilot.press("ctrl+c")
        await wait_idle(app, pilot)
        assert app.chat.journal.turn(app.chat.last_turn_id).finish_reason == "cancelled"
        await pilot.press("ctrl+c")  # nothing streaming: Textual's hint, the app keeps running
        await pilot.pause()
        assert app.is_running


@pytest.mark.real
async def test_real_model_cut_answer_continue_and_empty_correction_editor(real_engine):
    from textual.widgets import TextArea

    from assistant.core import Assistant
    from assistant.settings import Settings
    from tui.app import make_app
    from tui.screens import EditScreen
    from tui.widgets import AssistantMessage

    settings = Settings()
    settings.memory.enabled = False
    settings.learning.enabled = False
    settings.generation.temperature = 0
    settings.generation.max_new_tokens = 16
    app = make_app(settings, Assistant(settings, engine=real_engine), onboarding=False)
    async with app.run_test(size=SIZE) as pilot:
        await ask(app, pilot, "Explain step by step how to bake bread at home.")
        first = list(app.query(AssistantMessage))[-1]
        assert first.text.strip() and "stopped at 16 tokens" in str(first.meta.render())
        await pilot.press("f6")
        await wait_idle(app, pilot)
        second = list(app.query(AssistantMessage))[-1]
        assert second is not first and second.text.strip()
        assert second.text.strip()[:30] != first.text.strip()[:30]  # it went on, not over again
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, EditScreen)
        assert app.screen.query_one(TextArea).text == ""
        assert str(app.screen.query_one("#edit-shown-text").render()) == second.text
