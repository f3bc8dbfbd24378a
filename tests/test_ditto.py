"""paperlab.ditto: the synthetic authors, the comparisons DITTO builds, its loop, the judges and bad input."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from fakes import Scripted

from paperlab import llm
from paperlab.ditto import analysis, data, judge, methods
from paperlab.ditto.methods import KINDS, OnlineDPO, OnlineDPOConfig, Response
from paperlab.nn import GPT, GPTConfig
from paperlab.train import TrainConfig, train
from paperlab.utils import cpu_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with cpu_threads(1):  # tiny models: one thread (two spin-wait on a busy machine)
        yield


CAST = data.make_cast(data.CastConfig(n_pretrain_authors=12, n_dev_authors=1, n_target_authors=2))
TOKENIZER = data.make_tokenizer()


# --------------------------------------------------------------------------------------------------
# The synthetic authors
# --------------------------------------------------------------------------------------------------
def test_messages_round_trip_through_the_tokenizer_and_the_style_parser():
    rng = random.Random(0)
    for _ in range(300):
        content = data.random_content(rng)
        options = tuple(rng.randrange(len(data.STYLE[d])) for d in data.DIMENSIONS)
        text = data.message_text(content, options)
        ids = TOKENIZER.encode(text)
        assert TOKENIZER.unk_id not in ids
        assert TOKENIZER.decode(ids) == text
        assert data.parse_style(content, text) == options
        assert data.content_kept(content, text)


def test_a_garbled_message_loses_its_content_and_style():
    content = data.Content("sam", "move_event", (("event", "meeting"), ("day", "friday")))
    text = data.message_text(content, (0, 1, 1, 1, 1, 1))
    assert data.content_kept(content, text)
    wrong_day = text.replace("friday", "monday")
    assert not data.content_kept(content, wrong_day)
    assert data.parse_style(content, "meeting friday best")[:4] == (None, 0, None, None)


def test_target_authors_are_styles_the_pretraining_authors_do_not_have():
    config = data.CastConfig(n_pretrain_authors=40, n_target_authors=5, min_distance=2)
    cast = data.make_cast(config)
    for target in cast.target + cast.dev:
        assert min(sum(a != b for a, b in zip(target.style, p.style)) for p in cast.pretrain) >= 2
    assert len({a.style for a in cast.all}) == len(cast.all)


def test_an_author_writes_in_their_style_at_the_stated_rate():
    author = CAST.target[0]
    rng = random.Random(1)
    matches = [data.style_match(author, c, data.write(author, c, rng))
               for c in (data.random_content(rng) for _ in range(2000))]
    assert abs(np.mean(matches) - author.consistency) < 0.02


def test_unknown_authors_and_zero_demonstrations_are_errors():
    with pytest.raises(ValueError, match="unknown target author 7"):
        CAST.label("target", 7)
    with pytest.raises(ValueError, match="unknown author group 'teachers'"):
        CAST.label("teachers", 0)
    with pytest.raises(ValueError, match="number of demonstrations must be a positive integer, got 0"):
        data.demonstrations(CAST.target[0], 0, seed=0)


def test_demonstrations_avoid_the_held_out_prompts():
    held_out = frozenset(c.prompt for c in data.eval_contents(50, seed=3))
    demos = data.demonstrations(CAST.target[0], 20, seed=4, exclude=held_out)
    assert len({d.prompt for d in demos}) == 20 and not {d.prompt for d in demos} & held_out


# --------------------------------------------------------------------------------------------------
# DITTO's comparisons
# --------------------------------------------------------------------------------------------------
def _samples(n_iterations, n_prompts, n_samples):
    """Distinct token lists, [iteration][prompt][j]."""
    return [[[[100 + t, p, j] for j in range(n_samples)] for p in range(n_prompts)]
            for t in range(n_iterations)]


def test_pair_counts_follow_the_definition():
    n_prompts, n = 3, 4
    demos = [[1, p] for p in range(n_prompts)]
    for n_iterations in (1, 2, 3):
        pairs = methods.build_pairs(_samples(n_iterations, n_prompts, n), demos)
        last = n_iterations - 1
        assert len(pairs["expert"]) == n_prompts * n  # D_E > D_T
        assert len(pairs["replay"]) == n_prompts * n * last  # D_E > D_t, t < T
        assert len(pairs["inter"]) == n_prompts * n * n * last * (last + 1) // 2  # D_a > D_b, b < a


def test_pairs_prefer_demonstrations_and_later_samples():
    pairs = methods.build_pairs(_samples(3, 2, 3), [[1, 0], [1, 1]])
    for pair in pairs["expert"]:
        assert pair.chosen.is_demonstration and pair.rejected.iteration == 2
    for pair in pairs["replay"]:
        assert pair.chosen.is_demonstration and pair.rejected.iteration < 2
    for pair in pairs["inter"]:  # the later sample is always the chosen one
        assert pair.chosen.iteration > pair.rejected.iteration
    for pair in (p for kind in KINDS for p in pairs[kind]):
        assert pair.chosen.prompt == pair.rejected.prompt == pair.prompt


def test_identical_pairs_are_left_out():
    samples = [[[[1, 0], [5]]]]  # the first sample equals the demonstration
    pairs = methods.build_pairs(samples, [[1, 0]])
    assert [p.rejected for p in pairs["expert"]] == [Response(0, 0, 1)]


def test_batch_mix_is_the_papers_70_20_10():
    assert methods.mix_counts((0.7, 0.2, 0.1), 21) == {"expert": 15, "replay": 4, "inter": 2}
    pairs = methods.build_pairs(_samples(3, 7, 10), [[1, p] for p in range(7)])
    drawn = methods.draw_pairs(pairs, methods.mix_counts((0.7, 0.2, 0.1), 100), random.Random(0))
    kinds = [p.kind for p in drawn]
    assert [kinds.count(k) / len(kinds) for k in KINDS] == [0.7, 0.2, 0.1]
    assert len(set(drawn)) == len(drawn)  # without replacement
    first = methods.build_pairs(_samples(1, 7, 10), [[1, p] for p in range(7)])  # iteration 0: experts only
    assert [p.kind for p in methods.draw_pairs(first, methods.mix_counts((0.7, 0.2, 0.1), 21),
                                               random.Random(0))] == ["expert"] * 15
    with pytest.raises(ValueError, match="mix must be 3 non-negative fractions"):
        methods.mix_counts((0.5, 0.5), 10)


# --------------------------------------------------------------------------------------------------
# The loop, on a tiny GPT
# --------------------------------------------------------------------------------------------------
def _tiny(seed=0, context_length=48):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, context_length=context_length, d_model=16,
                         n_layers=1, n_heads=2))


def _demos(n=3):
    return methods.encode_examples(data.demonstrations(CAST.target[0], n, seed=0), TOKENIZER)


def _config(**changes):
    base = OnlineDPOConfig(train=TrainConfig(steps=4, batch_size=8, lr=1e-3, min_lr_ratio=1.0, log_every=1),
                           n_samples=3, resample_every=2, max_new_tokens=6)
    return dataclasses.replace(base, **changes)


def _online(reference, config):
    prompts, responses = _demos()
    return OnlineDPO(reference, prompts, responses, config, stop_id=TOKENIZER.encode("|")[0],
                     pad_id=TOKENIZER.pad_id, seed=0)


def test_ditto_starts_at_log_2_and_never_changes_its_reference():
    sft_model = _tiny()
    policy = methods_copy(sft_model)
    dpo = _online(sft_model, _config())
    before = {k: v.clone() for k, v in dpo.reference.state_dict().items()}
    result = train(policy, dpo.get_batch(policy), dpo.loss_fn, dpo.config.train, desc="test")
    assert result.loss[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at the start
    assert all(torch.equal(before[k], v) for k, v in dpo.reference.state_dict().items())
    assert all(not p.requires_grad for p in dpo.reference.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(policy.parameters(), sft_model.parameters()))
    assert len(dpo.samples) == 2 and [entry["step"] for entry in dpo.log] == [1, 3]
    assert dpo.log[1]["pairs"]["inter"] > 0 and dpo.log[1]["pairs"]["replay"] > 0


def test_spin_moves_its_reference_to_the_policy_each_iteration():
    sft_model = _tiny()
    policy = methods_copy(sft_model)
    dpo = _online(sft_model, methods_spin(_config()))
    snapshots = []

    def on_step(step, model):
        if step == 2:  # the end of iteration 0: the next batch moves the reference here
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    result = train(policy, dpo.get_batch(policy), dpo.loss_fn, dpo.config.train, on_step=on_step, desc="test")
    assert result.loss[2] == pytest.approx(math.log(2), abs=1e-5)  # the first step of each iteration
    assert all(torch.equal(snapshots[0][k], v) for k, v in dpo.reference.state_dict().items())


def test_a_step_without_comparisons_has_zero_gradient_and_is_logged():
    sft_model = _tiny()
    policy = methods_copy(sft_model)
    dpo = _online(sft_model, _config())
    dpo.resample(policy, step=1)
    dpo.batch = []  # as when every sample equalled its demonstration
    loss = dpo.loss_fn(policy, (torch.arange(0),))
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in policy.parameters())
    assert dpo.log[-1]["steps_without_pairs"] == 1


def test_bad_demonstrations_are_named_before_any_work():
    model = _tiny(context_length=12)
    prompts, responses = _demos()
    with pytest.raises(ValueError, match="demonstration 0 has .* tokens with its prompt, longer than the "
                                         "model's context of 12 tokens"):
        OnlineDPO(model, prompts, responses, _config(), stop_id=4)
    with pytest.raises(ValueError, match="no demonstrations"):
        OnlineDPO(_tiny(), [], [], _config(), stop_id=4)
    with pytest.raises(ValueError, match="no demonstrations"):
        methods.sft(_tiny(), [], [], TrainConfig(steps=1, batch_size=1))
    with pytest.raises(ValueError, match="OnlineDPOConfig.reference must be one of 'sft', 'previous'"):
        _config(reference="current")


def test_sft_fits_the_demonstrations_and_few_shot_prompts_fit_the_context():
    model = _tiny(context_length=160)
    prompts, responses = _demos()
    result = methods.sft(model, prompts, responses, TrainConfig(steps=60, batch_size=8, lr=1e-2), desc="test")
    assert result.loss[-1] < 0.5 * result.loss[0]
    demos = data.demonstrations(CAST.target[0], 7, seed=0)
    shots, k = methods.few_shot_prompts(demos, ["sam book_room demo:"], TOKENIZER, 100, 30)
    assert 1 <= k < 7 and len(TOKENIZER.encode(shots[0], add_bos=True)) + 30 <= 101
    assert shots[0].endswith("sam book_room demo:") and shots[0].startswith(demos[-k].prompt)
    texts = methods.answer(model, TOKENIZER, ["sam book_room demo:"] * 2, seed=0, max_tokens=8)
    assert len(texts) == 2 and all("|" not in t for t in texts)


def methods_copy(model):
    copy = GPT(model.config)
    copy.load_state_dict(model.state_dict())
    return copy


def methods_spin(config):
    from paperlab.ditto.experiments import spin_config

    return spin_config(config)


# --------------------------------------------------------------------------------------------------
# The judges
# --------------------------------------------------------------------------------------------------
def test_an_output_that_keeps_the_content_beats_one_that_does_not():
    style_a, style_b = [-1.0, -1.0, -3.0, -2.0], [-2.0, -2.0, -1.0, -2.0]
    kept_a, kept_b = [True, False, True, False], [True, True, False, False]
    assert judge.wins(style_a, style_b, kept_a, kept_b).tolist() == [1.0, 0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="for both outputs or for neither"):
        judge.wins(style_a, style_b, kept_a)


def _scored(seed, author, a_scores, b_scores, kept=True):
    flags = [kept] * len(a_scores)
    return {"seed": seed, "author": author, "methods": {
        "A": {"score": {"char": a_scores}, "kept": flags}, "B": {"score": {"char": b_scores}, "kept": flags}}}


def test_win_rates_are_averaged_over_authors_within_a_seed():
    scores = [_scored(0, 0, [1, 1], [0, 0]), _scored(0, 1, [0, 0], [1, 1]), _scored(1, 0, [1, 0], [0, 1]),
              _scored(1, 1, [1, 1], [0, 0])]
    assert analysis.win_rates_by_seed(scores, "A", "B") == [0.5, 0.75]
    assert analysis.win_rates_by_author(scores, "A", "B") == {0: [1.0, 0.5], 1: [0.0, 1.0]}
    matrix = analysis.win_matrix(scores, ["A", "B"])
    assert matrix[0, 1] + matrix[1, 0] == pytest.approx(1.0) and matrix[0, 0] == 0.5
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['C'\]"):
        analysis.win_rates_by_seed(scores, "A", "C")
    with pytest.raises(ValueError, match="unknown judge 'gpt4'"):
        analysis.win_rates_by_seed(scores, "A", "B", judge="gpt4")


def test_win_rates_count_ties_as_half():
    assert judge.wins([1.0, 0.0, 2.0], [0.5, 0.0, 3.0]).tolist() == [1.0, 0.5, 0.0]
    assert judge.win_rate([1.0, 0.0, 2.0], [0.5, 0.0, 3.0]) == 0.5
    with pytest.raises(ValueError, match="prompt by prompt"):
        judge.wins([1.0], [1.0, 2.0])


def test_both_judges_tell_authors_apart_far_above_chance():
    config = judge.JudgeConfig(n_train_per_author=40, n_test_per_author=10)
    judges = judge.make_judges(CAST, config)
    texts, labels = judge.judge_data(CAST, 10, seed=5)
    for kind, model in judges.items():
        assert judge.accuracy(model, texts, labels).mean() > 5 / len(CAST.all), kind
    target = CAST.label("target", 0)
    own = data.write(CAST.target[0], data.random_content(random.Random(0)), random.Random(0))
    other = data.write(CAST.pretrain[0], data.random_content(random.Random(0)), random.Random(0))
    scores = judges["char"].score([own, other], target)
    assert scores[0] > scores[1]
    with pytest.raises(ValueError, match="unknown author 99"):
        judges["word"].score([own], 99)
    with pytest.raises(ValueError, match="unknown judge kind 'gpt4'"):
        judge.StyleJudge("gpt4", config)


# --------------------------------------------------------------------------------------------------
# The tuning's selection rule and the identical outputs
# --------------------------------------------------------------------------------------------------
def test_tuning_prefers_the_least_change_within_one_standard_error_of_the_best():
    from paperlab.ditto.experiments import select

    assert select([0.24, 0.24, 0.20], [0.04, 0.04, 0.04]) == 0  # an exact tie: the smallest rate
    assert select([0.20, 0.26, 0.30], [0.01, 0.01, 0.05]) == 1  # 0.26 is within 0.05 of 0.30, 0.20 is not
    assert select([0.20, 0.26, 0.30], [0.05, 0.05, 0.02]) == 2  # the best's own error decides
    with pytest.raises(ValueError, match="one error per score"):
        select([0.2, 0.3], [0.01])


def test_tuning_seeds_must_be_distinct_and_apart_from_the_evaluation_seeds():
    from paperlab.ditto.experiments import CONFIGS

    full = CONFIGS["full"]
    assert len(full.tune_seeds) >= 2
    with pytest.raises(ValueError, match="tune_seeds"):
        dataclasses.replace(full, tune_seeds=(full.seeds[0], 5_000))
    with pytest.raises(ValueError, match="tune_seeds"):
        dataclasses.replace(full, tune_seeds=(5_000, 5_000))


def test_tuning_gives_every_trained_method_the_same_learning_rates_and_takes_the_least_change(monkeypatch):
    from paperlab.ditto import experiments

    config = dataclasses.replace(experiments.CONFIGS["fast"], tune_lrs=(3e-4, 1e-5, 3e-5),
                                 tune_sft_steps=(40, 20))
    tried: dict[str, list[float]] = {"SFT": [], "SPIN": [], "DITTO": []}

    def fake_runs(specs, device=None, desc=""):
        for spec in specs:
            method = spec.methods[-1]
            tried[method].append({"SFT": spec.sft.lr, "SPIN": spec.spin.train.lr,
                                  "DITTO": spec.ditto.train.lr}[method])
        return [None] * len(specs)

    def fake_scores(runs, specs, judges):  # every setting wins every comparison: an exact tie
        n = specs[0].n_eval
        return [{"methods": {spec.methods[-1]: {"score": {"char": [1.0] * n}, "kept": [True] * n},
                             "author": {"score": {"char": [0.0] * n}, "kept": [True] * n}}} for spec in specs]

    monkeypatch.setattr(experiments, "run_all", fake_runs)
    monkeypatch.setattr(experiments, "score_runs", fake_scores)
    tuned = experiments.tune(config, {"char": None})
    assert sorted(set(tried["SFT"])) == sorted(set(tried["SPIN"])) == sorted(set(tried["DITTO"])) == [
        1e-5, 3e-5, 3e-4]
    assert tuned["lrs"] == [1e-5, 3e-5, 3e-4] and tuned["sft_grid"][:2] == [[1e-5, 20], [1e-5, 40]]
    # a tie everywhere: the least change, the smallest rate and the fewest steps, for every method
    assert (tuned["sft"].lr, tuned["sft"].steps) == (1e-5, 20)
    assert tuned["ditto"].train.lr == tuned["spin"].train.lr == 1e-5


def test_identical_outputs_are_counted_per_seed_and_the_rest_scored_apart():
    runs = [{"texts": {"A": ["x", "y", "z", "w"], "B": ["x", "y", "q", "r"]}},
            {"texts": {"A": ["x", "y", "z", "w"], "B": ["x", "y", "z", "w"]}},
            {"texts": {"A": ["x", "y", "z", "w"], "B": ["x", "q", "z", "w"]}}]
    scores = [_scored(0, 0, [0, 0, 2, 0], [0, 0, 1, 1]), _scored(0, 1, [0, 0, 0, 0], [0, 0, 0, 0]),
              _scored(1, 0, [0, 3, 0, 0], [0, 1, 0, 0])]
    assert analysis.identical_shares_by_seed(runs, scores, "A", "B") == [0.75, 0.75]
    # seed 0: A wins "z" and loses "w", the only differing prompts; seed 1: A wins the one differing prompt
    assert analysis.win_rates_where_different(runs, scores, "A", "B") == [0.5, 1.0]
    assert math.isnan(analysis.win_rates_where_different(runs[1:2], scores[1:2], "A", "B")[0])
    # the ties pull the total win rate to one half: (0.5 * 3 + 1) / 4 for seed 1
    assert analysis.win_rates_by_seed(scores, "A", "B")[1] == 0.625
    assert analysis.needed_where_different(0.75, 0.625) == pytest.approx(1.0)
    assert analysis.needed_where_different(0.9, 0.55) > 1  # out of reach
    with pytest.raises(ValueError, match="one scored run per run"):
        analysis.identical_shares_by_seed(runs[:2], scores, "A", "B")
    assert analysis.needed_where_different(1.0, 0.55) == math.inf  # every output a tie
    with pytest.raises(ValueError, match="share_identical"):
        analysis.needed_where_different(1.5, 0.55)


def test_dpo_convergence_checks_each_runs_logged_loss_at_its_logged_steps():
    from paperlab.ditto import experiments

    steps = list(range(2, 82, 2))  # logged every other step
    falling = [0.693 - 0.002 * t for t in steps]
    flat = [0.65 + (1e-4 if k % 2 else -1e-4) for k in range(len(steps))]
    drew = [{"iteration": 1, "steps_without_pairs": 0}]
    runs = [{"logs": {"DITTO": {"steps": steps, "loss": curve, "iterations": drew}}}
            for curve in (falling, flat)]
    none_left = [0.69] * 20 + [0.0] * 20  # the last iteration drew no comparisons: a loss of 0, no gradient
    runs.append({"logs": {"DITTO": {"steps": steps, "loss": none_left, "iterations": drew + [
        {"iteration": 2, "steps_without_pairs": 20}]}}})
    checks = experiments.dpo_convergence(runs, "DITTO")
    assert [c.state for c in checks[:2]] == ["still falling", "converged"] and checks[2] is None
    assert checks[0].tail_steps == (66, 80)  # the last fifth of the logged steps, not of the list's indices
    with pytest.raises(ValueError, match=r"no DPO log named 'DITTO n=7'.*\['DITTO'\]"):
        experiments.dpo_convergence(runs, "DITTO n=7")  # the main run is logged as "DITTO"


# --------------------------------------------------------------------------------------------------
# The prompted roles with a real model (paperlab.ditto.real), against a scripted model
# --------------------------------------------------------------------------------------------------
def _candidates(prompt: str) -> tuple[str, str]:
    a = prompt.split("\nA: ")[1].split("\nB: ")[0]
    b = prompt.split("\nB: ")[1].split("\nAnswer:")[0]
    return a, b


DEMOS = [data.Example("sam move_event meeting friday:", "hi sam, can you move the meeting to friday? best"),
         data.Example("ana send_document report monday:", "hi ana, can you send the report by monday? best")]


def test_the_llm_judge_counts_a_win_only_when_both_orders_agree():
    from paperlab.ditto.real import LLMJudge

    prompts = ["kim move_event lunch tuesday:"] * 3
    good = ["hi kim, can you move lunch to tuesday? best"] * 3
    bad = ["dear kim, kindly reschedule lunch. kind regards"] * 3
    # a judge that reads: it picks the candidate that starts like the demonstrations, whichever its place
    reader = Scripted(lambda p, i: "A" if _candidates(p)[0].startswith("hi") else "B")
    judge = LLMJudge(reader, DEMOS)
    assert judge.wins(prompts, good, bad).tolist() == [1.0, 1.0, 1.0]
    assert judge.win_rate(prompts, bad, good) == 0.0
    assert len(reader.prompts) == 12
    assert all("Request: sam move_event meeting friday:" in p for p in reader.prompts)
    # a judge that always names the first place decides nothing: every pair is a tie
    assert LLMJudge(Scripted(lambda p, i: "A"), DEMOS).wins(prompts, good, bad).tolist() == [0.5] * 3
    # replies that name neither letter are ties, and counted
    mute = LLMJudge(Scripted(lambda p, i: "I cannot tell."), DEMOS)
    assert mute.win_rate(prompts, good, bad) == 0.5 and mute.unparsed == 6


def test_the_real_few_shot_baseline_shows_the_demonstrations_and_keeps_the_message():
    from paperlab.ditto.real import few_shot, parse_choice

    model = Scripted(lambda p, i: " Message: hi kim, can you move lunch to tuesday? best\n\nHope this helps!")
    out = few_shot(model, DEMOS, ["kim move_event lunch tuesday:"])
    assert out == ["hi kim, can you move lunch to tuesday? best"]
    asked = model.prompts[0]
    assert asked.index("Request: sam") < asked.index("Request: ana") < asked.index("Request: kim")
    assert asked.endswith("Request: kim move_event lunch tuesday:\nMessage:")
    replies = ("B", " A.", "Answer: B", "neither", "AB")
    assert [parse_choice(t) for t in replies] == ["B", "A", "B", None, None]


def test_the_real_roles_refuse_bad_input_before_asking():
    from paperlab.ditto.real import LLMJudge, few_shot

    model = Scripted(lambda p, i: "A")
    with pytest.raises(ValueError, match="at least one demonstration"):
        few_shot(model, [], ["kim move_event lunch tuesday:"])
    with pytest.raises(ValueError, match="one output of each method per prompt"):
        LLMJudge(model, DEMOS).wins(["p:"], ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="needs a paperlab.llm.LLM"):
        LLMJudge("gpt-4", DEMOS)
    assert model.prompts == []


def test_the_real_roles_through_the_openai_client(serve_app):
    """Both roles through paperlab.llm's OpenAI client, against a fake chat server on 127.0.0.1."""
    fastapi = pytest.importorskip("fastapi")
    from fastapi.responses import JSONResponse

    from paperlab.ditto.real import LLMJudge, few_shot

    app = fastapi.FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict = fastapi.Body(...)):  # noqa: B008 - FastAPI's way to read the JSON body
        text = body["messages"][-1]["content"]
        if text.endswith("Answer:"):  # the judge: prefers the candidate that greets like the demonstrations
            reply = "A" if _candidates(text)[0].startswith("hi") else "B"
        else:
            reply = "hi kim, can you move lunch to tuesday? best"
        return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": len(text) // 4, "completion_tokens": 4}})

    with serve_app(app) as url:
        model = llm.from_env(spec=f"openai:{url}/v1/fake-7b", timeout=10.0, max_retries=1, backoff=0.01)
        prompts = ["kim move_event lunch tuesday:"] * 2
        written = few_shot(model, DEMOS, prompts)
        assert written == ["hi kim, can you move lunch to tuesday? best"] * 2
        worse = ["dear kim, kindly move lunch."] * 2
        assert LLMJudge(model, DEMOS).wins(prompts, written, worse).tolist() == [1.0, 1.0]
        assert model.usage.calls == 2
