"""The SAE chapter's experiments: each function takes the chapter's :class:`SAEExperimentConfig` and
returns plain results (numbers, lists), every SAE training run going through the artifact cache
(:func:`paperlab.sae.train.run_cached`), so runs shared between experiments are trained once.

Data: the scaling law, the MSE-L0 frontier, dead latents, feature recovery and Multi-TopK use the
synthetic superposition data (:class:`paperlab.sae.data.SyntheticConfig`: more features than dimensions,
Zipf frequencies, known directions); downstream loss and probe loss use the tiny GPT's residual stream
(:class:`paperlab.sae.data.LMDataConfig`; the **fast** toolkit GPT in both profiles: it trains in seconds,
so a cold full run stays within budget, and its residual stream is rich enough for these two metrics).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from paperlab import toolkit
from paperlab.config import (
    check_int_tuple,
    check_ints,
    check_number_tuple,
    check_numbers,
    check_type,
)
from paperlab.experiments import Experiment
from paperlab.sae.data import LMDataConfig, SyntheticConfig, lm_activations, make_synthetic
from paperlab.sae.metrics import binary_entropy, downstream_loss, nmse, probe_loss
from paperlab.sae.train import SAE_TRAIN, RunConfig, evaluate, load_sae, run_cached
from paperlab.train import TrainConfig, auto_device
from paperlab.utils import cpu_threads

__all__ = ["SAEExperimentConfig", "CONFIGS", "frontier", "scaling", "fit_scaling_law", "scaling_law",
           "dead_latents", "recovery", "multi_topk", "downstream", "probe", "run", "EXPERIMENT"]


@dataclass(frozen=True)
class SAEExperimentConfig:
    synthetic: SyntheticConfig = SyntheticConfig()
    lm: LMDataConfig = LMDataConfig(n_train_sentences=4_000, n_val_sentences=500)
    train: TrainConfig = dataclasses.replace(SAE_TRAIN, steps=500)
    lr_reference_latents: int = 256
    dead_tokens: int = 25_000
    k_aux: int = 32  # d_model / 2
    sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)  # n_latents: 16x
    ks: tuple[int, ...] = (2, 4, 8)
    frontier_size: int = 512
    frontier_ks: tuple[int, ...] = (2, 4, 8, 16)
    l1_coefficients: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    recovery_k: int = 4
    recovery_l1: float = 1.0
    multi_k: int = 4
    test_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    lm_size: int = 64
    lm_ks: tuple[int, ...] = (1, 2, 4, 8)
    lm_steps: int = 400

    def __post_init__(self):
        check_type(self, "synthetic", SyntheticConfig)
        check_type(self, "lm", LMDataConfig)
        check_type(self, "train", TrainConfig)  # TrainConfig checks its own fields
        check_ints(self, "lr_reference_latents", "dead_tokens", "frontier_size", "lm_size", "lm_steps")
        check_ints(self, "k_aux", low=0)
        check_numbers(self, "recovery_l1", low=0)
        check_number_tuple(self, "l1_coefficients", low=0)
        check_int_tuple(self, "sizes", min_len=2)  # the scaling law is fitted across sizes
        smallest = min(self.sizes)  # every k is used with every size of its sweep
        check_int_tuple(self, "ks", high=smallest)
        check_ints(self, "recovery_k", high=smallest)
        check_int_tuple(self, "frontier_ks", high=self.frontier_size)
        check_int_tuple(self, "test_ks", high=self.frontier_size)
        check_ints(self, "multi_k", high=self.frontier_size)
        check_int_tuple(self, "lm_ks", high=self.lm_size)


CONFIGS = {
    "fast": SAEExperimentConfig(
        synthetic=SyntheticConfig(n_features=512),
        lm=LMDataConfig(n_train_sentences=2_000, n_val_sentences=300),
        train=dataclasses.replace(SAE_TRAIN, steps=100), dead_tokens=6_000, sizes=(32, 64, 128, 256, 512),
        ks=(2, 4, 8), frontier_size=128, frontier_ks=(2, 4, 8, 16), l1_coefficients=(0.5, 1.0, 2.0),
        lm_ks=(1, 4), lm_steps=100, test_ks=(1, 2, 4, 8, 16),
    ),
    "full": SAEExperimentConfig(synthetic=SyntheticConfig(n_features=1024)),
}


def _run(config: SAEExperimentConfig, steps: int | None = None, **overrides) -> RunConfig:
    """The run of the config's settings with ``overrides`` (and ``steps`` instead of ``train.steps``)."""
    train = config.train if steps is None else dataclasses.replace(config.train, steps=steps)
    base = RunConfig(data="synthetic", synthetic=config.synthetic, lm=config.lm, train=train,
                     lr_reference_latents=config.lr_reference_latents,
                     dead_tokens=config.dead_tokens, k_aux=config.k_aux)
    return dataclasses.replace(base, **overrides)


def _summary(run: RunConfig, device=None) -> dict:
    record = run_cached(run, device)["record"]
    return {"n_latents": run.n_latents, "k": run.k, "l1_coefficient": run.l1_coefficient, **record["final"],
            "feature_recovery": record.get("feature_recovery")}


# ------------------------------------------------------------------------------------- 1. frontier
@cpu_threads(1)
def frontier(config: SAEExperimentConfig, device=None) -> dict:
    """NMSE vs L0 at ``frontier_size`` latents: TopK at several k, ReLU+L1 at several coefficients."""
    topk = [_summary(_run(config, n_latents=config.frontier_size, k=k), device) for k in config.frontier_ks]
    relu = [_summary(_run(config, kind="relu", n_latents=config.frontier_size, l1_coefficient=c), device)
            for c in config.l1_coefficients]
    return {"topk": topk, "relu": relu}


def below_frontier(topk: list[dict], relu: list[dict]) -> list[bool]:
    """For each ReLU point: does TopK (log-log interpolated at the same L0) reach a lower NMSE?"""
    xs = [math.log(p["l0"]) for p in topk]
    ys = [math.log(p["nmse"]) for p in topk]
    out = []
    for p in relu:
        x = math.log(max(p["l0"], 1e-9))
        if not xs[0] <= x <= xs[-1]:
            continue  # outside the TopK range: no comparison at equal L0
        i = max(j for j in range(len(xs)) if xs[j] <= x)
        j = min(i + 1, len(xs) - 1)
        t = 0.0 if j == i else (x - xs[i]) / (xs[j] - xs[i])
        out.append(math.exp(ys[i] + t * (ys[j] - ys[i])) < p["nmse"])
    return out


# -------------------------------------------------------------------------------- 2. scaling law
@cpu_threads(1)
def scaling(config: SAEExperimentConfig, device=None) -> dict:
    """Final NMSE for every (n_latents, k) of the grid, and the fitted L(n, k)."""
    points = [_summary(_run(config, n_latents=n, k=k), device) for k in config.ks for n in config.sizes]
    return {"points": points, "fit": fit_scaling_law(points)}


def scaling_law(params: torch.Tensor, n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``L(n, k) = exp(alpha + beta_k log k + beta_n log n + gamma log k log n) + exp(zeta + eta log k)``."""
    alpha, beta_k, beta_n, gamma, zeta, eta = params
    ln, lk = n.log(), k.log()
    return torch.exp(alpha + beta_k * lk + beta_n * ln + gamma * lk * ln) + torch.exp(zeta + eta * lk)


def fit_scaling_law(points: list[dict], restarts: int = 8) -> dict:
    """Least squares on log L with L-BFGS (float64) from several starts; returns the parameters and the
    goodness of fit: R^2 of log L and the largest relative error."""
    n = torch.tensor([p["n_latents"] for p in points], dtype=torch.float64)
    k = torch.tensor([p["k"] for p in points], dtype=torch.float64)
    y = torch.tensor([p["nmse"] for p in points], dtype=torch.float64).log()
    generator = torch.Generator().manual_seed(0)
    best = None
    for restart in range(restarts):
        floor = math.log(float(y.exp().min()) / 2)
        start = torch.tensor([0.0, 0.0, -0.5, 0.0, floor, 0.0], dtype=torch.float64)
        if restart:
            start = start + 0.5 * torch.randn(6, generator=generator, dtype=torch.float64)
        params = start.clone().requires_grad_()
        optimizer = torch.optim.LBFGS([params], max_iter=500, line_search_fn="strong_wolfe")

        def closure(optimizer=optimizer, params=params):
            optimizer.zero_grad()
            loss = (scaling_law(params, n, k).log() - y).pow(2).mean()
            loss.backward()
            return loss

        try:
            optimizer.step(closure)
        except RuntimeError:  # pragma: no cover - a diverging start
            continue
        with torch.no_grad():
            loss = float((scaling_law(params, n, k).log() - y).pow(2).mean())
        if math.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, params.detach().clone())
    loss, params = best
    with torch.no_grad():
        predicted = scaling_law(params, n, k)
    r2 = 1 - loss / float((y - y.mean()).pow(2).mean())
    names = ["alpha", "beta_k", "beta_n", "gamma", "zeta", "eta"]
    return {"params": dict(zip(names, params.tolist())), "r2_log": r2,
            "max_relative_error": float(((predicted - y.exp()) / y.exp()).abs().max()),
            "predicted": predicted.tolist()}


# ------------------------------------------------------------------------------- 3. dead latents
MITIGATIONS = {"none": dict(tied_init=False, k_aux=0), "tied init": dict(tied_init=True, k_aux=0),
               "AuxK": dict(tied_init=False), "tied init + AuxK": dict(tied_init=True)}


@cpu_threads(1)
def dead_latents(config: SAEExperimentConfig, device=None) -> dict:
    """Dead fraction over training at the largest size, with and without the two mitigations."""
    n, k = max(config.sizes), config.recovery_k
    out = {}
    for name, overrides in MITIGATIONS.items():
        run = _run(config, n_latents=n, k=k, **overrides)
        record = run_cached(run, device)["record"]
        steps = [e["step"] for e in record["history"]["evals"]]
        out[name] = {"tokens": [s * config.train.batch_size for s in steps],
                     "dead_fraction": [e["dead_fraction"] for e in record["history"]["evals"]],
                     "final_nmse": record["final"]["nmse"], "final_dead": record["final"]["dead_fraction"]}
    return {"n_latents": n, "k": k, "dead_tokens": config.dead_tokens, "runs": out}


# ---------------------------------------------------------------------------- 4. feature recovery
@cpu_threads(1)
def recovery(config: SAEExperimentConfig, device=None) -> dict:
    """Mean best cosine between true features and decoder directions, against n_latents."""
    topk = [_summary(_run(config, n_latents=n, k=config.recovery_k), device) for n in config.sizes]
    relu = [_summary(_run(config, kind="relu", n_latents=n, l1_coefficient=config.recovery_l1), device)
            for n in config.sizes]
    return {"n_features": config.synthetic.n_features, "topk": topk, "relu": relu}


# ----------------------------------------------------------------------------------- 5. Multi-TopK
@cpu_threads(1)
def multi_topk(config: SAEExperimentConfig, device=None) -> dict:
    """NMSE against the k used at test time, for a TopK and a Multi-TopK SAE trained at ``multi_k``."""
    dev = auto_device(device)
    synthetic = make_synthetic(config.synthetic)
    x = synthetic.sample(4096, torch.Generator().manual_seed(10_000 + config.synthetic.seed)).to(dev)
    out = {"train_k": config.multi_k, "test_ks": list(config.test_ks)}
    for name, multi in (("TopK", False), ("Multi-TopK", True)):
        run = _run(config, n_latents=config.frontier_size, k=config.multi_k, multi_topk=multi)
        sae = load_sae(run, dev)[0].to(dev)
        with torch.no_grad():
            out[name] = [float(nmse(sae(x, k), x)) for k in config.test_ks]
    return out


# ------------------------------------------------------------------------- 6, 7. the tiny LM's metrics
def _lm_runs(config: SAEExperimentConfig) -> list[RunConfig]:
    return [_run(config, data="lm", n_latents=config.lm_size, k=k, steps=config.lm_steps)
            for k in config.lm_ks]


@cpu_threads(1)
def downstream(config: SAEExperimentConfig, device=None) -> dict:
    """Next-token loss with the layer's residual stream replaced by each SAE's reconstruction."""
    dev = auto_device(device)
    model, _, _ = toolkit.load_trained(toolkit.EXPERIMENT.config(config.lm.toolkit_profile), device=dev)
    data = lm_activations(config.lm)
    idx, targets = data["val"]["idx"].to(dev), data["val"]["targets"].to(dev)
    with torch.no_grad():
        _, hidden = model(idx, return_hidden=True)
    mean = hidden[config.lm.layer].reshape(-1, hidden[0].shape[-1]).mean(0)
    layer = config.lm.layer
    out = {"clean": downstream_loss(model, None, layer, idx, targets, mode="clean"),
           "mean_ablation": downstream_loss(model, None, layer, idx, targets, mode="mean", mean=mean),
           "saes": []}
    for run in _lm_runs(config):
        sae, record = load_sae(run, dev)
        out["saes"].append({"k": run.k, "n_latents": run.n_latents, "nmse": record["final"]["nmse"],
                            "loss": downstream_loss(model, sae.to(dev), layer, idx, targets)})
    return out


@cpu_threads(1)
def probe(config: SAEExperimentConfig, device=None) -> dict:
    """Best 1-D probe loss for "the token is a plural noun", on SAE latents and on raw dimensions."""
    dev = auto_device(device)
    data = lm_activations(config.lm)["val"]
    x, labels = data["activations"], data["labels"]
    out = {"prior_entropy": binary_entropy(labels), "positive_fraction": float(labels.float().mean()),
           "raw_dimensions": probe_loss(x, labels)[0], "saes": []}
    for run in _lm_runs(config):
        sae, _ = load_sae(run, dev)
        with torch.no_grad():
            z = sae.to(dev).encode(x.to(dev)).cpu()  # the SAE on the device; the 1-D probes on the CPU
        loss, latent = probe_loss(z, labels)
        out["saes"].append({"k": run.k, "n_latents": run.n_latents, "probe_loss": loss, "latent": latent})
    return out


def run(config: SAEExperimentConfig, device: str | None = None) -> dict:
    """Every experiment of the chapter on ``device`` (default: CUDA if available; checked before any
    work): SAE training (the sparse decoder is the Triton kernel on a GPU, Numba on the CPU), the LM
    metrics and Multi-TopK. JSON-able results. The SAE runs are cached by their config, whichever device
    trained them."""
    dev = auto_device(device)
    return {"frontier": frontier(config, dev), "scaling": scaling(config, dev),
            "dead_latents": dead_latents(config, dev), "recovery": recovery(config, dev),
            "multi_topk": multi_topk(config, dev), "downstream": downstream(config, dev),
            "probe": probe(config, dev), "lm_final": [evaluate(load_sae(r, dev)[0], lm_activations(config.lm)[
                "val"]["activations"]) for r in _lm_runs(config)]}


EXPERIMENT = Experiment(name="sae", chapter="book/04-sae.md", configs=CONFIGS, run=run)
