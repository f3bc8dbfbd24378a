"""Mamba-2 block and LM; MQAR data; the experiment's config and registry object."""

from __future__ import annotations

import math

import pytest
import torch

from paperlab.ssd import experiments
from paperlab.ssd.model import Mamba2Block, Mamba2Config, Mamba2LM, causal_depthwise_conv
from paperlab.ssd.mqar import IGNORE, mqar_accuracy, mqar_batch, mqar_scores


def test_block_algorithms_agree_and_shapes():
    torch.manual_seed(0)
    config = Mamba2Config(d_model=16, d_state=8, headdim=8, ngroups=2, chunk_size=8)
    block = Mamba2Block(config).double()
    u = torch.randn(2, 21, 16, dtype=torch.float64)
    outs = {}
    for algorithm in ("chunked", "recurrent", "quadratic"):
        block.algorithm = algorithm
        outs[algorithm] = block(u)
    assert outs["chunked"].shape == u.shape
    torch.testing.assert_close(outs["chunked"], outs["recurrent"], rtol=0, atol=1e-10)
    torch.testing.assert_close(outs["quadratic"], outs["recurrent"], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        block.algorithm = "fft"


def test_block_is_causal_and_its_parameters():
    torch.manual_seed(0)
    config = Mamba2Config(d_model=16, d_state=4, headdim=8, chunk_size=4)
    block = Mamba2Block(config).double()
    u = torch.randn(1, 12, 16, dtype=torch.float64)
    u2 = u.clone()
    u2[:, 7:] += 1
    torch.testing.assert_close(block(u)[:, :7], block(u2)[:, :7], rtol=0, atol=1e-12)
    dt = torch.nn.functional.softplus(block.dt_bias)
    assert ((dt >= config.dt_min * 0.99) & (dt <= config.dt_max * 1.01)).all()
    A = torch.exp(block.A_log)
    assert ((A >= 1) & (A <= 16)).all() and (block.D == 1).all()
    assert block.in_proj.out_features == 2 * 32 + 2 * 4 + 4  # z, x (d_inner = 32), B, C (N = 4), dt (4 heads)


def test_config_errors():
    with pytest.raises(ValueError, match="divisible by headdim"):
        Mamba2Config(d_model=10, headdim=8)
    with pytest.raises(ValueError, match="divisible by ngroups"):
        Mamba2Config(d_model=16, headdim=8, ngroups=3)
    with pytest.raises(ValueError, match="d_state must be a positive integer"):
        Mamba2Config(d_state=0)


def test_lm_trains_a_little():
    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(d_model=16, d_state=4, headdim=8, vocab_size=32, chunk_size=8))
    idx = torch.randint(0, 32, (4, 16))
    target = idx.roll(-1, 1)
    logits = model(idx)
    assert logits.shape == (4, 16, 32)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = model.loss(idx, target).item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(idx, target).backward()
        opt.step()
    assert model.loss(idx, target).item() < first - 0.5
    with pytest.raises(ValueError, match="idx must be a 2-D"):
        model(torch.zeros(3, dtype=torch.long))


def test_mqar_batch_structure():
    x, y = mqar_batch(8, 32, 5, 64, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 32)
    for row_x, row_y in zip(x, y, strict=True):
        pairs = {int(row_x[2 * i]): int(row_x[2 * i + 1]) for i in range(5)}
        assert len(pairs) == 5 and all(1 <= k < 32 <= v < 64 for k, v in pairs.items())
        queries = (row_y != IGNORE).nonzero().flatten().tolist()
        assert len(queries) == 5 and min(queries) >= 10
        for q in queries:
            assert pairs[int(row_x[q])] == int(row_y[q])  # target is the key's value
    with pytest.raises(ValueError, match="needs seq_len"):
        mqar_batch(1, 10, 5, 64, torch.Generator())


def test_mqar_accuracy_of_an_oracle():
    x, y = mqar_batch(4, 24, 3, 32, torch.Generator().manual_seed(1))

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx):
            logits = torch.zeros(*idx.shape, 32)
            target = torch.where(y == IGNORE, 0, y)
            return logits.scatter(-1, target[..., None], 1.0)

    assert mqar_accuracy(Oracle(), x, y) == 1.0


def test_experiment_configs_and_equivalence():
    assert set(experiments.CONFIGS) == {"fast", "full"}
    assert experiments.EXPERIMENT.name == "ssd"
    full = experiments.CONFIGS["full"]
    assert max(full.cost.lengths) >= 8192 and len(full.mqar.state_sizes) >= 3
    m = full.mqar
    # the paper's proportions: a quarter of the tokens are pairs, state sizes from below to above the pairs
    assert 4 * m.n_pairs == m.seq_len and m.n_layers == 2 and len(m.seeds) >= 3
    assert min(m.state_sizes) < m.n_pairs < max(m.state_sizes) and m.n_pairs in m.state_sizes
    assert len(m.mamba_lrs) == len(m.attention_lrs) >= 2 and m.n_test >= 512
    eq = experiments.equivalence(torch.float64)
    assert all(v < experiments.TOLERANCE["float64"] for algo in eq.values() for v in algo.values())


def test_mqar_config_gives_both_families_the_same_tuning():
    with pytest.raises(ValueError, match="attention_lrs must be as many learning rates as mamba_lrs"):
        experiments.MQARConfig(mamba_lrs=(1e-3, 1e-2), attention_lrs=(1e-3,))
    with pytest.raises(ValueError, match="seeds must be distinct seeds"):
        experiments.MQARConfig(seeds=(0, 0, 1))
    with pytest.raises(ValueError, match="kind must be 'mamba' or 'attention'"):
        experiments.MQARRun(experiments.MQARConfig(), "rnn", None, experiments.MQARConfig().train)


def _tried(*rates_and_accuracies):
    return [{"lr": lr, "val_accuracy": a, "curve": {"val_loss": [1.0]}} for lr, a in rates_and_accuracies]


def test_next_rate_extends_the_grid_until_the_best_rate_is_bracketed():
    ladder = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    assert experiments.next_rate(_tried((3e-3, 0.5), (1e-2, 0.9), (3e-2, 0.6)), ladder) is None  # inside
    assert experiments.next_rate(_tried((3e-3, 0.5), (1e-2, 0.6), (3e-2, 0.9)), ladder) == 1e-1  # top edge
    assert experiments.next_rate(_tried((3e-3, 0.9), (1e-2, 0.6), (3e-2, 0.5)), ladder) == 1e-3  # bottom
    assert experiments.next_rate(_tried((3e-2, 0.6), (1e-1, 0.9)), ladder) is None  # the ladder ends
    assert experiments.next_rate(_tried((1e-2, 0.9)), ladder) == 3e-2  # one rate: above first, then below
    assert experiments.next_rate(_tried((1e-2, 0.9), (3e-2, 0.8)), ladder) == 3e-3
    assert experiments.next_rate(_tried((1e-1, 0.9)), ladder) == 3e-2  # one rate, at the ladder's top
    # equal accuracy: the lower final validation loss wins (here 0.01, inside the rates tried)
    tie = [{"lr": lr, "val_accuracy": a, "curve": {"val_loss": [0.9, loss]}}
           for lr, a, loss in ((3e-3, 0.9, 0.5), (1e-2, 0.9, 0.3), (3e-2, 0.5, 1.0))]
    assert experiments.next_rate(tie, ladder) is None
    tie[0]["curve"]["val_loss"][-1] = 0.2  # now 0.003 wins the tie, at the bottom edge
    assert experiments.next_rate(tie, ladder) == 1e-3
    off_ladder = r"MQARConfig.mamba_lrs must be rates on lr_ladder .*not on it: \[0.02\]"
    with pytest.raises(ValueError, match=off_ladder):
        experiments.MQARConfig(mamba_lrs=(1e-2, 2e-2, 3e-2))


def test_mqar_sweep_tries_a_further_rate_when_the_best_is_at_the_edge(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("PAPERLAB_PROGRESS", "0")
    ladder = (1e-4, 1e-3, 3e-2)
    config = experiments.MQARConfig(
        seq_len=8, n_pairs=2, vocab_size=32, width=16, state_sizes=(2,), seeds=(0, 1),
        mamba_lrs=(1e-3,), attention_lrs=(1e-3,), lr_ladder=ladder, n_val=16, n_test=16,
        train=experiments.TrainConfig(steps=6, batch_size=4, warmup_steps=1, eval_every=1))
    result = experiments.mqar_sweep(config, workers=1)
    models = [(result["sweep"]["attention"], result["lr"]["attention"], result["attention"]),
              (result["sweep"]["mamba"]["2"], result["lr"]["mamba"]["2"], result["mamba"]["2"])]
    for sweep, chosen, runs in models:
        rates = [r["lr"] for r in sweep]
        assert len(rates) >= 2 and rates == sorted(rates) and set(rates) <= set(ladder)  # the grid grew
        assert experiments.next_rate(sweep, ladder) is None  # and stopped only once the best is bracketed
        assert chosen in (ladder[0], ladder[-1]) or min(rates) < chosen < max(rates)
        assert [r["seed"] for r in runs] == [0, 1] and {r["lr"] for r in runs} == {chosen}
    # two processes, each taking the next run as it frees, and a fresh cache: the same sweep
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path / "two-workers"))
    parallel = experiments.mqar_sweep(config, workers=2)

    def without_times(value):
        if isinstance(value, dict):
            return {k: without_times(v) for k, v in value.items() if k != "seconds"}
        return [without_times(v) for v in value] if isinstance(value, list) else value

    assert without_times(parallel) == without_times(result)


def test_mqar_scores_loss_and_accuracy():
    x, y = mqar_batch(4, 24, 3, 32, torch.Generator().manual_seed(1))

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx):
            return torch.zeros(*idx.shape, 32)

    scores = mqar_scores(Uniform(), x, y)
    assert abs(scores["loss"] - math.log(32)) < 1e-5  # uniform logits: log(vocab) nats per query


def test_mqar_sweep_tunes_then_trains_the_other_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("PAPERLAB_PROGRESS", "0")
    config = experiments.MQARConfig(
        seq_len=8, n_pairs=2, vocab_size=32, width=16, state_sizes=(1, 2), seeds=(0, 1, 2),
        mamba_lrs=(1e-3, 1e-2), attention_lrs=(1e-3, 1e-2), lr_ladder=(1e-3, 1e-2), n_val=16, n_test=16,
        train=experiments.TrainConfig(steps=6, batch_size=4, warmup_steps=1, eval_every=1))
    result = experiments.mqar_sweep(config, workers=1)
    assert [r["lr"] for r in result["sweep"]["attention"]] == [1e-3, 1e-2]
    for n in ("1", "2"):
        runs = result["mamba"][n]
        assert [r["seed"] for r in runs] == [0, 1, 2]
        assert {r["lr"] for r in runs} == {result["lr"]["mamba"][n]}
        best = max(result["sweep"]["mamba"][n],
                   key=lambda r: (r["val_accuracy"], -r["curve"]["val_loss"][-1]))
        assert runs[0] == best  # the first seed's run is the tuning run itself
    assert [r["seed"] for r in result["attention"]] == [0, 1, 2]
    assert all(0 <= a <= 1 for a in experiments.accuracies(result["attention"]))
    again = experiments.mqar_sweep(config, workers=1)  # every run comes from the cache
    assert again == result


def test_causal_depthwise_conv_matches_conv1d():
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3).double()
    u = torch.randn(2, 9, 6, dtype=torch.float64)
    expected = conv(u.transpose(1, 2))[..., :9].transpose(1, 2)
    assert torch.allclose(causal_depthwise_conv(u, conv.weight, conv.bias), expected, atol=1e-12)
    # causal: changing the last position changes nothing before it
    v = u.clone()
    v[:, -1] += 1.0
    assert torch.equal(causal_depthwise_conv(v, conv.weight, None)[:, :-1],
                       causal_depthwise_conv(u, conv.weight, None)[:, :-1])


class _RuleModel(torch.nn.Module):
    """An MQAR 'model' that follows a rule on the input: ``recall`` answers each query with its key's value;
    otherwise it answers with the first listed value not yet asked for (the shortcut)."""

    def __init__(self, n_pairs: int, vocab_size: int, recall: bool):
        super().__init__()
        self.n_pairs, self.vocab_size, self.recall = n_pairs, vocab_size, recall
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, self.vocab_size)
        n = self.n_pairs
        for b, row in enumerate(idx.tolist()):
            pairs = dict(zip(row[0:2 * n:2], row[1:2 * n:2]))
            remaining = row[1:2 * n:2]  # the listed values not yet asked for (a multiset)
            for t in range(2 * n, len(row)):
                if row[t] in pairs and (t - 2 * n) % 2 == 0:
                    logits[b, t, pairs[row[t]] if self.recall else remaining[0]] = 1.0
                    if t + 1 < len(row) and row[t + 1] in remaining:
                        remaining.remove(row[t + 1])
        return logits


def test_accuracy_by_query_tells_recall_from_the_shortcut():
    task = experiments.MQARConfig(seq_len=12, n_pairs=3, vocab_size=64, state_sizes=(1, 3, 4), n_test=1500)
    assert experiments.elimination_guess(3) == [1 / 3, 1 / 2, 1.0]
    assert experiments.accuracy_by_query(_RuleModel(3, 64, recall=True), task) == [1.0, 1.0, 1.0]
    shortcut = experiments.accuracy_by_query(_RuleModel(3, 64, recall=False), task)
    # values are drawn with replacement, so a repeated value makes the guess right a little more often
    for measured, expected in zip(shortcut, experiments.elimination_guess(3)):
        assert expected - 0.01 <= measured <= expected + 0.06, shortcut


def test_set_algorithm_switches_every_block_and_refuses_unknown_names():
    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(d_model=16, d_state=4, headdim=8, vocab_size=32, chunk_size=4,
                                  n_layers=2)).double()
    idx = torch.randint(0, 32, (2, 13))
    logits = {}
    for algorithm in ("chunked", "recurrent", "quadratic"):
        model.set_algorithm(algorithm)
        assert [block.algorithm for block in model.blocks] == [algorithm] * 2
        logits[algorithm] = model(idx)
    torch.testing.assert_close(logits["chunked"], logits["recurrent"], rtol=0, atol=1e-10)
    torch.testing.assert_close(logits["quadratic"], logits["recurrent"], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        model.set_algorithm("fft")
    assert [block.algorithm for block in model.blocks] == ["quadratic"] * 2  # unchanged
