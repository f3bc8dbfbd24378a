"""Training an SAE with the book's one loop (:func:`paperlab.train.train`).

:class:`RunConfig` describes one SAE run completely (architecture, data source, schedule), so it is the
cache key of :func:`run_cached`. The optimizer is :class:`paperlab.sae.model.SAEAdam` (Adam with the
paper's eps 6.25e-10, the decoder-gradient projection and the unit-norm renormalisation inside its
``step``), handed to ``train`` as its ``optimizer``; ``train`` supplies the warmup/cosine schedule.

Learning rate: ``lr * sqrt(lr_reference_latents / n_latents)``, the paper's ``1/sqrt(n)`` scaling.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from paperlab import cache
from paperlab.config import check_choice, check_flags, check_ints, check_numbers, check_type
from paperlab.sae.data import LMDataConfig, SyntheticConfig, lm_activations, make_synthetic
from paperlab.sae.metrics import feature_recovery, l0, nmse
from paperlab.sae.model import ReLUSAE, SparseAutoencoder, TopKSAE
from paperlab.train import TrainConfig, auto_device, seeded_batches, train
from paperlab.utils import cpu_threads

__all__ = ["RunConfig", "SAE_TRAIN", "build_sae", "train_sae", "run_cached", "load_sae"]


SAE_TRAIN = TrainConfig(steps=600, batch_size=256, lr=2e-3, weight_decay=0.0, warmup_steps=20, grad_clip=None,
                        eval_every=50, log_every=10, min_lr_ratio=0.1)
"""The schedule of an SAE run: warmup, then cosine to a tenth of ``lr``; no clipping. The optimizer is the
paper's Adam (:class:`paperlab.sae.model.SAEAdam`), whose betas and (zero) weight decay are its own."""


@dataclass(frozen=True)
class RunConfig:
    """One SAE training run.

    kind: ``"topk"`` or ``"relu"``; n_latents; k (TopK) or l1_coefficient (ReLU); k_aux (0 = no AuxK);
    multi_topk; tied_init; dead_tokens: the dead-latent window in tokens.
    data: ``"lm"`` (the tiny GPT's activations, :class:`LMDataConfig`) or ``"synthetic"``.
    train: the schedule (``batch_size`` in tokens per step; ``lr`` at ``lr_reference_latents`` latents,
    scaled to ``n_latents`` by :attr:`scaled_lr`); its seed also seeds the SAE's initial weights.
    """

    kind: str = "topk"
    n_latents: int = 512
    k: int = 8
    l1_coefficient: float = 0.0
    k_aux: int = 64
    multi_topk: bool = False
    tied_init: bool = True
    dead_tokens: int = 50_000
    data: str = "lm"
    lm: LMDataConfig = LMDataConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    train: TrainConfig = SAE_TRAIN
    lr_reference_latents: int = 512

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
        check_flags(self, "multi_topk", "tied_init")

    @property
    def scaled_lr(self) -> float:
        """``lr * sqrt(lr_reference_latents / n_latents)``: the paper's ``1 / sqrt(n)`` scaling."""
        return self.train.lr * math.sqrt(self.lr_reference_latents / self.n_latents)


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
    return ReLUSAE(d, run.n_latents, run.l1_coefficient, tied_init=run.tied_init,
                   dead_tokens=run.dead_tokens, seed=seed)


def _data(run: RunConfig):
    """(get_batch(step) -> (x,) with x: (batch_size, d), validation activations (n, d), synthetic data or
    None). Batches are drawn by :func:`paperlab.train.seeded_batches`."""
    batch_size = run.train.batch_size
    if run.data == "synthetic":
        synthetic = make_synthetic(run.synthetic)
        val = synthetic.sample(4096, torch.Generator().manual_seed(10_000 + run.synthetic.seed))
        return seeded_batches(lambda g: (synthetic.sample(batch_size, g),), run.train.seed), val, synthetic
    data = lm_activations(run.lm)
    train_x = data["train"]["activations"]

    def sample(generator: torch.Generator) -> tuple[torch.Tensor]:
        return (train_x[torch.randint(0, train_x.shape[0], (batch_size,), generator=generator)],)

    return seeded_batches(sample, run.train.seed), data["val"]["activations"], None


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, x: torch.Tensor, k: int | None = None) -> dict[str, float]:
    """NMSE and L0 on ``x``, and the dead fraction (from the training counters)."""
    z = sae.encode(x, k) if (k is not None and isinstance(sae, TopKSAE)) else sae.encode(x)
    return {"nmse": float(nmse(sae.decode(z), x)), "l0": l0(z), "dead_fraction": sae.dead_fraction()}


def train_sae(run: RunConfig, device: str | torch.device | None = "cpu") -> tuple[SparseAutoencoder, dict]:
    """Train the SAE of ``run`` on ``device``; returns it (on the CPU, eval mode) and a JSON-able record."""
    device = auto_device(device)
    with cpu_threads(1, device=device):  # tiny models: one thread is faster than two busy cores
        return _train_sae(run, device)


def _train_sae(run: RunConfig, device) -> tuple[SparseAutoencoder, dict]:
    from paperlab.sae.model import SAEAdam

    get_batch, val, synthetic = _data(run)
    sae = build_sae(run)
    sae.init_b_pre(_b_pre_sample(get_batch, run.train.batch_size))
    optimizer = SAEAdam(sae, lr=run.scaled_lr)
    val_eval = val[:2048].to(device)  # evaluated where the model trains

    def eval_fn(model):
        return evaluate(model, val_eval)

    result = train(sae, get_batch, lambda m, batch: m.loss(batch[0])[0],
                   dataclasses.replace(run.train, lr=run.scaled_lr),
                   eval_fn=eval_fn, device=device, desc=f"SAE {run.kind} n={run.n_latents}",
                   optimizer=optimizer)
    sae.cpu().eval()
    final = evaluate(sae, val)
    record = {"final": final, "history": result.to_dict(), "tokens": result.examples_seen}
    if synthetic is not None:
        record["feature_recovery"] = feature_recovery(sae.W_dec.detach(), synthetic.features)[0]
    return sae, record


def _b_pre_sample(get_batch, batch_size: int, n: int = 1024) -> torch.Tensor:
    """``n`` inputs for the geometric median of ``b_pre``: the batches of steps 0, -1, -2, ... (none of
    them a training step)."""
    steps = [0] if batch_size >= n else range(-1, -1 - math.ceil(n / batch_size), -1)
    return torch.cat([get_batch(step)[0] for step in steps])[:n]


def run_cached(run: RunConfig, device: str | torch.device | None = "cpu") -> dict:
    """``{"state_dict": ..., "record": ...}`` for ``run``, from the artifact cache (trained on ``device``
    if missing)."""

    def compute():
        sae, record = train_sae(run, device)
        return {"state_dict": {k: v.detach().clone() for k, v in sae.state_dict().items()}, "record": record}

    return cache.cached("sae-run", run, compute, seed=run.train.seed,
                        check=cache.has_keys("state_dict", "record"))


def load_sae(run: RunConfig, device: str | torch.device | None = "cpu") -> tuple[SparseAutoencoder, dict]:
    """The trained SAE of ``run`` (eval mode, CPU; trained on ``device`` if not cached) and its record."""
    artifact = run_cached(run, device)
    sae = build_sae(run)
    sae.load_state_dict(artifact["state_dict"])
    return sae.eval(), artifact["record"]
