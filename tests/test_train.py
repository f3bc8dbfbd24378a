"""Tests for paperlab.train: schedule, learning, determinism, clipping, evaluation, errors, and DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import paperlab.train as train_module
from paperlab import stats
from paperlab.train import (
    BestWeights,
    TrainConfig,
    TrainResult,
    auto_device,
    distributed_info,
    is_main_process,
    lr_at,
    seed_everything,
    train,
)

IN_FEATURES = 8


class TinyRegressor(nn.Module):
    """``y_hat = W2 tanh(W1 x + b1) + b2``, ``x: (batch, 8) -> (batch,)``; a ``loss`` method as in the GPT."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(IN_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(self(x), y)


TRUE_W = torch.linspace(-1, 1, IN_FEATURES)


def seeded_batch(step: int, rank: int, world_size: int, batch_size: int = 32):
    """A fresh batch per (step, rank) from its own generator: ``x: (batch, 8)``, ``y = x . w``."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(batch_size, IN_FEATURES, generator=g)
    return x, x @ TRUE_W


def global_rng_batch(step: int, rank: int, world_size: int):
    """Draws from the global RNG, so only train's own seeding makes it repeatable."""
    x = torch.randn(16, IN_FEATURES)
    return x, x @ TRUE_W + 0.1 * torch.randn(16)


def mse(model: TinyRegressor, batch) -> torch.Tensor:
    return model.loss(*batch)


def fit(*args, **kwargs) -> TrainResult:
    """:func:`train` on the CPU unless told otherwise (bitwise-repeatable and the same on every machine)."""
    kwargs.setdefault("device", "cpu")
    return train(*args, **kwargs)


def make_model(seed: int = 0) -> TinyRegressor:
    torch.manual_seed(seed)
    return TinyRegressor()


# ---------------------------------------------------------------------------------------------- schedule


def test_lr_schedule_warmup_peak_and_end():
    config = TrainConfig(steps=100, batch_size=1, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, config) == 0.0
    assert lr_at(1, config) == pytest.approx(1e-4)  # lr / W
    assert lr_at(5, config) == pytest.approx(5e-4)
    assert lr_at(10, config) == pytest.approx(1e-3)  # peak at the end of warmup
    assert lr_at(11, config) == pytest.approx(1e-3)  # first cosine update still at the peak
    p = (60 - 11) / (100 - 11)
    assert lr_at(60, config) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))))
    assert lr_at(100, config) == pytest.approx(1e-4)  # min_lr_ratio * lr at `steps`
    assert lr_at(500, config) == pytest.approx(1e-4)  # stays there
    decay = [lr_at(t, config) for t in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_lr_schedule_without_warmup_and_constant():
    config = TrainConfig(steps=10, batch_size=1, lr=0.5, min_lr_ratio=1.0)
    assert [lr_at(t, config) for t in range(11)] == pytest.approx([0.5] * 11)
    config = TrainConfig(steps=10, batch_size=1, lr=0.5, min_lr_ratio=0.0)
    assert lr_at(0, config) == pytest.approx(0.5)
    assert lr_at(1, config) == pytest.approx(0.5)  # no warmup: the first update uses the peak
    assert lr_at(6, config) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 5 / 9)))
    assert lr_at(10, config) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, config)


def test_recorded_lr_follows_schedule():
    config = TrainConfig(steps=12, batch_size=32, lr=1e-2, warmup_steps=3)
    result = fit(make_model(), seeded_batch, mse, config)
    assert result.steps == list(range(1, 13))
    assert result.lr == pytest.approx([lr_at(t, config) for t in range(1, 13)])


# ---------------------------------------------------------------------------------------------- learning


def test_loss_decreases_on_a_learnable_problem():
    config = TrainConfig(steps=150, batch_size=32, lr=1e-2, weight_decay=0.0, warmup_steps=10)
    result = fit(make_model(), seeded_batch, mse, config)
    first, last = sum(result.loss[:10]) / 10, sum(result.loss[-10:]) / 10
    assert last < 0.1 * first, (first, last)
    assert result.examples_seen == 150 * 32
    assert result.tokens_seen == 150 * 32 * IN_FEATURES
    assert result.world_size == 1 and result.device == "cpu" and result.seconds > 0
    assert not torch.distributed.is_initialized()  # one process: no process group


def test_same_seed_same_losses_and_different_seed_differs():
    def run(seed: int) -> TrainResult:
        config = TrainConfig(steps=20, batch_size=16, lr=1e-2, seed=seed)
        return fit(make_model(), global_rng_batch, mse, config)

    a, b, c = run(0), run(0), run(1)
    assert a.loss == b.loss  # bit for bit on CPU
    assert a.grad_norm == b.grad_norm
    assert a.loss != c.loss


def test_each_replica_seeds_with_the_run_seed_plus_its_rank(monkeypatch):
    monkeypatch.setattr(train_module, "distributed_info", lambda: (1, 1, 0))  # rank 1, no process group
    seeds = []
    fit(make_model(), seeded_batch, mse, TrainConfig(steps=1, batch_size=8, seed=5),
        on_step=lambda t, m: seeds.append(torch.initial_seed()))
    assert seeds == [6]


def test_seed_everything_seeds_python_numpy_torch():
    import random

    import numpy as np

    seed_everything(7)
    first = (random.random(), np.random.rand(), torch.rand(()).item())  # noqa: NPY002
    seed_everything(7)
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == first  # noqa: NPY002
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_weight_decay_only_on_matrices():
    optimizer = train_module.adamw_for(make_model(), TrainConfig(steps=1, batch_size=1, weight_decay=0.3))
    by_decay = {g["weight_decay"]: g["params"] for g in optimizer.param_groups}
    assert all(p.ndim >= 2 for p in by_decay[0.3]) and len(by_decay[0.3]) == 2
    assert all(p.ndim == 1 for p in by_decay[0.0]) and len(by_decay[0.0]) == 2


# ---------------------------------------------------------------------------------------------- clipping


def test_grad_clipping_records_pre_clip_norm_and_clips():
    """SGD with lr=1 makes the update equal the clipped gradient, so its norm shows the clipping."""
    model = make_model()
    batch = seeded_batch(1, 0, 1)
    mse(model, batch).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    model.zero_grad()
    before = [p.detach().clone() for p in model.parameters()]
    clip = expected / 10
    config = TrainConfig(steps=1, batch_size=32, lr=1.0, grad_clip=clip)
    result = fit(model, seeded_batch, mse, config, optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    assert result.grad_norm == pytest.approx([expected], rel=1e-5)  # recorded before clipping
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert update.norm().item() == pytest.approx(clip, rel=1e-4)


def test_no_clipping_still_records_norms():
    config = TrainConfig(steps=5, batch_size=32, grad_clip=None)
    result = fit(make_model(), seeded_batch, mse, config)
    assert len(result.grad_norm) == 5 and all(n > 0 and math.isfinite(n) for n in result.grad_norm)


def test_log_every_records_window_means():
    seen: list[float] = []

    def recording_mse(model, batch):
        loss = mse(model, batch)
        seen.append(loss.item())
        return loss

    config = TrainConfig(steps=10, batch_size=32, log_every=4)
    result = fit(make_model(), seeded_batch, recording_mse, config)
    assert result.steps == [4, 8, 10]
    expected = [sum(seen[0:4]) / 4, sum(seen[4:8]) / 4, sum(seen[8:10]) / 2]
    assert result.loss == pytest.approx(expected, rel=1e-6)
    assert result.lr == pytest.approx([lr_at(t, config) for t in (4, 8, 10)])


# ---------------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("steps, eval_every", [(800, 100), (3000, 250), (220, 20), (1000, 100), (30, 10),
                                               (1500, 50), (3750, 150), (185, 10)])
def test_evaluation_steps_give_the_convergence_check_five_in_its_window(steps, eval_every):
    config = TrainConfig(steps=steps, batch_size=8, eval_every=eval_every)
    due = config.evaluation_steps()
    if (steps, eval_every) == (800, 100):  # 3 of every 100 in the last fifth (620-800): 660-765 added
        assert due == (100, 200, 300, 400, 500, 600, 660, 695, 700, 730, 765, 800)
    if (steps, eval_every) == (1500, 50):  # the window 1210-1500 holds 6 regular evaluations: none added
        assert due == tuple(range(50, 1501, 50))
    assert set(range(eval_every, steps + 1, eval_every)) <= set(due) and due[-1] == steps
    if (steps, eval_every) == (185, 10):  # exactly 5 in the window 150-185, its start included: none added
        assert due == tuple(range(10, 181, 10)) + (185,)
    check = stats.convergence(due, np.linspace(2.0, 1.0, len(due)))
    assert check.slope.n >= 5 and check.tail_steps[0] >= steps - 0.2 * (steps - due[0])  # in the last fifth


@pytest.mark.parametrize(
    "steps, eval_every, expected",
    [(10, 3, [3, 6, 9, 10]), (9, 3, [3, 6, 8, 9]), (5, 0, [5]), (4, 10, [4])],
)
def test_eval_fn_called_at_the_right_steps(steps, eval_every, expected):
    calls = []
    model = make_model()

    def eval_fn(m):
        calls.append((m.training, torch.is_grad_enabled(), m is model))
        return {"val": torch.tensor(1.5), "n": 3}

    on_steps = []
    config = TrainConfig(steps=steps, batch_size=8, eval_every=eval_every)
    result = fit(model, seeded_batch, mse, config, eval_fn=eval_fn, on_step=lambda t, m: on_steps.append(t))
    assert [e["step"] for e in result.evals] == expected
    assert calls == [(False, False, True)] * len(expected)  # eval mode, no grad, the plain model
    assert model.training  # back to train mode
    assert result.evals[0] == {"step": expected[0], "val": 1.5, "n": 3.0}
    assert result.eval_history("val") == (expected, [1.5] * len(expected))
    assert on_steps == list(range(1, steps + 1))


def test_best_weights_keeps_the_lowest_finite_score_and_restores_it():
    """The score is scripted per evaluation (an infinite one never wins; a tie keeps the earlier); the
    restored model must hold the weights the model had at the best evaluation, not the last ones."""
    scores = iter([3.0, 1.0, math.inf, 1.0, 2.0, 2.5])  # evaluations at steps 2, 4, 6, 8, 9, 10
    snapshots = {}
    model = make_model()

    def eval_fn(m):
        snapshots[len(snapshots)] = [p.detach().clone() for p in m.parameters()]
        return {"val": next(scores)}

    keep = BestWeights(eval_fn, score=lambda metrics: metrics["val"])
    result = fit(model, seeded_batch, mse, TrainConfig(steps=10, batch_size=8, eval_every=2), eval_fn=keep)
    assert [e["step"] for e in result.evals] == [2, 4, 6, 8, 9, 10]
    assert [e["val"] for e in result.evals] == [3.0, 1.0, math.inf, 1.0, 2.0, 2.5]  # metrics pass through
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), snapshots[1]))
    assert keep.restore(model, result) == 4  # the first of the two 1.0s
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), snapshots[1]))


def test_best_weights_without_a_finite_score_keeps_the_last_weights():
    model = make_model()
    keep = BestWeights(lambda m: {"val": math.nan}, score=lambda metrics: metrics["val"])
    result = fit(model, seeded_batch, mse, TrainConfig(steps=6, batch_size=8, eval_every=3), eval_fn=keep)
    last = [p.detach().clone() for p in model.parameters()]
    assert keep.restore(model, result) == 6
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), last))
    with pytest.raises(ValueError, match="result has 0 evaluations, BestWeights saw 2"):
        keep.restore(model, TrainResult())
    with pytest.raises(TypeError, match="callable eval_fn and a callable score"):
        BestWeights(lambda m: {}, score="val")


def test_result_round_trips_through_json():
    config = TrainConfig(steps=6, batch_size=8, eval_every=2, log_every=2)
    result = fit(make_model(), seeded_batch, mse, config, eval_fn=lambda m: {"val": 0.5})
    again = TrainResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    assert again.final_loss == result.loss[-1]
    with pytest.raises(ValueError, match="bogus"):
        TrainResult.from_dict({**result.to_dict(), "bogus": 1})


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "field, value",
    [
        ("steps", 0),
        ("steps", 2.5),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("weight_decay", -0.1),
        ("betas", (0.9,)),
        ("betas", (0.9, 1.0)),
        ("warmup_steps", -1),
        ("warmup_steps", 11),
        ("min_lr_ratio", 1.5),
        ("grad_clip", 0.0),
        ("eval_every", -1),
        ("log_every", 0),
        ("seed", -3),
        ("steps", True),
    ],
)
def test_bad_config_names_the_field(field, value):
    kwargs = {"steps": 10, "batch_size": 4, field: value}
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**kwargs)


def test_non_finite_loss_raises_naming_the_step():
    def exploding(model, batch):
        loss = mse(model, batch)
        return loss * float("nan") if exploding.calls == 3 else loss

    def counting(model, batch):
        exploding.calls += 1
        return exploding(model, batch)

    exploding.calls = 0
    model = make_model()
    with pytest.raises(FloatingPointError, match="step 3"):
        fit(model, seeded_batch, counting, TrainConfig(steps=10, batch_size=8))
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad update was not applied

    exploding.calls = 0
    with pytest.raises(FloatingPointError, match=r"steps 1\.\.5 \(first bad: step 3\)"):
        fit(make_model(), seeded_batch, counting, TrainConfig(steps=10, batch_size=8, log_every=5))


def test_bad_arguments():
    config = TrainConfig(steps=2, batch_size=4)
    with pytest.raises(TypeError, match="model"):
        fit(lambda x: x, seeded_batch, mse, config)
    with pytest.raises(TypeError, match="config"):
        fit(make_model(), seeded_batch, mse, {"steps": 2})
    with pytest.raises(TypeError, match="tuple"):
        fit(make_model(), lambda t, r, w: torch.zeros(3), mse, config)
    with pytest.raises(ValueError, match="scalar"):
        fit(make_model(), seeded_batch, lambda m, b: m(b[0]), config)
    with pytest.raises(TypeError, match="eval_fn must return a dict"):
        fit(make_model(), seeded_batch, mse, config, eval_fn=lambda m: 1.0)


# ---------------------------------------------------------------------------------------------- devices


def test_auto_device():
    assert auto_device("cpu") == torch.device("cpu")
    assert auto_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="not a valid torch device"):
        auto_device("gpu-please")
    with pytest.raises(TypeError, match="device"):
        auto_device(3)
    if torch.cuda.is_available():
        assert auto_device().type == "cuda"
    else:
        assert auto_device() == torch.device("cpu")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            auto_device("cuda")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            auto_device("cuda:0")


def test_cpu_threads_set_once_unless_omp_set(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(train_module, "_threads_configured", False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    auto_device("cpu")
    assert calls == []  # the user's choice wins
    monkeypatch.setattr(train_module, "_threads_configured", False)
    monkeypatch.delenv("OMP_NUM_THREADS")
    auto_device("cpu")
    auto_device("cpu")
    assert len(calls) == 1 and 1 <= calls[0] <= train_module.MAX_CPU_THREADS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda():
    assert auto_device("cuda") == torch.device("cuda", 0)
    config = TrainConfig(steps=150, batch_size=32, lr=1e-2, weight_decay=0.0, warmup_steps=10, log_every=10)
    model = make_model()
    result = train(model, seeded_batch, mse, config, device="cuda", eval_fn=lambda m: {"val": 1.0})
    assert result.device == "cuda:0"
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert result.loss[-1] < 0.1 * result.loss[0]
    again = train(make_model(), seeded_batch, mse, config, device="cuda", eval_fn=lambda m: {"val": 1.0})
    assert again.loss == pytest.approx(result.loss, rel=1e-4)


def test_distributed_info_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed_info() == (0, 1, 0)
    assert is_main_process()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_info() == (1, 2, 1)
    assert not is_main_process()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK"):
        distributed_info()


# ---------------------------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_two_processes_agree(tmp_path: Path):
    """torchrun launches 2 CPU processes (gloo); the worker checks replicas agree and saw different data."""
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PAPERLAB_PROGRESS": "0"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               str(worker), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads((tmp_path / "ddp_result.json").read_text())
    assert report["world_size"] == 2
    assert report["backend"] == "gloo"
    assert report["max_param_difference_across_ranks"] == 0.0
    assert report["moved_from_init"] > 1e-3
    assert report["data_differs_across_ranks"]
    assert report["logged_loss_is_rank_mean"]
    assert report["results_equal_across_ranks"]
    assert report["examples_seen"] == 2 * report["steps"] * report["batch_size"]
    assert report["process_group_kept_after_train"]


def test_cpu_threads_pins_the_count_even_through_train():
    from paperlab import train as train_module
    from paperlab.utils import cpu_threads

    before = torch.get_num_threads()
    monkey_configured = train_module._threads_configured
    train_module._threads_configured = False  # as in a fresh process
    try:
        with cpu_threads(1):
            train_module._configure_cpu_threads()  # what the first train() call does
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == before
    finally:
        train_module._threads_configured = monkey_configured
    with pytest.raises(ValueError, match="positive number of threads"):
        with cpu_threads(0):
            pass


def test_toolkit_training_does_not_depend_on_earlier_random_draws():
    import dataclasses

    from paperlab import toolkit

    fast = toolkit.CONFIGS["fast"]
    config = dataclasses.replace(fast, n_sentences=200,
                                 train=dataclasses.replace(fast.train, steps=2, warmup_steps=1, eval_every=0))
    torch.manual_seed(1)
    first = toolkit.train_model(config, "cpu")["state_dict"]
    torch.rand(1000)  # a draw between the two runs must not change the initial weights
    second = toolkit.train_model(config, "cpu")["state_dict"]
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_seeded_batches_one_stream_per_step_and_rank():
    import dataclasses

    from paperlab.train import batch_generator, seeded_batches

    get_batch = seeded_batches(lambda g: (torch.randint(0, 2**30, (4,), generator=g),), seed=3)
    first = get_batch(7, 0, 2)[0]
    assert torch.equal(first, get_batch(7, 0, 2)[0])  # reproducible, whatever was drawn before
    others = [get_batch(7, 1, 2)[0], get_batch(8, 0, 2)[0], seeded_batches(lambda g: (
        torch.randint(0, 2**30, (4,), generator=g),), seed=4)(7, 0, 2)[0]]
    assert all(not torch.equal(first, other) for other in others)  # other rank, step, run seed
    assert torch.equal(first, torch.randint(0, 2**30, (4,), generator=batch_generator(3, 7, 0)))
    config = TrainConfig(steps=10, batch_size=4)
    assert hash(config) == hash(dataclasses.replace(config))  # frozen: usable inside hashed configs
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 3


def test_batch_seeds_never_collide_within_the_stated_range():
    import numpy as np

    from paperlab.train import batch_seed

    seeds, steps, ranks = np.meshgrid(np.arange(4), np.arange(-5, 9_895), np.arange(101), indexing="ij")
    values = batch_seed(seeds, steps, ranks).ravel()  # runs of < 9,900 steps (SAE also uses steps <= 0)
    assert np.unique(values).size == values.size


@pytest.mark.slow
def test_the_readme_torchrun_command_runs_an_experiment_to_its_end(tmp_path: Path):
    """``torchrun -m paperlab run toolkit`` (README): the experiment's seeds run in each rank's own process
    (a spawned worker pool waited forever for a rendezvous), and the results file says 2 processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PAPERLAB_PROGRESS": "0", "PAPERLAB_CACHE": str(tmp_path)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PAPERLAB_CACHE_DISABLE"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               "-m", "paperlab", "run", "toolkit", "--profile", "fast", "--device", "cpu",
               "--set", "train.steps=60", "--set", "train.warmup_steps=5", "--set", "train.eval_every=20",
               "--out", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    record = json.loads((tmp_path / "out" / "toolkit-fast.json").read_text())
    assert record["processes"] == 2
    stored = [json.loads(p.read_text()) for p in tmp_path.glob("*/*.meta.json")]
    assert stored and all(meta["world_size"] == 2 for meta in stored)  # never taken for a one-process run
