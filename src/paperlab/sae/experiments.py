"""The SAE chapter's experiments: each function takes the chapter's :class:`SAEExperimentConfig` and
returns plain results (numbers, lists, one entry per seed), every SAE training run going through the
artifact cache (:func:`paperlab.sae.train.run_cached`), so runs shared between experiments train once.
:func:`train_all` trains every run the chapter needs up front, one per CPU core.

Data: the scaling law, the MSE-L0 frontier, dead latents, feature recovery and Multi-TopK use the
synthetic superposition data (:class:`paperlab.sae.data.SyntheticConfig`: more features than dimensions,
Zipf frequencies, known directions); downstream loss, probe loss and the top-activating contexts use the
tiny GPT's residual stream (:class:`paperlab.sae.data.LMDataConfig`; the **fast** toolkit GPT in both
profiles: it trains in seconds, so a cold full run stays within budget).

Training length: a run of ``n`` latents takes ``train.steps * (n / max(sizes)) ** steps_exponent`` steps,
the paper's finding that the tokens needed to converge grow as about ``n^0.6`` (section 3.1); every run's
convergence is checked from its validation curve (:func:`paperlab.stats.convergence`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from paperlab import stats, toolkit
from paperlab.config import (
    check_int_tuple,
    check_ints,
    check_number_tuple,
    check_numbers,
    check_seeds,
    check_type,
)
from paperlab.experiments import Experiment
from paperlab.sae.data import LMDataConfig, SyntheticConfig, lm_activations, make_synthetic
from paperlab.sae.metrics import (
    binary_entropy,
    downstream_loss,
    fraction_of_loss_recovered,
    nmse,
    probe_loss,
    random_dictionary_recovery,
    top_activations,
)
from paperlab.sae.train import SAE_TRAIN, RunConfig, build_sae, load_sae, run_cached, train_runs
from paperlab.train import TrainConfig, auto_device
from paperlab.utils import cpu_threads

__all__ = ["SAEExperimentConfig", "CONFIGS", "steps_for", "all_runs", "train_all", "lr_sweep", "frontier",
           "matched_l0", "scaling", "fit_scaling_law", "scaling_law", "holdout_prediction", "dead_latents",
           "recovery", "multi_topk", "downstream", "untrained_sae", "probe", "top_contexts", "run",
           "EXPERIMENT"]


@dataclass(frozen=True)
class SAEExperimentConfig:
    """What the chapter trains. ``train.steps`` is the length of a run at the largest size of ``sizes``
    (smaller runs are shorter, see :func:`steps_for`); ``seeds`` are the independent runs behind every
    claim. ``topk_lr_multiplier`` and ``relu_lr_multiplier``: each method's learning rate relative to
    ``train.lr``, chosen by :func:`lr_sweep` over ``lr_multipliers`` (both methods get the same sweep).

    The full profile's sizes are chosen to converge inside the chapter's budget (8 minutes on 2 cores):
    512 true features and SAEs of 32 to 512 latents, rather than longer runs of larger SAEs."""

    synthetic: SyntheticConfig = SyntheticConfig(n_features=512, mean_active=4.0, zipf_exponent=1.2)
    lm: LMDataConfig = LMDataConfig(n_train_sentences=4_000, n_val_sentences=500)
    train: TrainConfig = dataclasses.replace(SAE_TRAIN, steps=1500)
    seeds: tuple[int, ...] = (0, 1, 2)
    lr_reference_latents: int = 256
    steps_exponent: float = 0.6
    dead_tokens: int = 25_000
    k_aux: int = 32  # d_model / 2
    sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # n_latents: 16x
    ks: tuple[int, ...] = (2, 4, 8)
    frontier_size: int = 512
    frontier_ks: tuple[int, ...] = (2, 4, 8, 16, 32)
    l1_coefficients: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.8)
    lr_multipliers: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    topk_lr_multiplier: float = 2.0
    relu_lr_multiplier: float = 4.0
    sweep_k: int = 16
    sweep_l1: float = 0.3
    dead_k: int = 4
    multi_k: int = 4
    lm_size: int = 512  # 8 x d_model
    lm_ks: tuple[int, ...] = (4, 32)
    lm_steps: int = 1500
    random_dictionaries: int = 20

    def __post_init__(self):
        check_type(self, "synthetic", SyntheticConfig)
        check_type(self, "lm", LMDataConfig)
        check_type(self, "train", TrainConfig)  # TrainConfig checks its own fields
        check_ints(self, "lr_reference_latents", "dead_tokens", "frontier_size", "lm_size", "lm_steps",
                   "random_dictionaries")
        check_seeds(self)
        check_ints(self, "k_aux", low=0)
        check_numbers(self, "steps_exponent", low=0, high=1)
        check_numbers(self, "topk_lr_multiplier", "relu_lr_multiplier", "sweep_l1", low=0, open_low=True)
        check_number_tuple(self, "l1_coefficients", low=0)
        check_number_tuple(self, "lr_multipliers", low=0)
        check_int_tuple(self, "sizes", min_len=3)  # the law is fitted on all sizes but the largest
        smallest = min(self.sizes)  # every k is used with every size of its sweep
        check_int_tuple(self, "ks", high=smallest, min_len=2)
        check_ints(self, "dead_k", high=max(self.sizes))
        check_int_tuple(self, "frontier_ks", high=self.frontier_size, min_len=2)
        check_ints(self, "sweep_k", "multi_k", high=self.frontier_size // 4)
        check_int_tuple(self, "lm_ks", high=self.lm_size, min_len=2)


CONFIGS = {
    "fast": SAEExperimentConfig(
        synthetic=SyntheticConfig(n_features=256, mean_active=4.0, zipf_exponent=1.2),
        lm=LMDataConfig(n_train_sentences=1_500, n_val_sentences=200),
        train=dataclasses.replace(SAE_TRAIN, steps=150), dead_tokens=5_000, sizes=(32, 64, 128),
        ks=(2, 4), frontier_size=128, frontier_ks=(2, 4, 8), l1_coefficients=(0.3, 0.8),
        lr_multipliers=(1.0, 4.0), sweep_k=4, dead_k=4, multi_k=4, lm_ks=(4, 16), lm_steps=120,
        random_dictionaries=5,
    ),
    "full": SAEExperimentConfig(),
}


# ------------------------------------------------------------------------------------------ runs
def steps_for(config: SAEExperimentConfig, n_latents: int) -> int:
    """Training steps of a run with ``n_latents``: ``train.steps * (n / max(sizes)) ** steps_exponent``,
    at least ``3 * min(train.eval_every, 50)`` steps (so that its convergence can be checked)."""
    steps = round(config.train.steps * (n_latents / max(config.sizes)) ** config.steps_exponent)
    return max(steps, 3 * min(config.train.eval_every, 50), 1)


def _run(config: SAEExperimentConfig, *, n_latents: int, seed: int, steps: int | None = None,
         lr_multiplier: float = 1.0, **overrides) -> RunConfig:
    """The run of the config's settings with ``overrides`` (``steps`` defaults to :func:`steps_for`)."""
    steps = steps_for(config, n_latents) if steps is None else steps
    train = dataclasses.replace(config.train, steps=steps, seed=seed, lr=config.train.lr * lr_multiplier,
                                eval_every=max(1, min(config.train.eval_every, steps // 10)),
                                warmup_steps=min(config.train.warmup_steps, steps // 10))
    base = RunConfig(data="synthetic", synthetic=config.synthetic, lm=config.lm, train=train,
                     n_latents=n_latents, lr_reference_latents=config.lr_reference_latents,
                     dead_tokens=config.dead_tokens, k_aux=config.k_aux)
    return dataclasses.replace(base, **overrides)


def _topk_run(config, n_latents, k, seed, lr_multiplier=None, **overrides) -> RunConfig:
    multiplier = config.topk_lr_multiplier if lr_multiplier is None else lr_multiplier
    return _run(config, n_latents=n_latents, seed=seed, k=k, lr_multiplier=multiplier, **overrides)


def _relu_run(config, l1, seed, lr_multiplier=None) -> RunConfig:
    multiplier = config.relu_lr_multiplier if lr_multiplier is None else lr_multiplier
    return _run(config, n_latents=config.frontier_size, seed=seed, kind="relu", l1_coefficient=l1, k_aux=0,
                lr_multiplier=multiplier)


MITIGATIONS = {"none": dict(tied_init=False, k_aux=0), "tied init": dict(tied_init=True, k_aux=0),
               "AuxK": dict(tied_init=False), "tied init + AuxK": dict(tied_init=True)}
"""The four dead-latent runs: tied initialisation and AuxK, each on or off."""


def _lm_run(config: SAEExperimentConfig, k: int, seed: int) -> RunConfig:
    return _run(config, data="lm", n_latents=config.lm_size, k=k, seed=seed, steps=config.lm_steps)


def _sweep_runs(config: SAEExperimentConfig) -> dict[str, list[RunConfig]]:
    seed = config.seeds[0]
    return {"topk": [_topk_run(config, config.frontier_size, config.sweep_k, seed, lr_multiplier=m)
                     for m in config.lr_multipliers],
            "relu": [_relu_run(config, config.sweep_l1, seed, lr_multiplier=m)
                     for m in config.lr_multipliers]}


def all_runs(config: SAEExperimentConfig) -> list[RunConfig]:
    """Every SAE run the chapter trains (each once, though several sections share some)."""
    runs = [r for group in _sweep_runs(config).values() for r in group]
    for seed in config.seeds:
        runs += [_topk_run(config, n, k, seed) for k in config.ks for n in config.sizes]
        runs += [_topk_run(config, config.frontier_size, k, seed) for k in config.frontier_ks]
        runs += [_relu_run(config, l1, seed) for l1 in config.l1_coefficients]
        runs += [_topk_run(config, max(config.sizes), config.dead_k, seed, **m) for m in MITIGATIONS.values()]
        runs += [_topk_run(config, config.frontier_size, config.multi_k, seed, multi_topk=multi)
                 for multi in (False, True)]
        runs += [_lm_run(config, k, seed) for k in config.lm_ks]
    return list(dict.fromkeys(runs))


def train_all(config: SAEExperimentConfig, device=None) -> int:
    """Train (or load from the cache) every run of :func:`all_runs`, one per CPU core; returns how many.
    On a CPU the probes of :func:`probe` run on the same workers, after the runs (kept in
    :data:`_PROBES` for this process)."""
    runs = all_runs(config)
    dev = auto_device(device)
    jobs = [job for job in _probe_jobs(config) if job not in _PROBES] if dev.type == "cpu" else []
    if jobs:
        lm_activations(config.lm)  # computed here (as the runs' are), not by each worker
    results = train_runs(runs, dev, extra=[(_probe_job, (*job, "cpu")) for job in jobs])
    _PROBES.update(zip(jobs, results))
    return len(runs)


def _record(run: RunConfig, device=None) -> dict:
    return run_cached(run, device)["record"]


def _summary(run: RunConfig, device=None) -> dict:
    """The final evaluation of ``run`` with its settings and whether its NMSE was shown flat at the end."""
    record = _record(run, device)
    evals = record["history"]["evals"]
    converged = stats.convergence([e["step"] for e in evals], [e["nmse"] for e in evals]).converged
    return {"n_latents": run.n_latents, "k": run.k, "l1_coefficient": run.l1_coefficient,
            "seed": run.train.seed, "steps": run.train.steps, "converged": converged, **record["final"]}


# ----------------------------------------------------------------------------------- 0. lr sweep
@cpu_threads(1)
def lr_sweep(config: SAEExperimentConfig, device=None) -> dict:
    """Both methods at ``frontier_size`` latents, one seed, for every learning-rate multiplier: TopK at
    ``sweep_k`` (its objective: NMSE) and ReLU at ``sweep_l1`` (its objective: NMSE + lambda L1, on the
    validation set). ``best``: each method's multiplier with the lowest objective."""
    dev = auto_device(device)
    out = {"multipliers": list(config.lr_multipliers), "topk": [], "relu": []}
    for kind, runs in _sweep_runs(config).items():
        for multiplier, run in zip(config.lr_multipliers, runs):
            sae, record = load_sae(run, dev)
            x = _validation(run)
            with torch.no_grad():
                objective = float(sae.loss(x)[0]) if kind == "relu" else record["final"]["nmse"]
            out[kind].append({"multiplier": multiplier, "lr": run.train.lr, "objective": objective,
                              **record["final"]})
    out["best"] = {kind: min(out[kind], key=lambda p: p["objective"])["multiplier"]
                   for kind in ("topk", "relu")}
    return out


def _validation(run: RunConfig) -> torch.Tensor:
    from paperlab.sae.train import validation_data

    return validation_data(run)


# ------------------------------------------------------------------------------------- 1. frontier
@cpu_threads(1)
def frontier(config: SAEExperimentConfig, device=None) -> dict:
    """NMSE, L0 and feature recovery at ``frontier_size`` latents, per seed: TopK at every k of
    ``frontier_ks``, ReLU+L1 at every coefficient of ``l1_coefficients`` (with its training curves)."""
    out = {"n_latents": config.frontier_size, "topk": {}, "relu": {}, "relu_curves": {}}
    for seed in config.seeds:
        out["topk"][seed] = [_summary(_topk_run(config, config.frontier_size, k, seed), device)
                             for k in config.frontier_ks]
        relu = [_relu_run(config, l1, seed) for l1 in config.l1_coefficients]
        out["relu"][seed] = [_summary(run, device) for run in relu]
        out["relu_curves"][seed] = [_curve(_record(run, device)) for run in relu]
    return out


def _curve(record: dict) -> dict:
    evals = record["history"]["evals"]
    return {key: [e[key] for e in evals] for key in ("step", "nmse", "l0")}


def matched_l0(topk: list[dict], relu: list[dict], key: str = "nmse") -> list[dict]:
    """For each ReLU point inside TopK's L0 range: TopK's ``key`` interpolated (linearly in log L0; in
    log ``key`` for NMSE) at the ReLU point's L0. Returns ``{"l0", "relu", "topk"}`` per matched point."""
    points = sorted(topk, key=lambda p: p["l0"])
    xs = [math.log(p["l0"]) for p in points]
    log_y = key == "nmse"
    ys = [math.log(p[key]) if log_y else p[key] for p in points]
    out = []
    for p in relu:
        if p["l0"] <= 0:
            continue
        x = math.log(p["l0"])
        if not xs[0] <= x <= xs[-1]:
            continue  # outside the TopK range: no comparison at equal L0
        i = max(j for j in range(len(xs)) if xs[j] <= x)
        j = min(i + 1, len(xs) - 1)
        t = 0.0 if j == i else (x - xs[i]) / (xs[j] - xs[i])
        y = ys[i] + t * (ys[j] - ys[i])
        out.append({"l0": p["l0"], "relu": p[key], "topk": math.exp(y) if log_y else y})
    return out


# -------------------------------------------------------------------------------- 2. scaling law
@cpu_threads(1)
def scaling(config: SAEExperimentConfig, device=None) -> dict:
    """Final NMSE of every (n_latents, k, seed) of the grid; the joint law fitted to the means over seeds
    (:func:`fit_scaling_law`, constrained: the figure's lines) and, without its constraints, to each seed
    alone (whether the data determine the floor's ``eta``); the held-out test (:func:`holdout_prediction`);
    and the first seed's validation curves, keyed ``"n,k"``."""
    points = [_summary(_topk_run(config, n, k, seed), device)
              for seed in config.seeds for k in config.ks for n in config.sizes]
    curves = {f"{n},{k}": _curve(_record(_topk_run(config, n, k, config.seeds[0]), device))
              for k in config.ks for n in config.sizes}
    means = [{"n_latents": n, "k": k, "nmse": sum(p["nmse"] for p in points
                                                  if p["n_latents"] == n and p["k"] == k) / len(config.seeds)}
             for k in config.ks for n in config.sizes]
    return {"points": points, "means": means, "curves": curves,
            "fit": fit_scaling_law(means),
            "fits_per_seed_unconstrained": [fit_scaling_law([p for p in points if p["seed"] == s],
                                                            constrained=False) for s in config.seeds],
            "holdout": holdout_prediction(points, max(config.sizes))}


PARAMETERS = ("alpha", "beta_k", "beta_n", "gamma", "zeta", "eta")


def scaling_law(params: torch.Tensor, n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``L(n, k) = exp(alpha + beta_k log k + beta_n log n + gamma log k log n) + exp(zeta + eta log k)``."""
    alpha, beta_k, beta_n, gamma, zeta, eta = params
    ln, lk = n.log(), k.log()
    return torch.exp(alpha + beta_k * lk + beta_n * ln + gamma * lk * ln) + torch.exp(zeta + eta * lk)


def _constrain(raw: torch.Tensor) -> torch.Tensor:
    """The constrained parameters: ``eta <= 0`` (the irreducible loss does not grow with k) and
    ``zeta <= 0`` (at k = 1 it is at most the mean predictor's NMSE, 1)."""
    alpha, beta_k, beta_n, gamma, zeta, eta = raw
    neg = torch.nn.functional.softplus
    return torch.stack([alpha, beta_k, beta_n, gamma, -neg(zeta), -neg(eta)])


def fit_scaling_law(points: list[dict], *, constrained: bool = True, restarts: int = 8) -> dict:
    """Least squares on log L (L-BFGS, float64, several starts) over ``points`` (``n_latents``, ``k``,
    ``nmse``); ``constrained``: with the signs of :func:`_constrain`. Returns the parameters, the fit's R^2
    on log L and its largest relative error."""
    n = torch.tensor([p["n_latents"] for p in points], dtype=torch.float64)
    k = torch.tensor([p["k"] for p in points], dtype=torch.float64)
    y = torch.tensor([p["nmse"] for p in points], dtype=torch.float64).log()
    transform = _constrain if constrained else (lambda raw: raw)
    generator = torch.Generator().manual_seed(0)
    best = None
    for restart in range(restarts):
        floor = math.log(float(y.exp().min()) / 2)
        start = torch.tensor([0.0, 0.0, -0.5, 0.0, floor, -0.1], dtype=torch.float64)
        if constrained:  # the raw values whose transform is the start (inverse softplus of -x)
            start[4], start[5] = (math.log(math.expm1(-float(start[i]))) for i in (4, 5))
        if restart:
            start = start + 0.5 * torch.randn(6, generator=generator, dtype=torch.float64)
        raw = start.clone().requires_grad_()
        optimizer = torch.optim.LBFGS([raw], max_iter=500, line_search_fn="strong_wolfe")

        def closure(optimizer=optimizer, raw=raw):
            optimizer.zero_grad()
            loss = (scaling_law(transform(raw), n, k).log() - y).pow(2).mean()
            loss.backward()
            return loss

        try:
            optimizer.step(closure)
        except RuntimeError:  # pragma: no cover - a diverging start
            continue
        with torch.no_grad():
            loss = float((scaling_law(transform(raw), n, k).log() - y).pow(2).mean())
        if math.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, transform(raw).detach().clone())
    loss, params = best
    with torch.no_grad():
        predicted = scaling_law(params, n, k)
    total = float((y - y.mean()).pow(2).mean())
    return {"params": dict(zip(PARAMETERS, params.tolist())), "r2_log": 1 - loss / total if total else 1.0,
            "max_relative_error": float(((predicted - y.exp()) / y.exp()).abs().max()),
            "predicted": predicted.tolist(), "constrained": constrained}


def predict(fit: dict, n: float, k: float) -> float:
    """The fitted law at one (n, k)."""
    params = torch.tensor([fit["params"][name] for name in PARAMETERS], dtype=torch.float64)
    return float(scaling_law(params, torch.tensor(float(n), dtype=torch.float64),
                             torch.tensor(float(k), dtype=torch.float64)))


def holdout_prediction(points: list[dict], held_out: int) -> dict:
    """Per seed: fit the (constrained) law on every size but ``held_out`` and predict ``held_out`` at each k;
    the relative error ``|predicted - measured| / measured`` averaged over k. The naive forecast "no gain
    beyond the largest fitted size" is scored the same way, for comparison."""
    out = {"held_out": held_out, "seeds": []}
    for seed in sorted({p["seed"] for p in points}):
        mine = [p for p in points if p["seed"] == seed]
        fit = fit_scaling_law([p for p in mine if p["n_latents"] != held_out])
        largest_fitted = max(p["n_latents"] for p in mine if p["n_latents"] != held_out)
        rows = []
        for k in sorted({p["k"] for p in mine}):
            measured = next(p["nmse"] for p in mine if p["k"] == k and p["n_latents"] == held_out)
            naive = next(p["nmse"] for p in mine if p["k"] == k and p["n_latents"] == largest_fitted)
            rows.append({"k": k, "measured": measured, "predicted": predict(fit, held_out, k),
                         "naive": naive})
        out["seeds"].append({
            "seed": seed, "rows": rows, "params": fit["params"],
            "error": sum(abs(r["predicted"] - r["measured"]) / r["measured"] for r in rows) / len(rows),
            "naive_error": sum(abs(r["naive"] - r["measured"]) / r["measured"] for r in rows) / len(rows)})
    return out


# ------------------------------------------------------------------------------- 3. dead latents
@cpu_threads(1)
def dead_latents(config: SAEExperimentConfig, device=None) -> dict:
    """Per mitigation (:data:`MITIGATIONS`) and seed, at the largest size and ``dead_k``: the dead fraction,
    the latents that died and were revived in each evaluation window, the share of (validation token, dead
    latent) pairs with a positive pre-activation (``dead_positive``: only those can fire again or get an
    AuxK gradient through the ReLU), the AuxK loss on the validation set (when AuxK is on) and the final
    NMSE."""
    n, k = max(config.sizes), config.dead_k
    out = {"n_latents": n, "k": k, "dead_tokens": config.dead_tokens, "k_aux": config.k_aux, "runs": {}}
    for name, overrides in MITIGATIONS.items():
        out["runs"][name] = {}
        for seed in config.seeds:
            run = _topk_run(config, n, k, seed, **overrides)
            record = _record(run, device)
            evals = record["history"]["evals"]
            out["runs"][name][seed] = {
                "tokens": [e["step"] * config.train.batch_size for e in evals],
                **{key: [e.get(key) for e in evals]
                   for key in ("dead_fraction", "died", "revived", "dead_positive", "auxk", "nmse")},
                "final_dead": record["final"]["dead_fraction"], "final_nmse": record["final"]["nmse"]}
    return out


# ---------------------------------------------------------------------------- 4. feature recovery
@cpu_threads(1)
def recovery(config: SAEExperimentConfig, device=None) -> dict:
    """Feature recovery over live latents of the scaling runs at ``dead_k`` against n_latents, per seed
    (the frontier's runs carry theirs too, against L0), and the chance level: random dictionaries of each
    size (:func:`paperlab.sae.metrics.random_dictionary_recovery`)."""
    features = make_synthetic(config.synthetic).features
    sizes = sorted(set(config.sizes) | {config.frontier_size})
    chance = {n: random_dictionary_recovery(n, features, draws=config.random_dictionaries, seed=100_000 + n)
              for n in sizes}
    by_n = {seed: [_summary(_topk_run(config, n, config.dead_k, seed), device) for n in config.sizes]
            for seed in config.seeds}
    return {"n_features": config.synthetic.n_features, "k": config.dead_k, "by_n": by_n, "chance": chance}


# ----------------------------------------------------------------------------------- 5. Multi-TopK
@cpu_threads(1)
def multi_topk(config: SAEExperimentConfig, device=None) -> dict:
    """NMSE against the k used at test time (``1 .. 4 multi_k``, powers of two), for a TopK and a
    Multi-TopK SAE trained at ``multi_k``, per seed, on 4096 fresh synthetic samples."""
    dev = auto_device(device)
    synthetic = make_synthetic(config.synthetic)
    x = synthetic.sample(4096, torch.Generator().manual_seed(10_000 + config.synthetic.seed)).to(dev)
    test_ks = [2 ** i for i in range(int(math.log2(4 * config.multi_k)) + 1)]
    out = {"train_k": config.multi_k, "test_ks": test_ks, "TopK": {}, "Multi-TopK": {}}
    for name, multi in (("TopK", False), ("Multi-TopK", True)):
        for seed in config.seeds:
            sae = load_sae(_topk_run(config, config.frontier_size, config.multi_k, seed, multi_topk=multi),
                           dev)[0].to(dev)
            with torch.no_grad():
                out[name][seed] = [float(nmse(sae(x, k), x)) for k in test_ks]
    return out


# ------------------------------------------------------------------- 6, 7, 8. the tiny LM's metrics
def _lm(config: SAEExperimentConfig, dev):
    model, corpus, _ = toolkit.load_trained(toolkit.EXPERIMENT.config(config.lm.toolkit_profile), device=dev)
    return model.eval(), corpus


@cpu_threads(1)
def downstream(config: SAEExperimentConfig, device=None) -> dict:
    """Next-token loss on the validation windows with the residual stream after the first block replaced
    by each SAE's reconstruction, per k and seed; the clean and mean-ablated losses bracket it, and
    ``fraction_recovered`` places each SAE between them.

    The null (as for :func:`probe`): the same SAE before training (:func:`untrained_sae`), spliced in the
    same way, per k and seed (``untrained_loss``, ``untrained_fraction_recovered``, and its NMSE on the
    validation activations, ``untrained_nmse``); ``over_null`` is the
    trained SAE's fraction minus its untrained twin's, the effect the chapter judges. The splice puts
    each token's own mean and spread back (:func:`paperlab.sae.metrics.downstream_loss`), so even a
    useless reconstruction recovers part of the loss: ``splice_only`` is the fraction recovered when every
    token is reconstructed as one constant vector (the geometric median of 1024 layer-normalised training
    activations, the untrained SAEs' ``b_pre``). ``converged``: whether the trained SAE's validation NMSE
    was shown flat at the end (:func:`paperlab.stats.convergence`)."""
    dev = auto_device(device)
    model, _ = _lm(config, dev)
    data = lm_activations(config.lm)
    idx, targets = data["val"]["idx"].to(dev), data["val"]["targets"].to(dev)
    with torch.no_grad():
        _, hidden = model(idx, return_hidden=True)
    layer, component = config.lm.layer, config.lm.component
    activation = hidden[layer] - (hidden[layer - 1] if component == "block" else 0)
    mean = activation.reshape(-1, activation.shape[-1]).mean(0)
    clean = downstream_loss(model, None, layer, idx, targets, mode="clean")
    ablated = downstream_loss(model, None, layer, idx, targets, mode="mean", mean=mean, component=component)
    x_val = data["val"]["activations"].to(dev)

    def spliced(sae) -> tuple[float, float]:
        loss = downstream_loss(model, sae, layer, idx, targets, component=component)
        return loss, fraction_of_loss_recovered(loss, clean, ablated)

    constant = untrained_sae(_lm_run(config, config.lm_ks[0], config.seeds[0]), data).b_pre.detach().to(dev)
    out = {"clean": clean, "mean_ablation": ablated, "layer": layer, "component": component,
           "splice_only": spliced(lambda flat: constant.expand_as(flat))[1], "saes": []}
    for k in config.lm_ks:
        for seed in config.seeds:
            run = _lm_run(config, k, seed)
            sae, record = load_sae(run, dev)
            loss, fraction = spliced(sae.to(dev).eval())
            null = untrained_sae(run, data).to(dev)
            null_loss, null_fraction = spliced(null)
            with torch.no_grad():
                null_nmse = float(nmse(null(x_val), x_val))
            evals = record["history"]["evals"]
            converged = stats.convergence([e["step"] for e in evals], [e["nmse"] for e in evals]).converged
            out["saes"].append({"k": k, "seed": seed, "n_latents": config.lm_size,
                                "nmse": record["final"]["nmse"], "converged": converged, "loss": loss,
                                "fraction_recovered": fraction, "untrained_loss": null_loss,
                                "untrained_nmse": null_nmse, "untrained_fraction_recovered": null_fraction,
                                "over_null": fraction - null_fraction})
    return out


def untrained_sae(run: RunConfig, data: dict | None = None):
    """The SAE of ``run`` as initialised, before any training: the null of :func:`probe` and
    :func:`downstream` (a random dictionary of the same size and k). ``b_pre`` at the geometric median of
    the first 1024 training activations of ``data`` (default: ``lm_activations(run.lm)``), the encoder
    scaled with the run's seed; eval mode, CPU."""
    data = lm_activations(run.lm) if data is None else data
    sae = build_sae(run)
    sae.init_b_pre(data["train"]["activations"][:1024])
    sae.scale_encoder_(seed=run.train.seed)
    return sae.eval()


@cpu_threads(1)
def probe(config: SAEExperimentConfig, device=None) -> dict:
    """Best 1-D probe loss for "the token is a plural noun" on the validation tokens: on each trained SAE's
    latents (per k and seed), on the same SAE before training (a random dictionary of the same size and
    k: the null), and on the raw dimensions of the residual stream."""
    dev = auto_device(device)
    labels = lm_activations(config.lm)["val"]["labels"]
    losses = {job: _PROBES[job] if job in _PROBES and dev.type == "cpu" else _probe_job(*job, device=dev)
              for job in _probe_jobs(config)}
    out = {"prior_entropy": binary_entropy(labels), "positive_fraction": float(labels.float().mean()),
           "raw_dimensions": losses[(config.lm, None, False)][0], "saes": []}
    for k in config.lm_ks:
        for seed in config.seeds:
            run = _lm_run(config, k, seed)
            trained, untrained = losses[(config.lm, run, True)], losses[(config.lm, run, False)]
            out["saes"].append({"k": k, "seed": seed, "probe_loss": trained[0], "latent": trained[1],
                                "untrained_probe_loss": untrained[0]})
    return out


_PROBES: dict[tuple, tuple[float, int]] = {}
"""The probes :func:`train_all` computed on its workers, by :func:`_probe_jobs` job."""


def _probe_jobs(config: SAEExperimentConfig) -> list[tuple]:
    """The probes of :func:`probe` as ``(lm, run, trained)``: the raw dimensions (``run`` None) first, then
    per k and seed the trained LM SAE and the same SAE untrained."""
    return [(config.lm, None, False)] + [(config.lm, _lm_run(config, k, seed), trained)
                                         for k in config.lm_ks for seed in config.seeds
                                         for trained in (True, False)]


@cpu_threads(1)
def _probe_job(lm: LMDataConfig, run: RunConfig | None, trained: bool, device=None) -> tuple[float, int]:
    """:func:`paperlab.sae.metrics.probe_loss` on the validation tokens of ``lm``: on the raw dimensions
    (``run`` None), or on the latents of ``run``'s SAE, trained or as initialised (``b_pre`` at the geometric
    median of 1024 training activations, the encoder scaled: the null). The SAE encodes on ``device``; the
    probe runs on the CPU."""
    dev = auto_device(device)
    data = lm_activations(lm)
    x, labels = data["val"]["activations"], data["val"]["labels"]
    if run is None:
        return probe_loss(x, labels)
    sae = load_sae(run, dev)[0] if trained else untrained_sae(run, data)
    with torch.no_grad():
        z = sae.to(dev).eval().encode(x.to(dev)).cpu()
    return probe_loss(z, labels)


@cpu_threads(1)
def top_contexts(config: SAEExperimentConfig, *, k: int | None = None, n_latents_shown: int = 6,
                 count: int = 5, width: int = 4, device=None) -> dict:
    """What a few latents of the first seed's LM SAE (trained at ``k``, default the largest of ``lm_ks``)
    respond to: for the ``n_latents_shown`` latents that fire on the most validation tokens (a common
    feature is easiest to read), their ``count`` top-activating tokens, each with ``width`` tokens of
    context before it. Also, per latent, the share of its top activations on one and the same word."""
    dev = auto_device(device)
    k = max(config.lm_ks) if k is None else k
    _, corpus = _lm(config, dev)
    data = lm_activations(config.lm)["val"]
    tokens = data["idx"].reshape(-1).tolist()
    sae, _ = load_sae(_lm_run(config, k, config.seeds[0]), dev)
    with torch.no_grad():
        z = sae.to(dev).encode(data["activations"].to(dev)).cpu()
    seq = data["idx"].shape[1]
    fires = (z > 0).sum(0)
    latents = torch.argsort(fires, descending=True)[:n_latents_shown].tolist()
    out = {"k": k, "seed": config.seeds[0], "latents": []}
    for latent in latents:
        rows, values = top_activations(z, latent, count)
        examples = []
        for row, value in zip(rows, values):
            start = row - min(width, row % seq)  # stay inside the row's window
            context = corpus.tokenizer.decode(tokens[start:row]).strip()
            examples.append({"context": context, "token": corpus.tokenizer.decode([tokens[row]]).strip(),
                             "activation": value})
        words = [e["token"] for e in examples]
        out["latents"].append({"latent": latent, "fires_on": float(fires[latent]) / z.shape[0],
                               "examples": examples,
                               "same_word": max(map(words.count, words)) / len(words) if words else 0.0})
    return out


def run(config: SAEExperimentConfig, device: str | None = None) -> dict:
    """Every experiment of the chapter on ``device`` (default: CUDA if available; checked before any
    work): SAE training (the sparse decoder is the Triton kernel on a GPU, Numba on the CPU), the LM
    metrics and Multi-TopK. JSON-able results. The SAE runs are cached by their config, whichever device
    trained them."""
    dev = auto_device(device)
    train_all(config, dev)
    return {"lr_sweep": lr_sweep(config, dev), "frontier": frontier(config, dev),
            "scaling": scaling(config, dev), "dead_latents": dead_latents(config, dev),
            "recovery": recovery(config, dev),
            "multi_topk": multi_topk(config, dev), "downstream": downstream(config, dev),
            "probe": probe(config, dev), "top_contexts": top_contexts(config, device=dev)}


EXPERIMENT = Experiment(name="sae", chapter="book/04-sae.md", configs=CONFIGS, run=run)
