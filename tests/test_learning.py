"""Learning on a tiny random Llama: dataset, trainer, adapter store, engine merge, gate, crash safety."""

import os
import signal
import subprocess
import sys
import time

import pytest

from assistant import batched
from assistant import settings as settings_mod
from assistant.adapters import AdapterStore
from assistant.engine import Engine
from assistant.errors import AdapterError
from assistant.generation import GenParams
from assistant.journal import Journal, Turn, new_turn_id
from personalization import dataset, gate, trainer
from tests.conftest import make_tiny_model

SYSTEM = "You are a helpful assistant."


def _turn(j, conv, message, reply, rating=None, correction=None):
    t = Turn(id=new_turn_id(), conversation_id=conv, pack="general", created=time.time(), message=message,
             prompt=[{"role": "system", "content": "old"}, {"role": "user", "content": message}], reply=reply)
    j.record(t)
    if rating:
        j.rate(t.id, rating)
    if correction:
        j.correct(t.id, correction)
    return j.turn(t.id)


def test_dataset_from_journal(home):
    j = Journal("ann")
    conv = j.new_conversation("general").id
    fixed = _turn(j, conv, "What is my cat called?", "Luna.", correction="Your cat is called Biscuit.")
    liked = _turn(j, conv, "Say hi", "Hi!", rating=1)
    _turn(j, conv, "Tell a joke", "No.", rating=-1)  # negative without correction: kept out
    examples = dataset.from_turns(j.turns(), SYSTEM)
    answers = {(e.source, e.answer) for e in examples}
    assert ("correction", "Your cat is called Biscuit.") in answers
    assert ("rating", "Hi!") in answers
    assert not any(e.answer == "No." for e in examples)
    assert all(e.messages[0]["content"] == SYSTEM for e in examples)
    assert {e.turn_id for e in examples} == {fixed.id, liked.id}
    j.delete_turns()
    assert dataset.from_turns(j.turns(), SYSTEM) == []  # deleted entries never train again


def test_facts_become_templated_questions_and_replay_is_mixed_in():
    class M:
        text, attribute = "I live in Lyon.", "residence"

    examples = dataset.from_facts([M()], SYSTEM)
    assert any(e.messages[-1]["content"] == "Where do I live?" and e.answer == "You live in Lyon." for e in examples)
    seed = [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(30)]
    data = dataset.build([], [M()], seed, SYSTEM)
    assert data.replay and all(e.source == "replay" for e in data.replay)
    assert len(data.train) == len(examples)  # every example trained
    # the gate asks other phrasings, plain and with the fact as a recalled memory
    trained = {e.messages[-1]["content"] for e in data.train}
    asked = [e.messages[-1]["content"] for e in data.heldout]
    assert asked and data.heldout_is_separate and not trained & set(asked)
    assert any("Lyon" in q for q in asked) and any("Lyon" not in q for q in asked)


def test_loss_is_only_on_answer_tokens(tiny_engine):
    ex = dataset.Example([{"role": "user", "content": "What is my cat called?"}], "Biscuit", "correction")
    ids, labels = trainer.encode(tiny_engine.tokenizer, tiny_engine.render, ex, 384)
    prompt_len = len(tiny_engine.render(ex.messages))
    assert labels[:prompt_len] == [-100] * prompt_len
    answer_ids = tiny_engine.tokenizer("Biscuit", add_special_tokens=False)["input_ids"]
    assert labels[prompt_len:prompt_len + len(answer_ids)] == answer_ids


def _settings(**kw):
    s = settings_mod.load(env={}).learning
    s.max_steps, s.learning_rate = kw.get("steps", 40), kw.get("lr", 5e-3)
    return s


@pytest.mark.slow
def test_training_lowers_the_answer_loss_and_resume_is_a_separate_path(tiny_tokenizer, tmp_path):
    engine = Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, context_tokens=256)
    ex = [dataset.Example([{"role": "user", "content": "cat?"}], "Paris", "correction")]
    model = trainer.create(make_tiny_model(tiny_tokenizer), _settings())
    before = gate.answer_loss(model, tiny_tokenizer, engine.render, ex)
    result = trainer.train(model, tiny_tokenizer, engine.render, ex, _settings())
    after = gate.answer_loss(model, tiny_tokenizer, engine.render, ex)
    assert result.steps == 40 and after < before - 0.5
    model.save_pretrained(tmp_path / "v")
    resumed = trainer.resume(make_tiny_model(tiny_tokenizer), tmp_path / "v")
    assert sum(p.numel() for p in resumed.parameters() if p.requires_grad) > 0
    assert abs(gate.answer_loss(resumed, tiny_tokenizer, engine.render, ex) - after) < 1e-4


def test_batched_gate_scores_equal_one_row_at_a_time(tiny_tokenizer):
    """The gate scores padded batches; a user's numbers must not depend on what shares a batch."""
    import torch

    engine = Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, context_tokens=256)
    model = engine.model.float()
    asks = ["cat?", "What is the capital of France, and why is it famous?", "hi", "Name three herbs for soup."]
    system = {"role": "system", "content": "You are a careful cooking assistant. Answer briefly and clearly, "
                                           "in one or two sentences, and say so when you do not know."}
    exs = [dataset.Example([system, {"role": "user", "content": q}], f"Answer number {i} " * (i + 1), "eval",
                           expect_any=["answer"]) for i, q in enumerate(asks)]
    assert batched.shared_prefix([engine.render(e.messages) for e in exs], 10_000) > 16  # the cached-prefix path
    total, count = 0.0, 0
    with torch.inference_mode():
        for ex in exs:  # the plain way: one unpadded row, the model's own loss
            ids, labels = trainer.encode(tiny_tokenizer, engine.render, ex, 384)
            n = sum(1 for x in labels[1:] if x != -100)
            total += float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss) * n
            count += n
    assert gate.answer_loss(model, tiny_tokenizer, engine.render, exs) == pytest.approx(total / count, rel=1e-4)
    texts = ["The quick brown fox jumps over the lazy dog.", "Short one.", "A much longer sentence " * 6]
    one_by_one = [gate.perplexity(model, tiny_tokenizer, [t]) for t in texts]
    assert all(p > 1 for p in one_by_one)
    all_at_once = gate.perplexity(model, tiny_tokenizer, texts)
    assert min(one_by_one) - 1e-3 <= all_at_once <= max(one_by_one) + 1e-3
    # greedy answers: a batch of rows of different lengths gives each row its own answer
    alone = [gate.greedy_answers(model, tiny_tokenizer, engine.render, [ex], engine.eos_ids, 8)[0] for ex in exs]
    together = gate.greedy_answers(model, tiny_tokenizer, engine.render, exs, engine.eos_ids, 8)
    assert together == alone


@pytest.mark.slow
def test_merged_adapter_changes_output_and_removing_it_restores_the_base_exactly(tiny_tokenizer, tmp_path, home):
    import torch

    engine = Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, context_tokens=256)
    ids = engine.render([{"role": "user", "content": "cat?"}])
    with torch.inference_mode():
        base_logits = engine.model(input_ids=torch.tensor([ids])).logits.clone()
    model = trainer.create(make_tiny_model(tiny_tokenizer), _settings())
    trainer.train(model, tiny_tokenizer, engine.render,
                  [dataset.Example([{"role": "user", "content": "cat?"}], "Paris Paris", "correction")], _settings())
    store = AdapterStore("ann", "general")
    staged = store.staging_dir()
    model.save_pretrained(str(staged))
    version = store.publish(staged, {"gate": {}})
    engine.set_adapter("ann/general/" + version, store.deltas(version, engine.model))
    with torch.inference_mode():
        adapted = engine.model(input_ids=torch.tensor([ids])).logits
    assert not torch.allclose(adapted, base_logits)
    engine.set_adapter(None, None)
    with torch.inference_mode():
        restored = engine.model(input_ids=torch.tensor([ids])).logits
    assert torch.equal(restored, base_logits)


def test_adapter_merges_into_int8_decode_weights_and_unmerges_exactly(tiny_tokenizer, home):
    import torch

    from assistant import int8

    if not int8.available():
        pytest.skip("this torch has no int8 weight matmul")
    engine = Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, context_tokens=256, decode_dtype="int8")
    layer = engine._int8_layers["model.layers.0.self_attn.q_proj.weight"]
    base_q = layer.qweight.clone()
    name = "model.layers.0.self_attn.q_proj.weight"
    delta = torch.full_like(dict(engine.model.named_parameters())[name], 0.5)
    engine.set_adapter("x/general/v0001", {name: delta})
    assert not torch.equal(layer.qweight, base_q)  # decoding sees the adapter too
    ids = engine.render([{"role": "user", "content": "cat?"}])
    adapted = engine.stream(ids, GenParams(temperature=0, max_new_tokens=4))
    adapted.collect()
    assert adapted.stats.completion_tokens >= 1  # int8 decoding runs with the merged adapter
    engine.set_adapter(None, None)
    assert torch.equal(layer.qweight, base_q)
    with pytest.raises(Exception, match="does not fit"):
        engine.set_adapter("x/general/v0002", {"model.nope.weight": delta})


def test_adapter_store_versions_rollback_prune(home, tmp_path, tiny_tokenizer):
    store = AdapterStore("ann", "general")
    model = trainer.create(make_tiny_model(tiny_tokenizer), _settings())
    for loss in (3.0, 1.0, 2.0, 2.5):
        staged = store.staging_dir()
        model.save_pretrained(str(staged))
        store.publish(staged, {"gate": {"candidate": {"user_loss": loss}}})
    assert store.versions() == ["v0001", "v0002", "v0003", "v0004"] and store.current() == "v0004"
    assert store.rollback() == "v0003" and store.current() == "v0003"
    assert store.rollback("v0001") == "v0001"
    assert store.rollback("none") is None and store.current() is None
    store.set_current("v0004")
    assert store.prune(1) == ["v0001", "v0003"]  # keeps the last one, the best (v0002) and the live one
    with pytest.raises(AdapterError):
        store.set_current("v0009")


def test_a_crash_mid_prune_leaves_no_half_deleted_version(home, tiny_tokenizer, monkeypatch):
    """bench/kills.py found this: SIGKILL while prune removed v0001 left a v0001 folder without its
    weights (meta.json still there), listed as a version that a rollback could name."""
    import shutil

    from assistant import adapters

    store = AdapterStore("ann", "general")
    model = trainer.create(make_tiny_model(tiny_tokenizer), _settings())
    for _ in range(3):
        staged = store.staging_dir()
        model.save_pretrained(str(staged))
        store.publish(staged, {"gate": {}})
    real_rmtree = shutil.rmtree

    def killed_midway(path, ignore_errors=False):
        if not adapters.Path(path).exists():
            return
        (adapters.Path(path) / adapters.WEIGHTS).unlink()  # the first file goes, then the process dies
        raise SystemExit("killed")

    monkeypatch.setattr(adapters.shutil, "rmtree", killed_midway)
    with pytest.raises(SystemExit):
        store.prune(1)
    monkeypatch.setattr(adapters.shutil, "rmtree", real_rmtree)
    for v in store.versions():
        assert (store.path(v) / adapters.WEIGHTS).is_file() and (store.path(v) / adapters.META).is_file(), v
    assert store.versions() == ["v0002", "v0003"] and store.current() == "v0003"
    store.clean_staging()  # the next round's start removes what the crash left
    assert sorted(p.name for p in store.root.iterdir() if p.name.startswith(".")) == []


def test_gate_promotes_only_real_improvements_without_regressions():
    s = settings_mod.load(env={}).learning
    live = gate.Scores(user_loss=2.0, user_match=0.0, eval_loss=2.0, guard_ppl=20.0)
    good = gate.Scores(user_loss=0.5, user_match=1.0, eval_loss=2.05, guard_ppl=20.5)
    assert gate.decide(live, good, s, True).promote
    assert not gate.decide(live, gate.Scores(2.0, 0.0, 2.0, 20.0), s, True).promote
    poisoned = gate.Scores(user_loss=0.1, user_match=1.0, eval_loss=3.0, guard_ppl=20.0)
    d = gate.decide(live, poisoned, s, True)
    assert not d.promote and "eval" in d.reason
    wrong_answers = gate.Scores(user_loss=0.1, user_match=1.0, eval_loss=1.9, guard_ppl=20.0, eval_pass=0.0)
    d2 = gate.decide(gate.Scores(2.0, 0.0, 2.0, 20.0, eval_pass=0.3), wrong_answers, s, True)
    assert not d2.promote and "pass rate" in d2.reason  # poisoned answers caught even when the loss looks fine
    forgetful = gate.Scores(user_loss=0.1, user_match=1.0, eval_loss=2.0, guard_ppl=30.0)
    assert not gate.decide(live, forgetful, s, True).promote
    assert "REJECTED" in d.table()
    # When the held-out loss already shows the gain, the answer match is not measured (NaN):
    # the decision stands on the loss, the table shows a dash and the JSON a null.
    nan = float("nan")
    live_nm = gate.Scores(user_loss=2.0, user_match=nan, eval_loss=2.0, guard_ppl=20.0)
    cand_nm = gate.Scores(user_loss=0.5, user_match=nan, eval_loss=2.0, guard_ppl=20.0)
    assert gate.loss_improved(live_nm, cand_nm)
    d3 = gate.decide(live_nm, cand_nm, s, True)
    assert d3.promote and d3.to_json()["candidate"]["user_match"] is None
    assert "–" in d3.table() and "nan" not in d3.table()
    assert not gate.loss_improved(live_nm, gate.Scores(1.99, nan, 2.0, 20.0))  # under the 2% minimum gain



def test_a_pass_rate_drop_on_the_first_probes_alone_gets_a_second_look_on_more_of_them():
    from dataclasses import replace

    s = settings_mod.load(env={}).learning
    live = gate.Scores(user_loss=2.0, user_match=0.0, eval_loss=2.0, guard_ppl=20.0, eval_pass=0.25)
    cand = gate.Scores(user_loss=0.1, user_match=1.0, eval_loss=1.7, guard_ppl=19.0, eval_pass=0.125)
    assert not gate.decide(live, cand, s, True).promote  # 4 -> 2 of 16 probes
    assert gate.second_look(live, cand, s, True)
    # other checks failing too: no second look, the round is rejected as it stands
    assert not gate.second_look(live, replace(cand, guard_ppl=30.0), s, True)
    assert not gate.second_look(live, replace(cand, user_loss=2.0, user_match=0.0), s, True)
    # the wider measurement decides, either way, and says so
    kept = gate.decide(replace(live, eval_pass_all=0.30), replace(cand, eval_pass_all=0.29), s, True)
    assert kept.promote and "second look" in kept.reason and "30% -> 29%" in kept.reason
    assert "second look: all the pack's probes" in kept.table()
    assert not gate.second_look(replace(live, eval_pass_all=0.30), replace(cand, eval_pass_all=0.10), s, True)
    lost = gate.decide(replace(live, eval_pass_all=0.30), replace(cand, eval_pass_all=0.10), s, True)
    assert not lost.promote and "on all the pack's probes 30% -> 10%" in lost.reason
    assert lost.to_json()["candidate"]["eval_pass_all"] == 0.10
    assert "second look" not in gate.decide(live, replace(cand, eval_pass=0.25), s, True).table()

@pytest.mark.parametrize("moment", ["training", "saving"])
@pytest.mark.slow
def test_a_real_kill_leaves_the_previous_version_live(home, tmp_path, tiny_tokenizer, moment):
    """Kill -9 the `assistant learn` process mid-training or mid-save: v0001 stays live and loadable."""
    folder = tmp_path / "tiny"
    make_tiny_model(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    (home / "config.toml").write_text(
        f'[model]\nname = "{folder}"\nprefill_dtype = "float32"\ndecode_dtype = "float32"\n'
        f'[memory]\nenabled = false\n[learning]\nmax_steps = {100000 if moment == "training" else 3}\n'
        "learning_rate = 0.005\neval_tolerance = 100.0\nguard_tolerance = 100.0\n"
    )
    j = Journal("ann")
    conv = j.new_conversation("general").id
    for i in range(5):
        _turn(j, conv, f"question {i}?", "bad", correction=f"Paris {i}")
    j.close()
    store = AdapterStore("ann", "general")
    model = trainer.create(make_tiny_model(tiny_tokenizer), _settings())
    staged = store.staging_dir()
    model.save_pretrained(str(staged))
    store.publish(staged, {"gate": {}})
    marker = tmp_path / "marker"
    env = dict(os.environ, ASSISTANT_HOME=str(home))
    if moment == "saving":
        env.update(PA_TEST_PAUSE_BEFORE_PUBLISH="60", PA_TEST_PAUSE_BEFORE_PUBLISH_MARKER=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "cli", "learn", "--user", "ann", "--pack", "general"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 480
    if moment == "saving":
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "no marker"
        assert any(p.name.startswith(".staging-") for p in store.root.iterdir())  # the candidate was being saved
    else:
        seen = ""
        while "step" not in seen and time.time() < deadline and proc.poll() is None:
            seen += proc.stderr.read(64)
        assert "step" in seen, f"the round never reached training: {seen[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert store.current() == "v0001"
    assert store.versions() == ["v0001"]
    engine = Engine.load(settings_mod.load(env={}))
    engine.set_adapter("v0001", store.deltas("v0001", engine.model))
    reply = engine.stream(engine.render([{"role": "user", "content": "hi"}]), GenParams(temperature=0, max_new_tokens=3))
    reply.collect()
    assert reply.stats.completion_tokens >= 1  # the surviving version loads and generates
    store.clean_staging()  # the next round's start does this too
    assert not any(p.name.startswith(".staging-") for p in store.root.iterdir())


@pytest.mark.slow
def test_background_rounds_wait_for_idle_and_serve_every_user(monkeypatch):
    """Activity from a second user postpones rounds but never drops the first user's."""
    from types import SimpleNamespace

    from personalization.learner import Learner

    learning = settings_mod.load(env={}).learning
    learning.enabled, learning.idle_seconds = True, 0.5
    learner = Learner(SimpleNamespace(settings=SimpleNamespace(learning=learning), listeners=[]))
    ran = []
    monkeypatch.setattr(learner, "pending", lambda user, pack: 0 if user == "cy" else 10)
    monkeypatch.setattr(learner, "run_round", lambda user, pack, **kw: ran.append((user, pack)))
    learner.notify("ann", "chef")
    time.sleep(0.2)
    learner.notify("ben", "doctor")
    learner.notify("cy", "chef")  # nothing pending for cy: no round
    time.sleep(0.2)
    assert ran == []  # not idle long enough yet
    deadline = time.monotonic() + 10
    while len(ran) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert sorted(ran) == [("ann", "chef"), ("ben", "doctor")]
    learner.notify("ann", "chef")
    learner.stop()
    time.sleep(0.8)
    assert len(ran) == 2  # stopped: the pending timer does nothing


@pytest.mark.slow
def test_pack_training_uses_its_own_budget_and_leaves_the_shared_settings_alone(tiny_engine, home):
    """`assistant pack train` rounds run with their own step budget; the learner's settings, read by
    the background thread meanwhile, keep theirs (they were rewritten and put back)."""
    from assistant.core import Assistant
    from personalization.learner import Learner

    settings = settings_mod.load(env={})
    settings.memory.enabled = False
    assistant = Assistant(settings, engine=tiny_engine, learner=Learner)
    shared = settings.learning
    before = (shared.max_steps, shared.time_budget_s)
    seen = []

    def progress(p):
        seen.append((shared.max_steps, shared.time_budget_s, p.total_steps))

    result = assistant.learner.train_pack("general", steps=3, on_progress=progress)
    assert result.steps <= 3 and seen and all(s[2] == 3 for s in seen if s[2])
    assert all((s[0], s[1]) == before for s in seen)  # never changed while training
    assert (shared.max_steps, shared.time_budget_s) == before


def test_training_pauses_inside_a_step_not_only_between_steps(tiny_tokenizer):
    """A step can take seconds on a slow CPU: a pause asked for while a step's forward runs holds
    the next decoder layer until it is lifted, and training then finishes its steps."""
    import threading

    engine = Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, context_tokens=256)
    model = trainer.create(make_tiny_model(tiny_tokenizer), _settings())
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    assert len(layers) >= 2
    paused = threading.Event()
    calls: list[tuple[float, int]] = []  # (when, layer index) of every decoder layer forward

    def slow_first_layer(_m, _a, _o):  # the pause is asked for while layer 0 of step 2 runs
        calls.append((time.monotonic(), 0))
        if len([c for c in calls if c[1] == 0]) == 2:
            time.sleep(0.3)
            paused.set()
            threading.Timer(1.0, paused.clear).start()
            time.sleep(0.2)

    layers[0].register_forward_hook(slow_first_layer)
    layers[1].register_forward_hook(lambda _m, _a, _o: calls.append((time.monotonic(), 1)))
    ex = [dataset.Example([{"role": "user", "content": "cat?"}], "Paris", "correction")]
    result = trainer.train(model, tiny_tokenizer, engine.render, ex, _settings(steps=3),
                           should_pause=paused.is_set)
    second_step_layer0 = [t for t, i in calls if i == 0][1]
    layer1_after = [t for t, i in calls if i == 1 and t > second_step_layer0][0]
    assert layer1_after - second_step_layer0 >= 1.0, "layer 1 ran while the pause was asked for"
    assert result.steps == 3 and not paused.is_set()


def test_the_base_models_gate_numbers_are_kept_on_disk_for_the_next_process(home):
    """No user's data is in them, and a first round's gate spends a third of its time on them:
    a new process (a new BaseNumbers) reads them back; a damaged file is measured again."""
    key = ("smollm2", "chef", "abc123")
    gate.BaseNumbers()[key] = (2.09, 17.4, 0.125)
    again = gate.BaseNumbers()
    assert key in again and again[key] == (2.09, 17.4, 0.125)
    assert ("smollm2", "doctor", "abc123") not in again
    (home / "cache" / "gate-base.json").write_text("{not json")
    assert key not in gate.BaseNumbers()
    with pytest.raises(KeyError):
        gate.BaseNumbers()[key]
