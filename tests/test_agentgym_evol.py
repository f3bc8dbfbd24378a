"""paperlab.agentgym.evol and experiments: AgentEvol's filter, behavioural cloning on agent turns only,
and the experiment's pieces on tiny settings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from paperlab import align
from paperlab.agentgym import experiments
from paperlab.agentgym.agent import Trajectory, Turn, agent_tokenizer, encode_conversation, expert_trajectory
from paperlab.agentgym.evol import (
    AgentModelConfig,
    conversation_loss,
    filter_trajectories,
    initial_model,
    train_agent,
)
from paperlab.agentgym.pretrain import PretrainConfig, corpus, encode_transcript, pretrain
from paperlab.train import TrainConfig
from paperlab.utils import cpu_threads, usable_cores


def _trajectory(env, instruction_id, texts, reward):
    turns = [Turn(text, text.split("Action: ")[-1], "ok.", 0.0) for text in texts]
    return Trajectory(env, instruction_id, 0, "first.", turns, reward, "done")


def test_filter_keeps_only_successes_once_and_nothing_already_in_the_expert_data():
    expert = [_trajectory("craft", 1, ["Thought: a. Action: get sand"], 1.0)]
    sampled = [
        _trajectory("craft", 1, ["Thought: a. Action: get sand"], 1.0),  # the expert's own: dropped
        _trajectory("craft", 2, ["Thought: b. Action: get coal"], 1.0),  # kept
        _trajectory("craft", 2, ["Thought: b. Action: get coal"], 1.0),  # duplicate: dropped
        _trajectory("craft", 2, ["Thought: c. Action: get coal"], 1.0),  # another way: kept
        _trajectory("craft", 3, ["Thought: b. Action: get coal"], 0.0),  # failed: dropped
        _trajectory("shop", 2, ["Thought: b. Action: get coal"], 0.75),  # partial reward: dropped
        _trajectory("shop", 2, ["Thought: b. Action: get coal"], 1.0),  # other environment: kept
    ]
    kept = filter_trajectories(sampled, threshold=1.0, existing=expert)
    assert [(t.env, t.instruction_id, t.turns[0].text) for t in kept] == [
        ("craft", 2, "Thought: b. Action: get coal"), ("craft", 2, "Thought: c. Action: get coal"),
        ("shop", 2, "Thought: b. Action: get coal")]
    assert all(t.reward >= 1.0 for t in kept)
    lower = filter_trajectories(sampled, threshold=0.5)  # the partial purchase passes a lower bar, and
    assert [t.reward for t in lower] == [1.0, 1.0, 1.0, 0.75]  # its twin with the same turns is a duplicate


def test_environment_turns_contribute_zero_loss():
    tokenizer = agent_tokenizer()
    trajectory = expert_trajectory("grid", 5)
    segments = encode_conversation(tokenizer, trajectory)
    idx, targets = align.sft_turns_batch([segments])
    # the targets are exactly the agent's turns, each closed by <eos>
    agent_tokens = [t for ids, is_agent in segments if is_agent for t in ids]
    assert [t for t in targets[0].tolist() if t != -100] == agent_tokens
    assert agent_tokens.count(tokenizer.eos_id) == len(trajectory.turns)
    # so changing an observation (context) leaves every target unchanged, and its tokens get no gradient
    model = initial_model(AgentModelConfig(d_model=16, n_layers=1, n_heads=2), tokenizer.vocab_size, 0)
    logits = model(idx).detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()
    observation_rows = targets[0] == -100
    assert observation_rows.sum() > len(trajectory.first_observation.split())
    assert torch.count_nonzero(logits.grad[0][observation_rows]) == 0


def test_initial_weights_are_the_same_for_every_run_of_a_seed():
    config = AgentModelConfig(d_model=16, n_layers=1, n_heads=2)
    a, b, c = (initial_model(config, 50, s) for s in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.token_embedding.weight, c.token_embedding.weight)


def test_behavioural_cloning_learns_the_expert_turns():
    tokenizer = agent_tokenizer()
    data = [expert_trajectory("shop", i) for i in range(8)]
    base = initial_model(AgentModelConfig(context_length=64, d_model=16, n_layers=1, n_heads=2),
                         tokenizer.vocab_size, 0)
    before = [p.clone() for p in base.parameters()]
    config = TrainConfig(steps=30, batch_size=8, lr=2e-2, warmup_steps=3, eval_every=10, seed=0)
    with cpu_threads(1):
        model, history, kept = train_agent(data, tokenizer, base, config, validation=data[:4])
    held_out = [encode_conversation(tokenizer, t) for t in data[:4]]
    assert kept == 30 and history.evals[-1]["val_loss"] < 0.5 * conversation_loss(base, held_out)
    assert all(torch.equal(a, b) for a, b in zip(before, base.parameters()))  # the base model is untouched
    with pytest.raises(ValueError, match="at least one trajectory"):
        train_agent([], tokenizer, base, config)
    with pytest.raises(ValueError, match="select needs validation trajectories or an evaluate"):
        train_agent(data, tokenizer, base, config, select=lambda metrics: metrics["val_loss"])


def test_select_best_keeps_the_weights_of_the_lowest_validation_loss():
    """Over-fit a tiny model on 2 trajectories, validated on others: with a select score the model holds
    the weights of the evaluation with the lowest score (here the validation loss), not the last ones;
    an evaluate function's metrics are recorded beside the validation loss."""
    tokenizer = agent_tokenizer()
    data = [expert_trajectory("shop", i) for i in range(12)]
    base = initial_model(AgentModelConfig(context_length=64, d_model=16, n_layers=1, n_heads=2),
                         tokenizer.vocab_size, 0)
    config = TrainConfig(steps=60, batch_size=8, lr=3e-2, warmup_steps=3, eval_every=5, seed=0)
    with cpu_threads(1):
        last, history, kept_last = train_agent(data[:2], tokenizer, base, config, validation=data[4:])
        best, history_best, kept = train_agent(data[:2], tokenizer, base, config, validation=data[4:],
                                               evaluate=lambda model: {"calls": 1.0},
                                               select=lambda metrics: metrics["val_loss"])
    losses = {e["step"]: e["val_loss"] for e in history_best.evals}
    assert [{k: v for k, v in e.items() if k != "calls"} for e in history_best.evals] == history.evals
    assert kept_last == 60 and all(e["calls"] == 1.0 for e in history_best.evals)  # the same run
    assert kept == min(losses, key=losses.get) and kept < 60  # it over-fits: the best is not the last
    held_out = [encode_conversation(tokenizer, t) for t in data[4:]]
    assert conversation_loss(best, held_out) == pytest.approx(losses[kept], rel=1e-5)
    assert conversation_loss(best, held_out) < conversation_loss(last, held_out)


def test_every_run_makes_the_same_number_of_epochs_over_its_own_data():
    config = experiments.CONFIGS["full"]
    base = config.train_config(config.n_base * 4, seed=1)
    large = config.train_config(config.n_large * 4, seed=1)
    assert (base.steps, base.warmup_steps, base.seed) == (120, 12, 1)  # 24 epochs of 160 at batch 32
    assert (large.steps, large.warmup_steps) == (480, 48)  # four times the data, four times the steps
    assert (large.lr, large.batch_size, large.eval_every) == (config.train.lr, 32, 40)
    assert config.train_config(161, seed=0).steps == 121  # ceil(24 * 161 / 32)


Config = experiments.AgentGymConfig


@pytest.mark.parametrize("make, message", [
    (lambda: Config(n_base=50, n_large=40), r"AgentGymConfig.n_base must be at most n_large"),
    (lambda: Config(n_test=10_000), r"AgentGymConfig.n_test must be at most \d+"),
    (lambda: Config(envs=("chess",)), "AgentGymConfig.envs must be a tuple of known"),
    (lambda: Config(temperature=0.0), "AgentGymConfig.temperature must be a finite number > 0"),
    (lambda: Config(seeds=(1, 1)), "AgentGymConfig.seeds must be distinct"),
    (lambda: Config(iterations=0), "AgentGymConfig.iterations must be a positive integer"),
    (lambda: Config(envs=("craft",)), "AgentGymConfig.pretrain must be pretrained on"),
    (lambda: PretrainConfig(episodes_per_instruction=0), "PretrainConfig.episodes_per_instruction"),
    (lambda: AgentModelConfig(d_model=30, n_heads=4), "AgentModelConfig.n_heads must be a divisor"),
    (lambda: experiments.ChecksConfig(load_steps=0), "ChecksConfig.load_steps"),
    (lambda: Config(train=TrainConfig(steps=200, batch_size=32, eval_every=20)),
     "AgentGymConfig.train must be a TrainConfig with steps=1 and warmup_steps=0"),
    (lambda: Config(epochs=1), r"AgentGymConfig.epochs must be enough for the convergence check: BC_base's "
                               r"run takes 5 steps with 1 evaluations, 5 are needed"),
    (lambda: Config(warmup_fraction=1.0), "AgentGymConfig.warmup_fraction must be"),
])
def test_configs_reject_bad_values_naming_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_agentevol_chain_runs_end_to_end_on_a_tiny_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path))
    tiny = TrainConfig(steps=6, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=1, seed=0)
    template = TrainConfig(steps=1, batch_size=4, lr=3e-3, warmup_steps=0, eval_every=1, seed=0)
    config = dataclasses.replace(
        experiments.CONFIGS["fast"], envs=("shop",), n_base=4, n_large=8, n_val=4, n_test=4, iterations=1,
        pretrain=PretrainConfig(envs=("shop",), episodes_per_instruction=1, train=tiny,
                                model=AgentModelConfig(160, d_model=16, n_layers=1, n_heads=2)),
        train=template, epochs=6, seeds=(0,))
    with cpu_threads(1):
        chain = experiments.run_job("agentevol", 0, config)
    assert [m["name"] for m in chain["models"]] == ["BC_base", "AgentEvol 1"]
    assert len(chain["models"][0]["success"]["shop"]) == 4
    explored = chain["exploration"][0]
    assert len(explored["explored"]["shop"]) == 8
    assert explored["kept"]["shop"] <= sum(explored["explored"]["shop"])
    assert chain["models"][1]["n_trajectories"] == 4 + explored["kept"]["shop"]
    model = experiments.load_agent(config, 0, "AgentEvol 1")  # from the cache, no training
    assert model.config.d_model == 16
    monkeypatch.setattr(experiments, "run_job", lambda *a, **k: pytest.fail("trained before the name check"))
    with pytest.raises(ValueError, match="no model 'AgentEvol 7'; the models are BC_base, AgentEvol 1, BC_"):
        experiments.load_agent(config, 0, "AgentEvol 7")


def test_scheduled_pieces_give_exactly_the_jobs_results(tmp_path, monkeypatch):
    """run() cuts the AgentEvol chains into pieces spread over worker processes: every result (weights,
    successes, losses, exploration rounds) must be the one the whole job computes in one piece."""
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path / "pieces"))
    tiny = TrainConfig(steps=6, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=1, seed=0)
    template = TrainConfig(steps=1, batch_size=4, lr=3e-3, warmup_steps=0, eval_every=1, seed=0)
    config = dataclasses.replace(
        experiments.CONFIGS["fast"], envs=("shop",), n_base=4, n_large=8, n_val=4, n_test=4, iterations=2,
        pretrain=PretrainConfig(envs=("shop",), episodes_per_instruction=1, train=tiny,
                                model=AgentModelConfig(160, d_model=16, n_layers=1, n_heads=2)),
        train=template, epochs=6, seeds=(0, 1))
    with cpu_threads(1):
        experiments.base_agent(config.pretrain)
    scheduled = experiments._run_scheduled(config, None, workers=2)
    assert experiments._run_scheduled(config, None, workers=2)[0]["models"][1]["val_loss"] == \
        scheduled[0]["models"][1]["val_loss"]  # the second time, from the cache
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path / "whole"))
    with cpu_threads(1):
        whole = [experiments.JOBS[job](seed, config) for job in ("agentevol", "bc_large") for seed in (0, 1)]

    def comparable(result):
        return {**result, "models": [{k: (v if k != "state_dict" else {n: t.tolist() for n, t in v.items()})
                                      for k, v in m.items() if k not in ("train_seconds", "history")}
                                     | {"evals": m["history"]["evals"], "loss": m["history"]["loss"]}
                                     for m in result["models"]]}

    assert [comparable(r) for r in scheduled] == [comparable(r) for r in whole]
    assert [m["name"] for m in scheduled[0]["models"]] == ["BC_base", "AgentEvol 1", "AgentEvol 2"]
    # PAPERLAB_CACHE_DISABLE: every job computed again, none looked up
    monkeypatch.setenv("PAPERLAB_CACHE_DISABLE", "1")

    def no_lookup(*args, **kwargs):
        raise AssertionError(f"looked up {args[0]} with the cache disabled")

    monkeypatch.setattr(experiments.cache, "lookup", no_lookup)
    with cpu_threads(1):
        again = experiments._run_scheduled(config, None, workers=1)
    assert [comparable(r) for r in again] == [comparable(r) for r in whole]


def test_pretraining_corpus_is_random_play_and_every_token_is_a_target():
    config = PretrainConfig(envs=("craft", "shop"), episodes_per_instruction=1)
    transcripts = corpus(config)
    assert len(transcripts) == 400 + 400
    assert all(turn.text == f"Action: {turn.action}" for t in transcripts for turn in t.turns)  # no thoughts
    assert corpus(config)[7].to_dict() == transcripts[7].to_dict()  # seeded
    rate = sum(t.success for t in transcripts if t.env == "shop") / 400
    assert 0 < rate < 0.5  # a random buyer sometimes gets it right, by chance
    tokenizer = agent_tokenizer()
    ((ids, trainable),) = encode_transcript(tokenizer, transcripts[0])
    assert trainable and ids[0] == tokenizer.bos_id and tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == transcripts[0].prompt().replace(" <eos>", "")


@pytest.mark.skipif(usable_cores() < 2, reason="needs two cores to use two threads")
def test_pretraining_on_two_threads_gives_the_one_thread_weights_and_the_main_process_uses_two(
        tmp_path, monkeypatch):
    # the full profile's model and batches, a few steps: base_agent pretrains on two threads in the main
    # process on the promise that the weights do not depend on it
    full = experiments.CONFIGS["full"].pretrain
    config = dataclasses.replace(full, episodes_per_instruction=1,
                                 train=dataclasses.replace(full.train, steps=12, warmup_steps=2))
    weights = []
    for threads in (1, 2):
        with cpu_threads(threads):
            model, _ = pretrain(config)
        weights.append(model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    seen = []

    def recording(config, device=None):
        seen.append(torch.get_num_threads())
        return pretrain(config, device=device)

    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(experiments, "pretrain", recording)
    tiny = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=2, warmup_steps=1))
    with cpu_threads(1):
        experiments.base_agent(tiny)
    assert seen == [2]


def test_success_trend_calls_a_rising_success_rate_not_converged():
    from paperlab.train import TrainResult

    steps = list(range(20, 220, 20))
    rising = TrainResult(evals=[{"step": t, "val_success": 0.1 + t / 1000} for t in steps])
    check = experiments.success_trend(rising)
    assert check.still_falling
    assert check.describe().startswith("still rising: rose ") and 0.2 < check.level < 0.3
    wobble = [0.0002 if t % 40 else -0.0002 for t in steps]
    flat = TrainResult(evals=[{"step": t, "val_success": 0.3 + w} for t, w in zip(steps, wobble)])
    assert not experiments.success_trend(flat).still_falling
    assert experiments.success_trend(flat).describe().startswith("converged")
    zigzag = TrainResult(evals=[{"step": t, "val_success": 0.3 + (0.01 if t % 40 else -0.01)} for t in steps])
    assert experiments.success_trend(zigzag).describe().startswith("too noisy to tell")
