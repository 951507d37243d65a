"""Preference pairs, style pairs, per-fact questions, the DPO loss and the gate's reasons (tiny models)."""

import time

import pytest

from assistant import settings as settings_mod
from assistant.engine import Engine
from assistant.journal import Journal, Turn, new_turn_id
from personalization import dataset, gate, objectives, phrasings, style, trainer
from tests.conftest import make_tiny_model

SYSTEM = "You are a helpful assistant."


def _turn(j, conv, message, reply, rating=None, correction=None, sent=None):
    t = Turn(id=new_turn_id(), conversation_id=conv, pack="general", created=time.time(), message=message,
             prompt=[{"role": "system", "content": "old"}, {"role": "user", "content": sent or message}], reply=reply)
    j.record(t)
    if rating:
        j.rate(t.id, rating)
    if correction:
        j.correct(t.id, correction)
    return j.turn(t.id)


def _answer_logprob(model, ids, labels):
    """One sequence run on its own: the oracle ``objectives.answer_rows`` batches."""
    import torch

    logits = model(input_ids=torch.tensor([list(ids)])).logits[0, :-1].float()
    target = torch.tensor(list(labels)[1:])
    keep = target != -100
    return objectives.row_logprob(logits[keep], target[keep])


class Mem:
    def __init__(self, text, attribute="", id="mem-1", kind="fact"):
        self.text, self.attribute, self.id, self.kind = text, attribute, id, kind


def test_corrections_and_ratings_become_pairs_with_their_source_ids(home):
    j = Journal("ann")
    conv = j.new_conversation("general").id
    sent = "What I know about you:\n[m1] I have a cat.\n\nMy message: What is my cat called?"
    fixed = _turn(j, conv, "What is my cat called?", "Luna.", correction="Your cat is called Biscuit.", sent=sent)
    good = _turn(j, conv, "How long do I boil an egg?", "Nine minutes for hard-boiled.", rating=1)
    bad = _turn(j, conv, "How long should I boil an egg?", "Forever.", rating=-1)
    lone = _turn(j, conv, "Tell me a joke", "No.", rating=-1)  # nothing similar liked: no pair
    pairs = dataset.pairs_from_turns(j.turns(), SYSTEM)
    by_turn = {}
    for p in pairs:
        by_turn.setdefault(p.turn_id, []).append(p)
    assert [(p.answer, p.rejected) for p in by_turn[fixed.id]] == [("Your cat is called Biscuit.", "Luna.")] * 2
    assert {p.messages[-1]["content"] for p in by_turn[fixed.id]} == {sent, "What is my cat called?"}
    assert [(p.answer, p.rejected) for p in by_turn[bad.id]] == [("Nine minutes for hard-boiled.", "Forever.")]
    assert lone.id not in by_turn and good.id not in by_turn
    data = dataset.build(j.turns(), [Mem("I live in Lyon.", "residence", id="mem-9")], [], SYSTEM)
    assert data.sources() == {"turn_ids": sorted({fixed.id, good.id, bad.id}), "memory_ids": ["mem-9"]}
    # the gate's probes reword the corrected question, plain and with the memories as sent
    probes = [p for p in data.heldout if p.turn_id == fixed.id]
    assert {p.source for p in probes} == {"probe:correction", "probe:correction+memory"}
    assert all(p.messages[-1]["content"] not in (sent, "What is my cat called?") for p in probes)
    assert all(p.answer == "Your cat is called Biscuit." for p in probes)


def test_each_fact_gets_questions_of_its_own():
    facts = [Mem("I live in Lyon.", "residence", "a"), Mem("My cat's name is Biscuit.", "my:cat's name", "b"),
             Mem("I am allergic to peanuts.", "allergy:peanut", "c"), Mem("I am allergic to shellfish.", "allergy:shellfish", "d"),
             Mem("I love spicy Thai food.", "", "e")]
    examples = dataset.from_facts(facts, SYSTEM)
    answers = {}
    for ex in examples:
        answers.setdefault(ex.messages[-1]["content"], set()).add(ex.answer)
    assert all(len(a) == 1 for a in answers.values())  # one question, one answer
    assert "What do you remember about me?" not in answers
    assert "What am I allergic to?" not in answers  # two allergies: that question is ambiguous, dropped
    assert answers["Am I allergic to peanut?"] == {"You are allergic to peanuts."}
    assert answers["Where do I live?"] == {"You live in Lyon."}
    assert any("spicy Thai food" in q for q in answers)
    assert {e.memory_id for e in examples} == {"a", "b", "c", "d", "e"}
    train, held = phrasings.fact_questions("My cat's name is Biscuit.", "my:cat's name")
    assert train and held and not set(train) & set(held)


@pytest.mark.parametrize("said,reply,want", [
    ("Keep your answers under three sentences.", "One. Two. Three. Four.", "One. Two."),
    ("Please answer in bullet points.", "Use a thermometer. Rest the meat.", "- Use a thermometer\n- Rest the meat"),
    ("Always give metric units.", "Cook it to 165 °F and use 2 lb of flour.", "Cook it to 74 °C and use 0.9 kg of flour."),
    ("Always give metric units.", "Poultry needs 74 °C (165 °F).", "Poultry needs 74 °C."),
])
def test_style_rules_rewrite_replies(said, reply, want):
    rules = style.rules(said)
    assert len(rules) == 1
    assert rules[0].apply(reply) == want
    assert style.follows(want, rules[0])
    assert style.rules("I live in Lyon.") == []


def test_a_stated_style_becomes_pairs_from_journal_replies(home):
    j = Journal("ann")
    conv = j.new_conversation("general").id
    long = _turn(j, conv, "How do I make rice?", "Rinse it. Add water. Simmer for 12 minutes. Rest it for 5.")
    _turn(j, conv, "Hi", "Hello.")  # already short: no pair
    pairs = dataset.style_pairs(j.turns(), [Mem("Keep your answers under three sentences.", "answer_length", "s1",
                                                "preference")], SYSTEM)
    assert [(p.turn_id, p.memory_id, p.answer, p.rejected) for p in pairs] == [
        (long.id, "s1", "Rinse it. Add water.", "Rinse it. Add water. Simmer for 12 minutes. Rest it for 5.")]


def test_a_stated_style_becomes_pairs_on_the_packs_own_questions_too(home):
    """A style rule holds for any question: the pack's seed questions give pairs as well, a reply
    cut to the length asked for over one that runs on; half carry the preference as a memory."""
    seed = [{"prompt": f"Question {i}?", "answer": f"Answer {i} first. Answer {i} second."} for i in range(6)]
    short = Mem("Keep your answers under three sentences.", "answer_length", "s1", "preference")
    pairs = dataset.style_pairs([], [short], SYSTEM, seed=seed, per_rule=4)
    assert len(pairs) == 4 and all(p.source == "style" and p.memory_id == "s1" for p in pairs)
    for p in pairs:
        assert len(style.sentences(p.answer)) == 2 and len(style.sentences(p.rejected)) == 6
        assert p.rejected.startswith(p.answer)
    assert sum("under three sentences" in p.messages[-1]["content"] for p in pairs) == 2
    bullets = dataset.style_pairs([], [Mem("Answer in bullet points.", "", "s2", "preference")], SYSTEM, seed=seed, per_rule=2)
    assert [p.answer.splitlines()[0] for p in bullets][0].startswith("- Answer")
    assert dataset.style_pairs([], [Mem("I live in Lyon.", "residence", "f1", "fact")], SYSTEM, seed=seed) == []


@pytest.mark.slow
def test_dpo_loss_and_training_on_pairs_prefer_the_chosen_answer(tiny_tokenizer):
    import torch

    # the loss itself: log 2 at no margin, lower when the policy moved toward the chosen answer
    zero = objectives.dpo_loss(torch.tensor(-5.0), torch.tensor(-5.0), -5.0, -5.0, beta=0.1)
    assert float(zero) == pytest.approx(0.6931, abs=1e-4)
    better = objectives.dpo_loss(torch.tensor(-3.0), torch.tensor(-7.0), -5.0, -5.0, beta=0.1)
    worse = objectives.dpo_loss(torch.tensor(-7.0), torch.tensor(-3.0), -5.0, -5.0, beta=0.1)
    assert float(better) < float(zero) < float(worse)
    engine = Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, context_tokens=256)
    pair = dataset.Example([{"role": "user", "content": "cat?"}], "Biscuit Biscuit", "correction", rejected="Luna Luna")
    s = settings_mod.load(env={}).learning
    s.max_steps, s.learning_rate, s.target_loss = 30, 5e-3, 0.0
    model = trainer.create(make_tiny_model(tiny_tokenizer), s)

    def margin():
        c = trainer.encode(tiny_tokenizer, engine.render, pair, 384)
        r = trainer.encode(tiny_tokenizer, engine.render, dataset.Example(pair.messages, pair.rejected, "x"), 384)
        with torch.no_grad():
            return float(_answer_logprob(model, *c)[0] - _answer_logprob(model, *r)[0])

    before = margin()
    result = trainer.train(model, tiny_tokenizer, engine.render, [pair], s)
    assert result.steps == 30
    assert margin() > before + 1.0


def test_replay_distillation_is_zero_at_the_start_and_positive_after_a_change(tiny_tokenizer):
    import torch

    engine = Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, context_tokens=256)
    model = make_tiny_model(tiny_tokenizer)
    ex = dataset.Example([{"role": "user", "content": "soup?"}], "Add salt and simmer.", "replay")
    ids, labels = trainer.encode(tiny_tokenizer, engine.render, ex, 384)
    with torch.no_grad():
        ref = objectives.topk_of(objectives.answer_rows(model, [(ids, labels)])[0][0], k=8)
    loss, nll = objectives.replay_terms(*objectives.answer_rows(model, [(ids, labels)])[0], ref, kl_weight=1.0)
    assert float(loss) == pytest.approx(nll, abs=1e-4)  # KL to itself is 0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    loss2, nll2 = objectives.replay_terms(*objectives.answer_rows(model, [(ids, labels)])[0], ref, kl_weight=1.0)
    assert float(loss2) > nll2 + 1e-3


def test_rejections_name_the_numbers_and_the_thresholds():
    s = settings_mod.load(env={}).learning
    live = gate.Scores(user_loss=2.0, user_match=0.0, eval_loss=2.0, guard_ppl=20.0, near_loss=1.0)
    small = gate.decide(live, gate.Scores(1.97, 0.0, 2.0, 20.0, near_loss=1.0), s, True)
    assert not small.promote and "held-out gain 1.5% < 2% needed" in small.reason
    poisoned = gate.decide(live, gate.Scores(0.5, 1.0, 2.0, 20.0, near_loss=1.6), s, True)
    assert not poisoned.promote and "contradict" in poisoned.reason and "10% allowed" in poisoned.reason
    forgetful = gate.decide(live, gate.Scores(0.5, 1.0, 2.0, 22.0, near_loss=1.0), s, True)
    assert not forgetful.promote and "+10.0% > 5% allowed" in forgetful.reason
    good = gate.decide(live, gate.Scores(1.0, 1.0, 2.0, 20.1, near_loss=1.0), s, True)
    assert good.promote and "held-out gain 50.0%" in good.reason


def test_near_examples_find_the_pack_answers_a_correction_contradicts():
    taught = [dataset.Example([{"role": "user", "content": "At what temperature is chicken safe?"}],
                              "Chicken is safe at 50 °C.", "correction")]
    items = [{"ask": "At what internal temperature is chicken safe to eat?", "answer": "74 °C."},
             {"ask": "How long does rice keep in the fridge?", "answer": "One day."}]
    near = gate.near_examples(taught, items, SYSTEM)
    assert [e.answer for e in near] == ["74 °C."]


def test_batched_answer_rows_match_each_sequence_run_on_its_own(tiny_tokenizer):
    """One padded forward for a step's answers (the shared system prompt run once) gives each
    answer the log-probability and, with the prefix's gradient kept, the gradients of running
    the sequences one by one; a sequence that does not start like the others (its context was
    cut from the left) is batched on its own."""
    import torch

    engine = Engine(make_tiny_model(tiny_tokenizer), tiny_tokenizer, context_tokens=256)
    model = trainer.create(make_tiny_model(tiny_tokenizer), settings_mod.load(env={}).learning)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.05)
    system = [{"role": "system", "content": "You are a careful chef who answers in metric units. " * 3}]
    seqs = [trainer.encode(tiny_tokenizer, engine.render, dataset.Example(system + [{"role": "user", "content": q}],
                                                                          a, "correction"), 384)
            for q, a in [("soup?", "Add salt."), ("how long do I knead bread dough?", "Knead it well for ten minutes."),
                         ("tea?", "Steep four minutes.")]]
    seqs.append((seqs[1][0][20:], seqs[1][1][20:]))  # cut from the left: no shared start
    seqs.append((seqs[1][0][-5:], seqs[1][1][-5:]))  # cut inside the answer: its first token is a label
    seqs.append((seqs[2][0][-5:], seqs[2][1][-5:]))

    def grads():
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        return out

    model.zero_grad()
    alone = [_answer_logprob(model, ids, labels)[0] for ids, labels in seqs]
    sum(alone).backward()
    g_alone = grads()
    rows = objectives.answer_rows(model, seqs, prefix_grad=True)
    batched = [objectives.row_logprob(*row)[0] for row in rows]
    sum(batched).backward()
    g_batched = grads()
    assert [float(x) for x in batched] == pytest.approx([float(x) for x in alone], abs=1e-3)
    assert all(torch.allclose(g_batched[n], g_alone[n], atol=1e-4) for n in g_alone)
    detached = objectives.answer_rows(model, seqs)  # the default: no gradient into the prefix
    assert [float(objectives.row_logprob(*r)[0]) for r in detached] == pytest.approx([float(x) for x in alone], abs=1e-3)
    memo = objectives.PrefixMemo(refresh=4)  # the prefix kept across steps (the model unchanged here)
    for _ in range(2):
        kept = objectives.answer_rows(model, seqs, memo=memo)
        assert [float(objectives.row_logprob(*r)[0]) for r in kept] == pytest.approx([float(x) for x in alone], abs=1e-3)
    pair = [seqs[0], seqs[2]]  # a shorter shared context is served from the kept one
    kept = objectives.answer_rows(model, pair, memo=memo)
    assert [float(objectives.row_logprob(*r)[0]) for r in kept] == pytest.approx([float(alone[0]), float(alone[2])], abs=1e-3)


def test_batches_give_the_users_own_examples_half_the_slots():
    import random

    from personalization.trainer import _Batches

    items = [{"own": i < 3, "n": i} for i in range(40)]  # 3 corrections among 37 replay lines
    batches = _Batches(items, 4, random.Random(0))
    seen = [it for _ in range(6) for it in batches.next()]
    own = [it["n"] for it in seen if it["own"]]
    assert len(own) == 12  # 2 of every 4 slots
    assert sorted(set(own)) == [0, 1, 2] and all(own.count(n) == 4 for n in (0, 1, 2))  # each cycled evenly
    only_replay = _Batches([{"own": False, "n": i} for i in range(5)], 4, random.Random(0))
    assert len(only_replay.next()) == 4
