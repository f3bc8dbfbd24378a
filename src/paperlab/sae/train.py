"""Training an SAE with the book's one loop (:func:`paperlab.train.train`).

:class:`RunConfig` describes one SAE run completely (architecture, data source, schedule), so it is the
cache key of :func:`run_cached`. The optimizer is :class:`paperlab.sae.model.SAEAdam` (Adam with the
paper's eps 6.25e-10, the decoder-gradient projection and the unit-norm renormalisation inside its
``step``), handed to ``train`` as its ``optimizer``; ``train`` supplies the warmup/cosine schedule.

Learning rate: ``lr * sqrt(lr_reference_latents / n_latents)``, the paper's ``1/sqrt(n)`` scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from paperlab import cache
from paperlab.config import check_choice, check_flags, check_ints, check_numbers, check_that, check_type
from paperlab.sae.data import LMDataConfig, SyntheticConfig, lm_activations, make_synthetic
from paperlab.sae.metrics import feature_recovery, l0, nmse
from paperlab.sae.model import ReLUSAE, SparseAutoencoder, TopKSAE
from paperlab.train import TrainConfig, train
from paperlab.utils import cpu_threads

__all__ = ["RunConfig", "build_sae", "train_sae", "run_cached", "load_sae"]


@dataclass(frozen=True)
class RunConfig:
    """One SAE training run.

    kind: ``"topk"`` or ``"relu"``; n_latents; k (TopK) or l1_coefficient (ReLU); k_aux (0 = no AuxK);
    multi_topk; tied_init; dead_tokens: the dead-latent window in tokens.
    data: ``"lm"`` (the tiny GPT's activations, :class:`LMDataConfig`) or ``"synthetic"``.
    steps, batch_size (tokens per step), lr (at ``lr_reference_latents``), warmup_steps, eval_every.
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
    steps: int = 600
    batch_size: int = 256
    lr: float = 2e-3
    lr_reference_latents: int = 512
    warmup_steps: int = 20
    eval_every: int = 50
    seed: int = 0

    def __post_init__(self):
        check_choice(self, "kind", ("topk", "relu"))
        check_choice(self, "data", ("lm", "synthetic"))
        check_type(self, "lm", LMDataConfig)
        check_type(self, "synthetic", SyntheticConfig)
        check_ints(self, "n_latents", "dead_tokens", "steps", "batch_size", "lr_reference_latents")
        check_ints(self, "k", low=1, high=self.n_latents)
        check_ints(self, "k_aux", "warmup_steps", "eval_every", "seed", low=0)
        check_that(self, self.warmup_steps <= self.steps, "warmup_steps", f"at most steps = {self.steps}")
        check_numbers(self, "l1_coefficient", low=0)
        check_numbers(self, "lr", low=0, open_low=True)
        check_flags(self, "multi_topk", "tied_init")

    @property
    def scaled_lr(self) -> float:
        return self.lr * math.sqrt(self.lr_reference_latents / self.n_latents)


def d_model_of(run: RunConfig) -> int:
    if run.data == "synthetic":
        return run.synthetic.d_model
    from paperlab import toolkit

    return toolkit.config_for(run.lm.toolkit_profile).d_model


def build_sae(run: RunConfig) -> SparseAutoencoder:
    d = d_model_of(run)
    if run.kind == "topk":
        return TopKSAE(d, run.n_latents, run.k, k_aux=min(run.k_aux, run.n_latents),
                       multi_topk=run.multi_topk,
                       tied_init=run.tied_init, dead_tokens=run.dead_tokens, seed=run.seed)
    return ReLUSAE(d, run.n_latents, run.l1_coefficient, tied_init=run.tied_init,
                   dead_tokens=run.dead_tokens, seed=run.seed)


def _data(run: RunConfig):
    """(sample_train(step) -> (batch, d), validation activations (n, d), synthetic data or None)."""
    if run.data == "synthetic":
        synthetic = make_synthetic(run.synthetic)
        val = synthetic.sample(4096, torch.Generator().manual_seed(10_000 + run.synthetic.seed))

        def sample(step: int) -> torch.Tensor:
            generator = torch.Generator().manual_seed(run.seed * 1_000_003 + step)
            return synthetic.sample(run.batch_size, generator)

        return sample, val, synthetic
    data = lm_activations(run.lm)
    train_x = data["train"]["activations"]

    def sample(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(run.seed * 1_000_003 + step)
        return train_x[torch.randint(0, train_x.shape[0], (run.batch_size,), generator=generator)]

    return sample, data["val"]["activations"], None


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, x: torch.Tensor, k: int | None = None) -> dict[str, float]:
    """NMSE and L0 on ``x``, and the dead fraction (from the training counters)."""
    z = sae.encode(x, k) if (k is not None and isinstance(sae, TopKSAE)) else sae.encode(x)
    return {"nmse": float(nmse(sae.decode(z), x)), "l0": l0(z), "dead_fraction": sae.dead_fraction()}


def train_sae(run: RunConfig, device: str | torch.device | None = "cpu") -> tuple[SparseAutoencoder, dict]:
    """Train the SAE of ``run``; returns it (on the CPU, eval mode) and a JSON-able record."""
    with cpu_threads(1 if torch.device(device or "cpu").type == "cpu" else torch.get_num_threads()):
        return _train_sae(run, device)


def _train_sae(run: RunConfig, device) -> tuple[SparseAutoencoder, dict]:
    from paperlab.sae.model import SAEAdam

    sample, val, synthetic = _data(run)
    sae = build_sae(run)
    sae.init_b_pre(sample(0)[:1024] if run.batch_size >= 1024 else torch.cat([sample(-i) for i in range(
        1, 1 + math.ceil(1024 / run.batch_size))])[:1024])
    config = TrainConfig(steps=run.steps, batch_size=run.batch_size, lr=run.scaled_lr, weight_decay=0.0,
                         warmup_steps=run.warmup_steps, grad_clip=None, eval_every=run.eval_every,
                         log_every=10, seed=run.seed, min_lr_ratio=0.1)
    optimizer = SAEAdam(sae, lr=run.scaled_lr)
    val_eval = val[:2048]

    def eval_fn(model):
        return evaluate(model, val_eval)

    result = train(sae, lambda step, rank, world: (sample(step),), lambda m, batch: m.loss(batch[0])[0],
                   config,
                   eval_fn=eval_fn, device=device, desc=f"SAE {run.kind} n={run.n_latents}",
                   optimizer=optimizer)
    sae.cpu().eval()
    final = evaluate(sae, val)
    record = {"final": final, "history": result.to_dict(), "tokens": result.examples_seen}
    if synthetic is not None:
        record["feature_recovery"] = feature_recovery(sae.W_dec.detach(), synthetic.features)[0]
    return sae, record


def run_cached(run: RunConfig) -> dict:
    """``{"state_dict": ..., "record": ...}`` for ``run``, from the artifact cache (trained if missing)."""

    def compute():
        sae, record = train_sae(run)
        return {"state_dict": {k: v.detach().clone() for k, v in sae.state_dict().items()}, "record": record}

    return cache.cached("sae-run", run, compute, seed=run.seed, check=cache.has_keys("state_dict", "record"))


def load_sae(run: RunConfig) -> tuple[SparseAutoencoder, dict]:
    """The trained SAE of ``run`` (eval mode, CPU) and its record."""
    artifact = run_cached(run)
    sae = build_sae(run)
    sae.load_state_dict(artifact["state_dict"])
    return sae.eval(), artifact["record"]
