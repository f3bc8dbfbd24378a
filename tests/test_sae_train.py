"""A short SAE training run on synthetic superposition data reaches a stated NMSE, and the scaling-law fit
recovers known parameters."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from paperlab.sae.data import SyntheticConfig, make_synthetic
from paperlab.sae.experiments import fit_scaling_law, scaling_law
from paperlab.sae.train import SAE_TRAIN, RunConfig, train_sae


def test_short_topk_run_on_synthetic_data_reaches_nmse(monkeypatch, tmp_path):
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path))
    run = RunConfig(kind="topk", n_latents=256, k=8, data="synthetic",
                    synthetic=SyntheticConfig(n_features=128), lr_reference_latents=256,
                    train=dataclasses.replace(SAE_TRAIN, steps=150, batch_size=256, lr=4e-3, eval_every=50))
    sae, record = train_sae(run)
    # The mean predictor has NMSE 1; 150 steps on 128 features in 64 dimensions, k = 8, reach below 0.25.
    assert record["final"]["nmse"] < 0.25
    assert record["final"]["l0"] <= 8
    assert record["feature_recovery"] > 0.8
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
