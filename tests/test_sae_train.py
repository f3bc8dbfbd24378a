"""A short SAE training run on synthetic superposition data reaches a stated NMSE; the scaling-law fit
recovers known parameters, keeps its constraints and predicts a held-out size; the experiment's runs,
their lengths and the matched-L0 comparison."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from paperlab.sae.data import SyntheticConfig, make_synthetic
from paperlab.sae.experiments import (
    CONFIGS,
    all_runs,
    fit_scaling_law,
    holdout_prediction,
    matched_l0,
    scaling_law,
    steps_for,
)
from paperlab.sae.train import SAE_TRAIN, RunConfig, train_sae


def test_short_topk_run_on_synthetic_data_reaches_nmse(monkeypatch, tmp_path):
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path))
    run = RunConfig(kind="topk", n_latents=256, k=8, data="synthetic",
                    synthetic=SyntheticConfig(n_features=128), lr_reference_latents=256,
                    train=dataclasses.replace(SAE_TRAIN, steps=300, batch_size=256, lr=4e-3, eval_every=50))
    sae, record = train_sae(run)
    # The mean predictor has NMSE 1; 300 steps on 128 features in 64 dimensions, k = 8, reach below 0.2.
    assert record["final"]["nmse"] < 0.2
    assert record["final"]["l0"] <= 8
    assert record["final"]["mean_best_cosine"] > 0.8
    evals = record["history"]["evals"]
    assert all({"died", "revived", "auxk", "live_fraction"} <= set(e) for e in evals)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(256), atol=1e-5, rtol=0)


def test_synthetic_data_statistics():
    data = make_synthetic(SyntheticConfig(n_features=256, mean_active=4))
    assert data.probabilities.sum().item() == pytest.approx(4, rel=1e-3)
    assert (data.probabilities[:-1] >= data.probabilities[1:]).all()  # Zipf: decreasing
    torch.testing.assert_close(data.features.norm(dim=1), torch.ones(256))
    with pytest.raises(ValueError, match="mean_active"):
        make_synthetic(SyntheticConfig(n_features=4, mean_active=5))


def test_scaling_law_fit_recovers_known_parameters():
    truth = torch.tensor([-0.5, 0.26, -0.3, -0.04, -2.5, -0.1], dtype=torch.float64)
    points = []
    for k in (2, 4, 8):
        for n in (64, 128, 256, 512, 1024):
            loss = float(scaling_law(truth, torch.tensor(float(n)), torch.tensor(float(k))))
            points.append({"n_latents": n, "k": k, "nmse": loss})
    fit = fit_scaling_law(points)
    assert fit["r2_log"] > 0.999 and fit["max_relative_error"] < 0.01
    assert math.isfinite(fit["params"]["beta_n"])


def test_constrained_fit_keeps_its_signs_and_the_unconstrained_one_may_not():
    # A law whose irreducible term grows with k (eta > 0): the constrained fit must still return eta <= 0
    # and zeta <= 0; the unconstrained fit recovers the truth.
    truth = torch.tensor([-0.5, 0.2, -0.3, -0.04, -3.0, 0.5], dtype=torch.float64)
    points = [{"n_latents": n, "k": k, "nmse": float(scaling_law(truth, torch.tensor(float(n)),
                                                                  torch.tensor(float(k))))}
              for k in (2, 4, 8) for n in (64, 128, 256, 512, 1024)]
    constrained = fit_scaling_law(points)["params"]
    assert constrained["eta"] <= 0 and constrained["zeta"] <= 0
    free = fit_scaling_law(points, constrained=False)
    assert free["max_relative_error"] < 0.01 and free["params"]["eta"] > 0


def test_holdout_prediction_of_an_exact_law_is_exact_and_beats_the_naive_forecast():
    truth = torch.tensor([-0.3, 0.1, -0.4, -0.05, -2.5, -0.2], dtype=torch.float64)
    points = [{"n_latents": n, "k": k, "seed": seed,
               "nmse": float(scaling_law(truth, torch.tensor(float(n)), torch.tensor(float(k))))
               * (1 + 0.002 * seed)}
              for seed in (0, 1) for k in (2, 4, 8) for n in (64, 128, 256, 512, 1024)]
    result = holdout_prediction(points, 1024)
    assert [s["seed"] for s in result["seeds"]] == [0, 1]
    for seed in result["seeds"]:
        assert seed["error"] < 0.01 < seed["naive_error"]
        assert {r["k"] for r in seed["rows"]} == {2, 4, 8}


def test_matched_l0_interpolates_topk_at_the_relu_sparsity():
    topk = [{"l0": 2.0, "nmse": 0.4, "recovered": 0.2}, {"l0": 8.0, "nmse": 0.1, "recovered": 0.6}]
    relu = [{"l0": 4.0, "nmse": 0.5, "recovered": 0.1}, {"l0": 16.0, "nmse": 0.05, "recovered": 0.9},
            {"l0": 1.0, "nmse": 0.9, "recovered": 0.0}]
    matched = matched_l0(topk, relu)
    assert len(matched) == 1  # only the point inside TopK's L0 range
    assert matched[0]["l0"] == 4.0 and matched[0]["relu"] == 0.5
    assert matched[0]["topk"] == pytest.approx(0.2)  # geometric midpoint of 0.4 and 0.1 at log-midpoint L0
    assert matched_l0(topk, relu, key="recovered")[0]["topk"] == pytest.approx(0.4)  # linear in the value


def test_steps_grow_as_n_to_the_0_6_and_every_run_is_listed_once():
    config = CONFIGS["full"]
    largest = max(config.sizes)
    assert steps_for(config, largest) == config.train.steps
    assert steps_for(config, largest // 32) == pytest.approx(config.train.steps / 32 ** 0.6, abs=1)
    runs = all_runs(config)
    assert len(runs) == len(set(runs))
    assert {r.train.seed for r in runs} == set(config.seeds)
    lm = [r for r in runs if r.data == "lm"]
    assert lm and all(r.n_latents >= 8 * 64 for r in lm)  # overcomplete: n >= 8 d on the GPT (d = 64)


def test_train_runs_trains_each_run_once_even_without_the_cache(monkeypatch, tmp_path):
    from paperlab.sae import train as sae_train

    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("PAPERLAB_CACHE_DISABLE", "1")
    monkeypatch.setattr(sae_train, "_TRAINED", {})
    calls = []
    real = sae_train.train_sae

    def counting(run, device="cpu"):
        calls.append(run)
        return real(run, device)

    monkeypatch.setattr(sae_train, "train_sae", counting)
    run = RunConfig(n_latents=32, k=2, synthetic=SyntheticConfig(n_features=32),
                    train=dataclasses.replace(SAE_TRAIN, steps=12, eval_every=4, warmup_steps=2))
    sae_train.train_runs([run, run], device="cpu")  # one job: trained in this process
    sae, _ = sae_train.load_sae(run)
    assert calls == [run] and sae.n_latents == 32


@pytest.mark.parametrize("change,match", [
    (dict(sizes=(64, 128)), "sizes"),
    (dict(ks=(2, 128)), "ks"),
    (dict(lm_ks=(4, 4096)), "lm_ks"),
    (dict(seeds=(0, -1)), "seeds"),
    (dict(steps_exponent=1.5), "steps_exponent"),
])
def test_bad_experiment_configs_fail_naming_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(CONFIGS["full"], **change)


def test_an_sae_seeded_like_the_synthetic_data_does_not_start_on_its_features():
    # SAE seed s and data seed s once drew the same torch.randn(n, d): the decoder started on the answer.
    from paperlab.sae.data import SyntheticConfig, make_synthetic
    from paperlab.sae.metrics import feature_recovery
    from paperlab.sae.model import TopKSAE

    for seed in (0, 1, 2):
        features = make_synthetic(SyntheticConfig(n_features=256, seed=seed)).features
        sae = TopKSAE(64, 256, 4, seed=seed)
        _, best = feature_recovery(sae.W_dec.detach(), features)
        assert float(best.max()) < 0.9  # random directions in d = 64: best cosines around 0.4-0.6


def test_the_history_logs_how_often_dead_latents_are_positive():
    # dead_tokens of one batch: a latent that misses a batch is dead; with k = 1 of 64 many miss every batch
    run = RunConfig(n_latents=64, k=1, k_aux=8, dead_tokens=64, synthetic=SyntheticConfig(n_features=32),
                    train=dataclasses.replace(SAE_TRAIN, steps=20, batch_size=64, eval_every=5,
                                              warmup_steps=2))
    sae, record = train_sae(run)
    evals = record["history"]["evals"]
    with_dead = [e for e in evals if e["dead_fraction"] > 0]
    assert with_dead and all(0.0 <= e["dead_positive"] <= 1.0 for e in with_dead)
    assert all("dead_positive" not in e for e in evals if e["dead_fraction"] == 0)
    assert all(e["died"] >= 0 and e["revived"] >= 0 for e in evals)
    # the last evaluation's share, recomputed from the returned model on the same validation tokens
    last = evals[-1]
    from paperlab.sae.train import _data
    val = _data(run)[1][:2048]
    dead = sae.dead_mask
    assert bool(dead.any()) and last["dead_fraction"] == pytest.approx(float(dead.float().mean()))
    with torch.no_grad():
        expected = float((sae.pre_activations(val)[:, dead] > 0).float().mean())
    assert last["dead_positive"] == pytest.approx(expected)


def test_shared_batches_and_the_one_pass_evaluation_change_no_number(monkeypatch):
    # train_runs' workers draw each (seed, step) batch once for all runs of that seed, and the per-window
    # evaluation computes the pre-activations once: both must give exactly the numbers of the plain run.
    from paperlab.sae import train as sae_train
    from paperlab.sae.model import TopKSAE
    from paperlab.utils import cpu_threads

    runs = [RunConfig(n_latents=64, k=2, k_aux=8, dead_tokens=64, synthetic=SyntheticConfig(n_features=32),
                      train=dataclasses.replace(SAE_TRAIN, steps=20, batch_size=64, eval_every=5,
                                                warmup_steps=2)),
            RunConfig(kind="relu", n_latents=64, l1_coefficient=0.3, k_aux=0, dead_tokens=64,
                      synthetic=SyntheticConfig(n_features=32),
                      train=dataclasses.replace(SAE_TRAIN, steps=20, batch_size=64, eval_every=5,
                                                warmup_steps=2))]
    plain = [train_sae(run) for run in runs]
    monkeypatch.setattr(sae_train, "_SHARED_BATCHES", {})
    shared = [train_sae(run) for run in runs]
    assert sae_train._SHARED_BATCHES  # the batches were drawn once and kept
    shared_again = train_sae(runs[0])  # the same seed: every batch from the shared store
    for (sae_a, rec_a), (sae_b, rec_b) in zip(plain, shared + [shared_again]):
        assert rec_a["final"] == rec_b["final"] and rec_a["history"]["evals"] == rec_b["history"]["evals"]
        assert all(torch.equal(a, b)
                   for a, b in zip(sae_a.state_dict().values(), sae_b.state_dict().values()))
    # the last evaluation (one pass) against the separate calls it replaces, bit for bit
    for (sae, record), run in zip(plain, runs):
        val = sae_train._data(run)[1][:2048]
        last = record["history"]["evals"][-1]
        with cpu_threads(1):  # as train_sae computes them
            expected = sae_train.evaluate(sae, val)
        assert {key: last[key] for key in expected} == expected
        if isinstance(sae, TopKSAE):
            with torch.no_grad(), cpu_threads(1):
                auxk = float(sae.auxk_loss(val, sae(val), sae.pre_activations(val)))
            assert bool(sae.dead_mask.any()) and last["auxk"] == auxk


def test_train_runs_runs_extra_jobs_after_the_runs_and_returns_their_results():
    from paperlab.sae import train as sae_train

    assert sae_train.train_runs([], device="cpu", extra=[(math.sqrt, (4.0,))]) == [2.0]
    assert sae_train.train_runs([], device="cpu") == []


def test_downstream_judges_each_sae_against_its_own_untrained_twin(monkeypatch):
    """The downstream null: per k and seed, the same SAE before training, spliced in the same way. An SAE
    that is its own untrained twin has no effect over the null; an SAE that reconstructs perfectly
    recovers the whole loss, and its effect is what its twin leaves."""
    from paperlab.nn import GPT, GPTConfig
    from paperlab.sae import experiments
    from paperlab.sae.metrics import downstream_loss, fraction_of_loss_recovered, nmse
    from paperlab.sae.train import build_sae

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, context_length=8, d_model=64, n_layers=2, n_heads=4)).eval()
    idx = torch.randint(0, 20, (16, 8))
    targets = idx.clone()  # the current token: the tied embedding makes even a random GPT predict it
    with torch.no_grad():
        _, hidden = model(idx, return_hidden=True)
    h = hidden[1].reshape(-1, 64)
    normalised = (h - h.mean(-1, keepdim=True)) / (h.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    data = {"train": {"activations": normalised},
            "val": {"idx": idx, "targets": targets, "activations": normalised}}
    config = dataclasses.replace(CONFIGS["fast"], lm_ks=(2, 4), lm_size=128, seeds=(0, 1, 2))
    flat = [{"step": 10 * i, "nmse": 1.0} for i in range(1, 11)]
    record = {"final": {"nmse": 0.1}, "history": {"evals": flat}}
    monkeypatch.setattr(experiments, "_lm", lambda config, dev: (model, None))
    monkeypatch.setattr(experiments, "lm_activations", lambda lm: data)

    def twin(run):  # the null, written out here rather than taken from the package
        sae = build_sae(run)
        sae.init_b_pre(normalised[:1024])
        sae.scale_encoder_(seed=run.train.seed)
        return sae.eval()

    monkeypatch.setattr(experiments, "load_sae", lambda run, dev: (twin(run), record))
    out = experiments.downstream(config, device="cpu")
    assert [(s["k"], s["seed"]) for s in out["saes"]] == [(k, s) for k in (2, 4) for s in (0, 1, 2)]
    nulls = []
    for s in out["saes"]:
        null = twin(experiments._lm_run(config, s["k"], s["seed"]))
        loss = downstream_loss(model, null, 1, idx, targets)
        expected = fraction_of_loss_recovered(loss, out["clean"], out["mean_ablation"])
        assert s["untrained_fraction_recovered"] == pytest.approx(expected, abs=1e-9)
        assert s["over_null"] == pytest.approx(0.0, abs=1e-9)  # paired with its own seed's twin
        assert s["converged"] is True  # a flat curve
        with torch.no_grad():
            twin_nmse = float(nmse(null(normalised), normalised))
        assert s["untrained_nmse"] == pytest.approx(twin_nmse, rel=1e-6)
        nulls.append(s["untrained_fraction_recovered"])
    assert len({round(v, 9) for v in nulls}) == len(nulls)  # every k and seed has its own null
    assert out["splice_only"] < 1.0

    class Perfect(torch.nn.Module):
        def forward(self, x, k=None):
            return x

    monkeypatch.setattr(experiments, "load_sae", lambda run, dev: (Perfect(), record))
    perfect = experiments.downstream(config, device="cpu")
    for s, null in zip(perfect["saes"], nulls):
        assert s["fraction_recovered"] == pytest.approx(1.0, abs=1e-4)
        assert s["over_null"] == pytest.approx(1.0 - null, abs=1e-4)
