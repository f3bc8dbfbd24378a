"""Training an SAE with the book's one loop (:func:`paperlab.train.train`).

:class:`RunConfig` describes one SAE run completely (architecture, data source, schedule), so it is the
cache key of :func:`run_cached`. The optimizer is :class:`paperlab.sae.model.SAEAdam` (Adam with the
paper's eps 6.25e-10, the decoder-gradient projection and the unit-norm renormalisation inside its
``step``), handed to ``train`` as its ``optimizer``; ``train`` supplies the warmup/cosine schedule.
:func:`train_runs` trains many runs side by side, one per CPU core (one after another on a GPU).

Learning rate: ``lr * sqrt(lr_reference_latents / n_latents)``, the paper's ``1/sqrt(n)`` scaling.
Initialisation (:func:`build_sae` and :func:`_train_sae`): tied or untied encoder, ``b_pre`` at the
geometric median of 1024 inputs, then the encoder rescaled as in the reference code
(:meth:`paperlab.sae.model.SparseAutoencoder.scale_encoder_`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from paperlab import cache
from paperlab.config import check_choice, check_flags, check_ints, check_numbers, check_type
from paperlab.sae.data import LMDataConfig, SyntheticConfig, lm_activations, make_synthetic
from paperlab.sae.metrics import feature_recovery, firing_counts, l0, nmse
from paperlab.sae.model import ReLUSAE, SAEAdam, SparseAutoencoder, TopKSAE
from paperlab.train import TrainConfig, auto_device, seeded_batches, train
from paperlab.utils import cpu_threads, parallel_map

__all__ = ["RunConfig", "SAE_TRAIN", "RECOVERED_COSINE", "build_sae", "train_sae", "run_cached", "load_sae",
           "train_runs", "evaluate"]


SAE_TRAIN = TrainConfig(steps=600, batch_size=256, lr=4e-3, weight_decay=0.0, warmup_steps=20, grad_clip=None,
                        eval_every=50, log_every=10, min_lr_ratio=0.0)
"""The schedule of an SAE run: warmup, then cosine to zero (so that the final loss is the annealed one, not
a snapshot of a still-moving run); no clipping. The optimizer is the
paper's Adam (:class:`paperlab.sae.model.SAEAdam`), whose betas and (zero) weight decay are its own."""

RECOVERED_COSINE = 0.9
"""A true feature counts as recovered when a live latent's decoder direction has cosine above this."""


@dataclass(frozen=True)
class RunConfig:
    """One SAE training run.

    kind: ``"topk"`` or ``"relu"``; n_latents; k (TopK) or l1_coefficient (ReLU) with its warm-up over the
    first ``l1_warmup`` fraction of the steps; k_aux (0 = no AuxK); multi_topk; tied_init; scale_encoder
    (the reference code's encoder rescaling at initialisation); dead_tokens: the dead-latent window in
    tokens. data: ``"lm"`` (the tiny GPT's activations, :class:`LMDataConfig`) or ``"synthetic"``.
    train: the schedule (``batch_size`` in tokens per step; ``lr`` at ``lr_reference_latents`` latents,
    scaled to ``n_latents`` by :attr:`scaled_lr`); its seed also seeds the SAE's initial weights.
    """

    kind: str = "topk"
    n_latents: int = 512
    k: int = 8
    l1_coefficient: float = 0.0
    l1_warmup: float = 0.05
    k_aux: int = 32
    multi_topk: bool = False
    tied_init: bool = True
    scale_encoder: bool = True
    dead_tokens: int = 25_000
    data: str = "synthetic"
    lm: LMDataConfig = LMDataConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    train: TrainConfig = SAE_TRAIN
    lr_reference_latents: int = 256

    def __post_init__(self):
        check_choice(self, "kind", ("topk", "relu"))
        check_choice(self, "data", ("lm", "synthetic"))
        check_type(self, "lm", LMDataConfig)
        check_type(self, "synthetic", SyntheticConfig)
        check_type(self, "train", TrainConfig)  # TrainConfig checks its own fields
        check_ints(self, "n_latents", "dead_tokens", "lr_reference_latents")
        check_ints(self, "k", low=1, high=self.n_latents)
        check_ints(self, "k_aux", low=0)
        check_numbers(self, "l1_coefficient", low=0)
        check_numbers(self, "l1_warmup", low=0, high=1)
        check_flags(self, "multi_topk", "tied_init", "scale_encoder")

    @property
    def scaled_lr(self) -> float:
        """``lr * sqrt(lr_reference_latents / n_latents)``: the paper's ``1 / sqrt(n)`` scaling."""
        return self.train.lr * math.sqrt(self.lr_reference_latents / self.n_latents)

    @property
    def cost(self) -> float:
        """A rough relative cost, to start the longest runs first: steps times the encoder's size, plus a
        term for the latents kept per token (TopK; 4k for Multi-TopK) or for the dense decoder (ReLU),
        fitted by eye to the full profile's run times on one CPU thread."""
        if self.kind == "relu":
            return self.train.steps * (1.25 * self.n_latents + 256)
        kept = 4 * self.k if self.multi_topk else self.k
        return self.train.steps * (self.n_latents + 256 + 16 * kept)


def d_model_of(run: RunConfig) -> int:
    if run.data == "synthetic":
        return run.synthetic.d_model
    from paperlab import toolkit

    return toolkit.EXPERIMENT.config(run.lm.toolkit_profile).d_model


def build_sae(run: RunConfig) -> SparseAutoencoder:
    d, seed = d_model_of(run), run.train.seed
    if run.kind == "topk":
        return TopKSAE(d, run.n_latents, run.k, k_aux=min(run.k_aux, run.n_latents),
                       multi_topk=run.multi_topk,
                       tied_init=run.tied_init, dead_tokens=run.dead_tokens, seed=seed)
    return ReLUSAE(d, run.n_latents, run.l1_coefficient,
                   l1_warmup_steps=round(run.l1_warmup * run.train.steps), tied_init=run.tied_init,
                   dead_tokens=run.dead_tokens, seed=seed)


def validation_data(run: RunConfig) -> torch.Tensor:
    """The held-out activations every run of this data source is evaluated on: (n, d_model)."""
    if run.data == "synthetic":
        generator = torch.Generator().manual_seed(10_000 + run.synthetic.seed)
        return make_synthetic(run.synthetic).sample(4096, generator)
    return lm_activations(run.lm)["val"]["activations"]


def _data(run: RunConfig):
    """(get_batch(step) -> (x,) with x: (batch_size, d), validation activations (n, d), synthetic data or
    None). Batches are drawn by :func:`paperlab.train.seeded_batches`."""
    batch_size = run.train.batch_size
    if run.data == "synthetic":
        synthetic = make_synthetic(run.synthetic)
        get_batch = seeded_batches(lambda g: (synthetic.sample(batch_size, g),), run.train.seed)
        if _SHARED_BATCHES is not None:
            get_batch = _shared(get_batch, (run.synthetic, run.train.seed, batch_size))
        return get_batch, validation_data(run), synthetic
    train_x = lm_activations(run.lm)["train"]["activations"]

    def sample(generator: torch.Generator) -> tuple[torch.Tensor]:
        return (train_x[torch.randint(0, train_x.shape[0], (batch_size,), generator=generator)],)

    return seeded_batches(sample, run.train.seed), validation_data(run), None


_SHARED_BATCHES: dict | None = None
"""While :func:`train_runs` trains (in each worker process): the synthetic batches drawn so far, keyed by
(synthetic config, seed, batch size, step, rank), so that the runs of one seed draw each batch once
instead of once per run. Every run of a seed gets the same batch at a step (:func:`seeded_batches` seeds
each step's generator from the seed and the step alone), so sharing them changes no number. None: off."""


def _shared(get_batch, key: tuple):
    """``get_batch`` drawing each batch once per process (:data:`_SHARED_BATCHES`)."""

    def shared(step: int, rank: int = 0, world_size: int = 1) -> tuple:
        entry = (*key, step, rank, world_size)
        if entry not in _SHARED_BATCHES:
            _SHARED_BATCHES[entry] = get_batch(step, rank, world_size)
        return _SHARED_BATCHES[entry]

    return shared


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, x: torch.Tensor, k: int | None = None,
             features: torch.Tensor | None = None) -> dict[str, float]:
    """NMSE, L0 and the live fraction (latents that fire on at least one row of ``x``) on ``x``; the dead
    fraction (from the training counters); with the true ``features``, feature recovery over the live
    latents: mean best cosine and the fraction recovered (best cosine > :data:`RECOVERED_COSINE`)."""
    z = sae.encode(x, k) if (k is not None and isinstance(sae, TopKSAE)) else sae.encode(x)
    return _evaluate_latents(sae, x, z, features)


def _evaluate_latents(sae: SparseAutoencoder, x: torch.Tensor, z: torch.Tensor,
                      features: torch.Tensor | None = None) -> dict[str, float]:
    """:func:`evaluate` given the latents ``z`` of ``x``."""
    live = firing_counts(z) > 0
    out = {"nmse": float(nmse(sae.decode(z), x)), "l0": l0(z), "dead_fraction": sae.dead_fraction(),
           "live_fraction": float(live.float().mean())}
    if features is not None:
        mean, best = feature_recovery(sae.W_dec[live].to(features), features)
        out["mean_best_cosine"] = mean
        out["recovered"] = float((best > RECOVERED_COSINE).float().mean())
    return out


def train_sae(run: RunConfig, device: str | torch.device | None = "cpu") -> tuple[SparseAutoencoder, dict]:
    """Train the SAE of ``run`` on ``device``; returns it (on the CPU, eval mode) and a JSON-able record:
    ``final`` (:func:`evaluate` on the validation set, with feature recovery on synthetic data), ``history``
    (the training loop's, with an evaluation every ``eval_every`` steps: NMSE, L0, dead fraction, the
    latents that became dead (``died``) and came back (``revived``) since the previous evaluation, the share
    of (validation token, dead latent) pairs with a positive pre-activation (``dead_positive``, when some
    latent is dead), and for
    an SAE with AuxK the auxiliary loss on the validation set) and ``tokens``."""
    device = auto_device(device)
    with cpu_threads(1, device=device):  # tiny models: one thread is faster than two busy cores
        return _train_sae(run, device)


def _train_sae(run: RunConfig, device) -> tuple[SparseAutoencoder, dict]:
    get_batch, val, synthetic = _data(run)
    sae = build_sae(run)
    sae.init_b_pre(_b_pre_sample(get_batch, run.train.batch_size))
    if run.scale_encoder:
        sae.scale_encoder_(seed=run.train.seed)
    optimizer = SAEAdam(sae, lr=run.scaled_lr)
    val_eval = val[:2048].to(device)  # evaluated where the model trains
    previous_dead = [sae.dead_mask.clone()]

    def eval_fn(model):
        # The pre-activations and the top k once, for every metric: the same numbers as evaluate(model,
        # val_eval), model(val_eval) and model.pre_activations(val_eval) computed separately, bit for bit.
        pre = model.pre_activations(model.check_input(val_eval))
        if isinstance(model, TopKSAE):
            values, indices = model.select(pre)
            z = model.scatter(values, indices)
        else:
            z = torch.relu(pre)
        out = _evaluate_latents(model, val_eval, z)
        dead = model.dead_mask
        out["died"] = int((dead & ~previous_dead[0]).sum())
        out["revived"] = int((previous_dead[0] & ~dead).sum())
        previous_dead[0] = dead.clone()
        if bool(dead.any()):  # can a dead latent still fire, or get an AuxK gradient (ReLU > 0)?
            out["dead_positive"] = float((pre[:, dead] > 0).float().mean())
        if isinstance(model, TopKSAE) and model.k_aux:
            out["auxk"] = float(model.auxk_loss(val_eval, model.decode_sparse(values, indices), pre))
        return out

    result = train(sae, get_batch, lambda m, batch: m.loss(batch[0])[0],
                   dataclasses.replace(run.train, lr=run.scaled_lr),
                   eval_fn=eval_fn, device=device, desc=f"SAE {run.kind} n={run.n_latents}",
                   optimizer=optimizer)
    sae.cpu().eval()
    final = evaluate(sae, val, features=None if synthetic is None else synthetic.features)
    return sae, {"final": final, "history": result.to_dict(), "tokens": result.examples_seen}


def _b_pre_sample(get_batch, batch_size: int, n: int = 1024) -> torch.Tensor:
    """``n`` inputs for the geometric median of ``b_pre``: the batches of steps 0, -1, -2, ... (none of
    them a training step)."""
    steps = [0] if batch_size >= n else range(-1, -1 - math.ceil(n / batch_size), -1)
    return torch.cat([get_batch(step)[0] for step in steps])[:n]


_TRAINED: dict[RunConfig, dict] = {}
"""Runs :func:`train_runs` trained in worker processes, kept for this process (so that, with the cache
disabled, a run needed by several experiments still trains once)."""


def run_cached(run: RunConfig, device: str | torch.device | None = "cpu") -> dict:
    """``{"state_dict": ..., "record": ...}`` for ``run``, from the artifact cache (trained on ``device``
    if missing)."""
    if run in _TRAINED:
        return _TRAINED[run]

    def compute():
        sae, record = train_sae(run, device)
        return {"state_dict": {k: v.detach().clone() for k, v in sae.state_dict().items()}, "record": record}

    return cache.cached("sae-run", run, compute, seed=run.train.seed,
                        check=cache.has_keys("state_dict", "record"))


def _run_job(job, device: str):
    """One job of :func:`train_runs`: a :class:`RunConfig` (trained or loaded) or an extra ``(fn, args)``."""
    global _SHARED_BATCHES
    if _SHARED_BATCHES is None:  # a worker of train_runs: its runs share their synthetic batches
        _SHARED_BATCHES = {}
    if isinstance(job, RunConfig):
        return run_cached(job, device)
    fn, args = job
    return fn(*args)


def train_runs(runs: Iterable[RunConfig], device: str | torch.device | None = "cpu", *,
               extra: Sequence[tuple[Callable, tuple]] = ()) -> list:
    """Train (or load) every run of ``runs``: on a CPU one run per core, longest first
    (:func:`paperlab.utils.parallel_map`), on any other device one after another in this process. The
    results go to the artifact cache (and to this process's memory), where :func:`run_cached` finds them.
    ``extra``: more jobs ``(fn, args)`` (``fn`` importable by name) for the same workers, after the runs
    (short jobs that fill the last gaps); returns ``[fn(*args)]`` in their order."""
    device = auto_device(device)
    # longest first, so that the last to finish is short (the language-model runs among the others: their
    # activations are computed below, before the workers start)
    todo = sorted(dict.fromkeys(r for r in runs if r not in _TRAINED), key=lambda r: -r.cost)
    extra = [(fn, tuple(args)) for fn, args in extra]
    if not todo and not extra:
        return []
    workers = None if device.type == "cpu" else 1
    if workers is None and len(todo) > 1:
        lm_configs = {r.lm for r in todo if r.data == "lm"}
        for config in lm_configs:  # compute the shared activations once, before the workers need them
            lm_activations(config)
    global _SHARED_BATCHES
    try:
        results = parallel_map(_run_job, [(job, str(device)) for job in todo + extra], workers=workers,
                               desc="SAE runs")
    finally:
        _SHARED_BATCHES = None  # set by _run_job when it ran in this process (one worker)
    _TRAINED.update(zip(todo, results))
    return results[len(todo):]


def load_sae(run: RunConfig, device: str | torch.device | None = "cpu") -> tuple[SparseAutoencoder, dict]:
    """The trained SAE of ``run`` (eval mode, CPU; trained on ``device`` if not cached) and its record."""
    artifact = run_cached(run, device)
    sae = build_sae(run)
    sae.load_state_dict(artifact["state_dict"])
    return sae.eval(), artifact["record"]
