"""Tests of the NLLB chapter's package: the synthetic world, the MoE layer, the translation model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from paperlab.nllb import data as D
from paperlab.nllb.model import ConditionalMoE, ModelConfig, MoEFFN, Seq2Seq, beam_search, greedy_decode
from paperlab.nllb.train import (
    NLLB_TRAIN,
    RunConfig,
    Translator,
    encode_pairs,
    routing_by_language,
    score,
    train_run,
)
from paperlab.nn import SwiGLU
from paperlab.utils import cpu_threads
from paperlab_kernels import moe

SMALL_WORLD = D.WorldConfig(n_high=300, n_low=40, n_valid=16, n_test=8)


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(1):  # tiny models: one thread is much faster on a busy machine
        yield


def _moe(n_experts=4, d=8, hidden=6, **kwargs) -> MoEFFN:
    torch.manual_seed(0)
    return MoEFFN(d, hidden, n_experts, **kwargs)


# ------------------------------------------------------------------------------------------- data
def test_world_is_deterministic_and_seeded():
    a = D.make_world(SMALL_WORLD)
    D.make_world.cache_clear()
    D.make_languages.cache_clear()
    b = D.make_world(SMALL_WORLD)
    assert a is not b and a.train == b.train and a.test == b.test
    c = D.make_world(dataclasses.replace(SMALL_WORLD, seed=1))
    assert c.test != a.test


def test_world_structure():
    world = D.make_world(SMALL_WORLD)
    langs = world.languages
    # related languages share word order and morphology, and many identical words
    for high, low in zip(D.HIGH, D.LOW):
        assert langs[low].relative == high and langs[low].order == langs[high].order
        shared = sum(langs[high].lexicon[k] == langs[low].lexicon[k] for k in langs[high].lexicon)
        assert shared >= 5
    # held-out sets are multi-way parallel and never in training
    train_sentences = {s for pairs in world.train.values() for pair in pairs for s in pair}
    assert not set(world.test[D.HUB]) & train_sentences
    assert len({len(v) for v in world.test.values()}) == 1
    assert len(world.pairs("amu", D.HUB)) == SMALL_WORLD.n_low
    with pytest.raises(ValueError, match="zero-shot"):
        world.pairs("ara", "bel")
    # one meaning, rendered: plural and tense morphology appear as suffixes
    meaning = D.Meaning("dog", "pl", None, "see", "past", "cat", "sg", "red")
    text = langs["ara"].render(meaning)
    assert f"{langs['ara'].lexicon['dog']}-{langs['ara'].lexicon['plural']}" in text
    assert f"{langs['ara'].lexicon['see']}-{langs['ara'].lexicon['past']}" in text.split()[-1]  # SOV


def test_tokenizer_has_tags_and_roundtrips():
    world = D.make_world(SMALL_WORLD)
    tok = D.build_tokenizer(world)
    for code in D.LANGUAGES:
        assert D.tag(code) in tok.token_to_id
    sentence = world.train[("ara", D.HUB)][0][0]
    assert D.detokenize(tok.decode(tok.encode(sentence))) == sentence
    with pytest.raises(ValueError, match="unknown language"):
        D.tag("xyz")


# ------------------------------------------------------------------------------------------- MoE
def test_capacity_respected_and_overflow_logged():
    layer = _moe(n_experts=4, capacity_factor=0.5).train()
    x = torch.randn(64, 8)
    y, _ = layer(x)
    slot, index, capacity = layer.last["slot"], layer.last["expert_index"], layer.last["capacity"]
    assert capacity == moe.capacity_for(64, 4, 2, 0.5)
    for e in range(4):
        assert int(((index == e) & (slot >= 0)).sum()) <= capacity
    assert 0 < layer.last["dropped"] <= 1  # half the needed capacity: something is dropped
    dropped_rows = (slot < 0).all(dim=1)
    assert torch.equal(y[dropped_rows], torch.zeros_like(y[dropped_rows]))


def test_load_balancing_loss_is_one_under_uniform_routing():
    layer = _moe(n_experts=8)
    torch.nn.init.zeros_(layer.gate.weight)  # p = 1/E for every token
    _, l_aux = layer(torch.randn(40, 8))
    assert l_aux.item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():  # every token strongly prefers expert 0: l_aux -> E
        layer.gate.weight.zero_()
        layer.gate.weight[0] = 50.0
    _, l_aux = layer(torch.ones(40, 8))
    assert l_aux.item() == pytest.approx(8.0, rel=1e-3)


def test_padding_never_routed():
    layer = _moe(n_experts=4).train()
    x = torch.randn(20, 8)
    valid = torch.ones(20, dtype=torch.bool)
    valid[::3] = False
    y, l_aux = layer(x, valid)
    assert (layer.last["slot"][~valid] == -1).all()
    assert torch.equal(y[~valid], torch.zeros_like(y[~valid]))
    # the real tokens' outputs and l_aux do not depend on the padding's values
    x2 = x.clone()
    x2[~valid] = 100.0
    torch.manual_seed(1)
    y1, l1 = layer(x, valid)
    torch.manual_seed(1)
    y2, l2 = layer(x2, valid)
    assert torch.allclose(y1[valid], y2[valid]) and torch.allclose(l1, l2)


def test_moe_layer_equals_per_token_loop():
    layer = _moe(n_experts=4, capacity_factor=0.75).eval()
    x = torch.randn(30, 8)
    y, _ = layer(x)
    expert_index, gate, slot, *_ = layer.route(x, torch.ones(30, dtype=torch.bool))

    def expert_fn(e, row):
        return layer.experts(torch.zeros(4, 1, 8).index_copy(0, torch.tensor([e]), row.view(1, 1, 8)))[e, 0]

    expected = moe.dispatch_combine_loop(x, expert_index, slot, gate, expert_fn)
    assert torch.allclose(y, expected, atol=1e-6)


def test_eom_p0_is_identity_and_p_masks_whole_tokens():
    x = torch.randn(400, 8)
    plain = _moe(n_experts=4, gumbel_second=False, eom_p=0.0).train()
    masked = _moe(n_experts=4, gumbel_second=False, eom_p=0.3).train()
    y0, _ = plain(x)
    reference = moe.combine(
        plain.experts(
            moe.dispatch(x, plain.last["expert_index"], plain.last["slot"], 4, plain.last["capacity"])
        ),
        plain.last["expert_index"],
        plain.last["slot"],
        plain.route(x, torch.ones(400, dtype=torch.bool))[1],
    )
    assert torch.equal(y0, reference)  # p = 0: the identity on the MoE output
    y1, _ = masked(x)
    zero = (y1 == 0).all(dim=1)
    assert torch.allclose(y1[~zero], y0[~zero])  # kept tokens: unchanged, no rescaling
    assert 0.2 < zero.float().mean().item() < 0.4
    masked.eval()
    assert torch.allclose(masked(x)[0], 0.7 * plain.eval()(x)[0], atol=1e-6)  # eval: expected value


def test_one_expert_moe_equals_dense_ffn():
    torch.manual_seed(0)
    dense = SwiGLU(8, 12)
    layer = MoEFFN(8, 12, 1).load_dense(dense).train()
    x = torch.randn(25, 8)
    y, l_aux = layer(x)
    assert torch.allclose(y, dense(x), atol=1e-6)
    assert l_aux.item() == pytest.approx(1.0)


def test_conditional_moe_with_gate_zero_is_dense():
    torch.manual_seed(0)
    layer = ConditionalMoE(8, 12, MoEFFN(8, 6, 4), budget=0.8)
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.bias.fill_(-1e4)  # sigmoid(-1e4) == 0 exactly in float32
    x = torch.randn(10, 8)
    y, _, budget = layer(x)
    assert torch.equal(y, layer.dense(x))
    assert budget.item() == pytest.approx(0.8)


def test_model_config_and_moe_placement():
    config = ModelConfig(vocab_size=50, ffn="moe", n_experts=4)
    model = Seq2Seq(config)
    assert sorted(model.moe_layers()) == ["decoder.1", "encoder.1"]
    with pytest.raises(ValueError, match="ffn"):
        ModelConfig(vocab_size=50, ffn="sparse")
    with pytest.raises(ValueError, match="eom_p"):
        ModelConfig(vocab_size=50, eom_p=1.0)


# ------------------------------------------------------------------------------------ translation
def _translator(ffn="dense") -> Translator:
    world = D.make_world(SMALL_WORLD)
    tok = D.build_tokenizer(world)
    torch.manual_seed(0)
    return Translator(Seq2Seq(ModelConfig(vocab_size=tok.vocab_size, ffn=ffn, n_experts=4)), tok)


def test_decoding_emits_requested_target_tag():
    translator = _translator("moe")
    world = D.make_world(SMALL_WORLD)
    sentences = world.test["ara"][:3]
    for target in ("pax", "bel", "amu"):
        for beam in (1, 3):
            out = translator.translate(sentences, "ara", target, beam_size=beam, return_ids=True, max_new=6)
            assert all(ids[0] == translator.tag_id(target) for ids in out)
    src = encode_pairs(translator, world.pairs("ara", "pax", split="test")[:4], ("ara", "pax"))[0]
    tags = torch.full((4,), translator.tag_id("pax"))
    greedy = greedy_decode(translator.model, src, tags, max_new=6)
    assert greedy == beam_search(translator.model, src, tags, beam_size=1, max_new=6)
    assert all(len(ids) <= 7 for ids in greedy)


def test_bad_input_errors_name_the_problem():
    translator = _translator()
    with pytest.raises(ValueError, match="unknown source language 'xx'"):
        translator.translate(["kuni"], "xx", "pax")
    with pytest.raises(ValueError, match="unknown target language 'eng'"):
        translator.translate(["kuni"], "ara", "eng")
    with pytest.raises(ValueError, match="empty source sentence"):
        translator.translate(["  "], "ara", "pax")
    with pytest.raises(ValueError, match="more than max_len"):
        translator.translate([" ".join(["kuni"] * 40)], "ara", "pax")
    with pytest.raises(ValueError, match="both 'ara'"):
        translator.translate(["kuni"], "ara", "ara")
    with pytest.raises(ValueError, match="single str"):
        translator.translate("kuni", "ara", "pax")


def test_scores_perfect_and_wrong():
    refs = ["kuni taho-ra sutri mimod dusi-wi", "sutri mimod duda wikka-su kuni"]
    assert score(refs, refs) == {"chrf": pytest.approx(100.0), "bleu": pytest.approx(100.0)}
    assert score(["xx yy", "zz"], refs)["chrf"] < 10


def test_training_smoke_loss_decreases_and_records():
    run = RunConfig(
        world=SMALL_WORLD,
        languages=("ara", "amu"),
        ffn="moe",
        n_experts=4,
        d_model=32,
        d_hidden=64,
        train=dataclasses.replace(NLLB_TRAIN, steps=30, batch_size=16, lr=3e-3, warmup_steps=5,
                                  eval_every=15),
    )
    model, translator, record = train_run(run)
    loss = record["history"]["loss"]
    assert loss[-1] < loss[0] - 0.5
    assert {e["step"] for e in record["history"]["evals"]} == {15, 27, 28, 29, 30}  # + the last fifth's
    assert set(record["test"]) == {"ara-pax", "pax-ara", "amu-pax", "pax-amu", "ara-amu", "amu-ara"}
    assert [d for d, t in record["test"].items() if t["zero_shot"]] == ["ara-amu", "amu-ara"]
    assert len(record["moe_log"]["l_aux"]) == 30 and all(v > 0 for v in record["moe_log"]["l_aux"])
    usage = record["routing"]["usage"]["encoder.1"]
    assert set(usage) == {"ara", "amu", "pax"}
    assert all(sum(v) == pytest.approx(1.0) for v in usage.values())
    again = routing_by_language(model, translator, D.make_world(SMALL_WORLD), run.languages)
    assert again["usage"] == record["routing"]["usage"]


def test_low_resource_noise_misaligns_a_fixed_fraction():
    clean = D.make_world(dataclasses.replace(SMALL_WORLD, low_noise=0.0))
    noisy = D.make_world(dataclasses.replace(SMALL_WORLD, low_noise=0.25))
    for code in D.LOW:
        a, b = clean.train[(code, D.HUB)], noisy.train[(code, D.HUB)]
        assert [s for s, _ in a] == [s for s, _ in b]  # same source sentences
        changed = sum(x[1] != y[1] for x, y in zip(a, b))
        assert changed == round(0.25 * SMALL_WORLD.n_low)
    assert clean.train[("ara", D.HUB)] == noisy.train[("ara", D.HUB)]  # high-resource pairs stay clean
    with pytest.raises(ValueError, match="low_noise"):
        D.WorldConfig(low_noise=1.0)


# ------------------------------------------------------------------------ evaluation capacity, curriculum
def test_evaluation_drops_nothing_and_a_sentence_does_not_depend_on_its_batch():
    layer = _moe(n_experts=4).eval()
    with torch.no_grad():  # every token prefers expert 0: the worst case for a capacity
        layer.gate.weight.zero_()
        layer.gate.weight[0] = 5.0
    x = torch.randn(50, 8).abs()
    y, _ = layer(x)
    assert layer.last["capacity"] == 50 and layer.last["dropped"] == 0.0  # C = S in evaluation
    alone, _ = layer(x[:1])
    assert torch.allclose(alone[0], y[0], atol=1e-6)
    layer.train()  # training keeps the capacity C = ceil(f k S / E) and drops the overflow
    layer(x)
    assert layer.last["capacity"] == moe.capacity_for(50, 4, 2, 1.0) and layer.last["dropped"] > 0
    with pytest.raises(ValueError, match="eval_capacity_token_fraction"):
        MoEFFN(8, 6, 4, eval_capacity_token_fraction=1.5)
    # the whole model: a sentence's translation is the same alone and in a batch of others
    translator = _translator("moe")
    world = D.make_world(SMALL_WORLD)
    batch = translator.translate(world.test["ara"][:6], "ara", "pax", return_ids=True, max_new=6)
    alone = translator.translate(world.test["ara"][2:3], "ara", "pax", return_ids=True, max_new=6)
    assert alone[0] == batch[2]


def test_curriculum_holds_low_resource_directions_back_until_its_step():
    from paperlab.nllb.train import _direction_sampler

    run = RunConfig(world=SMALL_WORLD, curriculum_step=10,
                    train=dataclasses.replace(NLLB_TRAIN, steps=20, batch_size=64, warmup_steps=2))
    translator = _translator()
    world = D.make_world(SMALL_WORLD)
    data = [encode_pairs(translator, world.pairs(*d), d) for d in run.directions]
    get_batch = _direction_sampler(run, data, run.directions, translator.tokenizer.pad_id)
    low_tags = {translator.tag_id(x) for x in D.LOW}

    def low_share(step):
        src, dec, _ = get_batch(step, 0, 1)
        tags = zip(src[:, 0].tolist(), dec[:, 1].tolist())  # source tag, target tag
        return sum(int(s in low_tags or d in low_tags) for s, d in tags)

    assert all(low_share(step) == 0 for step in range(1, 11))
    assert sum(low_share(step) for step in range(11, 21)) > 0
    with pytest.raises(ValueError, match="curriculum_step"):
        RunConfig(curriculum_step=NLLB_TRAIN.steps)


def test_zero_shot_null_and_the_routing_null_are_recorded():
    from paperlab.nllb.train import _initial_gates, build_model

    run = RunConfig(world=SMALL_WORLD, d_model=32, d_hidden=64, n_heads=2, ffn="moe", n_experts=4,
                    train=dataclasses.replace(NLLB_TRAIN, steps=2, batch_size=4, warmup_steps=1,
                                              eval_every=1))
    model, translator, record = train_run(run)
    assert D.zero_shot_directions(("ara", "amu")) == [("ara", "amu"), ("amu", "ara")]
    for a, b in D.zero_shot_directions(run.languages):
        entry = record["test"][f"{a}-{b}"]
        assert entry["zero_shot"] and entry["shifted_loss"] > 0 and entry["loss"] > 0
    assert "shifted_loss" not in record["test"]["ara-pax"]
    layers = {"encoder.1", "decoder.1"}
    assert set(record["routing_initial_gate"]["usage"]) == set(record["routing"]["usage"]) == layers
    assert record["routing"]["eval_dropped"] == {"encoder.1": 0.0, "decoder.1": 0.0}  # C = S in evaluation
    # the null is the trained network with only the gates W_g put back to their initial weights
    vocab = translator.tokenizer.vocab_size
    null, initial = _initial_gates(model, run, vocab), build_model(run, vocab)
    gate_ids = {id(layer.gate.weight) for layer in null.moe_layers().values()}
    gates = {k for k, p in null.named_parameters() if id(p) in gate_ids}
    assert gates == {"encoder.1.ffn.ffn.gate.weight", "decoder.1.ffn.ffn.gate.weight"}
    trained, init = model.state_dict(), initial.state_dict()
    for key, value in null.state_dict().items():
        assert torch.equal(value, init[key] if key in gates else trained[key]), key
    assert any(not torch.equal(trained[k], init[k]) for k in gates)  # the gates did train
    assert not null.training
    again = routing_by_language(null, Translator(null, translator.tokenizer), D.make_world(SMALL_WORLD),
                                run.languages)
    assert again["usage"] == record["routing_initial_gate"]["usage"]


def test_low_resource_directions_are_scored_at_their_own_best_validation_checkpoint():
    """One checkpoint rule for the transfer comparison: the lowest mean low-resource validation loss, for a
    multilingual run (whose own checkpoint is the last) and for a bilingual one (whose own is the best)."""
    schedule = dataclasses.replace(NLLB_TRAIN, steps=12, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=2)
    multi = RunConfig(world=SMALL_WORLD, languages=("ara", "amu"), d_model=32, d_hidden=64, n_heads=2,
                      train=schedule, test_zero_shot=False)
    _, _, record = train_run(multi)
    evals = record["history"]["evals"]
    low = [(e["step"], (e["val/amu-pax"] + e["val/pax-amu"]) / 2) for e in evals]
    assert record["low_best"]["step"] == min(low, key=lambda x: x[1])[0]
    assert set(record["low_best"]["test"]) == {"amu-pax", "pax-amu"}
    assert record["best_step"] == 12  # the run itself keeps its last weights
    if record["low_best"]["step"] != 12:
        assert record["low_best"]["test"]["amu-pax"]["loss"] != record["test"]["amu-pax"]["loss"]
    bilingual = dataclasses.replace(multi, languages=("amu",), select="best")
    _, _, record = train_run(bilingual)
    assert record["low_best"]["step"] == record["best_step"]
    for d in ("amu-pax", "pax-amu"):
        assert record["low_best"]["test"][d]["loss"] == record["test"][d]["loss"]
    high_only = dataclasses.replace(multi, languages=("ara",))
    assert train_run(high_only)[2]["low_best"] is None


def test_language_similarity_and_onset(monkeypatch):
    from paperlab.nllb import experiments as E

    alike = {"ara": [0.5, 0.5], "amu": [0.5, 0.5], "pax": [0.5, 0.5]}
    assert E.language_similarity(alike) == pytest.approx(1.0)
    assert E.language_similarity({"ara": [1.0, 0.0], "amu": [0.0, 1.0]}) == 0.0  # disjoint experts

    config = E.EXPERIMENT.config("fast")
    low = E.low_directions(config)
    # the mean over seeds is lowest at step 30; seed 1's own curve at step 20
    shapes = {0: [3.0, 2.0, 1.0, 1.5], 1: [3.0, 1.1, 1.2, 1.4], 2: [3.0, 2.2, 0.9, 1.6]}
    asked = []

    def fake_record(config, name, seed=None):
        asked.append(name)
        values = shapes[seed] if name == "moe" else [3.0, 2.0, 1.5, 1.0]  # "dense" never turns up
        return {"history": {"evals": [{"step": 10 * (i + 1), **{f"val/{d}": v for d in low}}
                                      for i, v in enumerate(values)]}}

    monkeypatch.setattr(E, "record", fake_record)
    config = dataclasses.replace(config, seeds=(0, 1, 2), train=dataclasses.replace(config.train, steps=40))
    found = E.onset(config)
    assert found["onset_step"] == 30 and found["curriculum_step"] == 10
    assert found["per_seed"] == [30, 20, 30]
    assert set(asked) == {"moe"}  # the curriculum's onset is measured on plain MoE
    never = E.onset(config, "dense")  # a curve that never turns up: onset at the last step, no curriculum
    assert never["onset_step"] == 40 and never["curriculum_step"] == 0 and never["per_seed"] == [40] * 3


def test_summary_converged_needs_every_group_to_stop_falling(monkeypatch):
    """A low-resource curve that turns up must not hide a high-resource one still falling."""
    from paperlab.nllb import experiments as E

    config = E.EXPERIMENT.config("fast")
    config = dataclasses.replace(config, seeds=(0, 1), train=dataclasses.replace(config.train, steps=100))
    low, high = E.low_directions(config), E.high_directions(config)
    falling = [2.0, 1.8, 1.6, 1.4, 1.2, 1.0, 0.8, 0.6, 0.4, 0.2]
    flat = [2.0, 1.0, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    rising = [2.0, 1.0, 1.1, 1.3, 1.5, 1.7, 1.9, 2.1, 2.3, 2.5]  # averaged with `falling`: flat-ish

    def fake_record(config, name, seed=None):
        high_curve = falling if seed == 0 else flat
        evals = [{"step": 10 * (i + 1), **{f"val/{d}": rising[i] for d in low},
                  **{f"val/{d}": high_curve[i] for d in high}} for i in range(10)]
        test = {d: {"loss": 1.0, "chrf": 50.0} for d in low + high}
        low_best = {"step": 20, "test": {d: {"loss": 0.5 + seed, "chrf": 60.0} for d in low}}
        return {"history": {"evals": evals}, "test": test, "directions": low + high, "best_step": 100,
                "low_best": low_best}

    monkeypatch.setattr(E, "record", fake_record)
    out = E.summary(config, "moe")
    assert out["converged"] == [False, True]
    assert out["low_rise"] == [pytest.approx(1.5), pytest.approx(1.5)]
    assert out["low_loss"] == [1.0, 1.0] and out["low_loss_best"] == [0.5, 1.5]  # the two checkpoints
    assert out["low_best_step"] == [20, 20] and out["low_chrf_best"] == [60.0, 60.0]


def test_summary_ignores_a_fall_under_the_convergence_floor(monkeypatch):
    """A steady fall of 0.004 nats/token over the last evaluations is 1.3% of a 0.3-nat loss (over the 0.5%
    tolerance) but under the 0.01-nat floor, half the smallest loss effect a claim counts."""
    from paperlab import stats
    from paperlab.nllb import experiments as E

    assert E.CONVERGENCE_FLOOR == E.SMALLEST_LOSS_EFFECT / 2 == 0.01
    config = E.EXPERIMENT.config("fast")
    config = dataclasses.replace(config, seeds=(0, 1), train=dataclasses.replace(config.train, steps=100))
    low, high = E.low_directions(config), E.high_directions(config)
    flat = [2.0, 1.0, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]
    tiny = [2.0, 1.0, 0.5, 0.31, 0.305, 0.304, 0.303, 0.302, 0.301, 0.300]  # falls 0.004 over 60-100
    small = [2.0, 1.0, 0.5, 0.40, 0.38, 0.36, 0.34, 0.32, 0.30, 0.28]  # falls 0.08 over 60-100
    steps = [10 * (i + 1) for i in range(10)]
    assert stats.convergence(steps, tiny).still_falling  # without the floor it would count

    def fake_record(config, name, seed=None):
        high_curve = tiny if seed == 0 else small
        evals = [{"step": steps[i], **{f"val/{d}": flat[i] for d in low},
                  **{f"val/{d}": high_curve[i] for d in high}} for i in range(10)]
        test = {d: {"loss": 1.0, "chrf": 50.0} for d in low + high}
        low_best = {"step": 20, "test": {d: {"loss": 0.5, "chrf": 60.0} for d in low}}
        return {"history": {"evals": evals}, "test": test, "directions": low + high, "best_step": 100,
                "low_best": low_best}

    monkeypatch.setattr(E, "record", fake_record)
    assert E.summary(config, "moe")["converged"] == [True, False]
