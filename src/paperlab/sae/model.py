r"""TopK and ReLU+L1 sparse autoencoders with one interface (Gao et al., 2024, "Scaling and evaluating
sparse autoencoders", sections 2 and A; reference: openai/sparse_autoencoder ``model.py``).

Both map an activation ``x: (batch, d_model)`` to latents ``z: (batch, n_latents)`` and back:

.. math::

    \text{TopK (eq. 2):}\quad
    z = \operatorname{ReLU}(\operatorname{TopK}(W_\text{enc}(x - b_\text{pre}) + b_\text{enc})),
    \qquad
    \text{ReLU (eq. 1):}\quad z = \operatorname{ReLU}(W_\text{enc}(x - b_\text{pre}) + b_\text{enc}),

    \hat x = W_\text{dec}\, z + b_\text{pre} \quad\text{(eq. 1, second line)} .

Equation numbers are the paper's (ICLR 2025 text): eq. 1 is the ReLU baseline's encoder and decoder under
one number (section 2.2), eq. 2 the TopK encoder ``z = TopK(W_enc(x - b_pre))`` (section 2.3), whose
decoder is eq. 1's. The TopK form above adds ``b_enc`` and a ReLU after the TopK, as the reference
``model.py`` does (``TopK(k, postact_fn=ReLU())`` on ``encoder(x - pre_bias) + latent_bias``).

Storage: ``W_enc: (n_latents, d_model)`` (row ``i`` reads latent ``i``) and ``W_dec: (n_latents, d_model)``
(row ``i`` is latent ``i``'s decoder direction, i.e. the paper's **column** ``i`` of ``W_dec``; it is
stored as a row so that the sparse decoder gathers contiguous rows). Decoder directions have unit norm;
:class:`SAEAdam` keeps them so.

Shared interface: ``encode(x) -> z`` (dense, zeros off the support), ``decode(z) -> x_hat``,
``forward(x) -> x_hat`` and ``loss(x) -> (loss, info)`` for training. ``TopKSAE`` also has
``encode_sparse(x, k) -> (values, indices)`` and decodes them with the sparse kernel
(:func:`paperlab_kernels.sae.sparse_decode`): ``O(k d)`` per token instead of ``O(n_latents d)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from paperlab.sae.metrics import FIRE_THRESHOLD, nmse
from paperlab_kernels.sae import sparse_decode

__all__ = ["SparseAutoencoder", "TopKSAE", "ReLUSAE", "SAEAdam", "geometric_median",
           "project_decoder_grad_", "normalise_decoder_"]


def _check_int(name: str, value, low: int, high: int | None = None, high_desc: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        bound = f" and <= {high_desc} = {high}" if high is not None else ""
        raise ValueError(f"{name} must be >= {low}{bound}, got {value}")
    return value


def geometric_median(x: torch.Tensor, iterations: int = 30, eps: float = 1e-8) -> torch.Tensor:
    """Geometric median ``argmin_m sum_b ||x_b - m||`` of the rows of ``x: (batch, d)`` (Weiszfeld's
    algorithm, started at the mean): each iteration is a weighted mean with weights ``1 / ||x_b - m||``."""
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (x - median).norm(dim=1).clamp_min(eps)
        median = (weights[:, None] * x).sum(0) / weights.sum()
    return median


class SparseAutoencoder(nn.Module):
    """What both autoencoders share: parameters, initialisation, input checks, dense encode/decode.

    Initialisation (section A.1): decoder directions random with unit norm; with ``tied_init`` the
    encoder starts as the decoder's transpose (``W_enc = W_dec^T``: one of the paper's fixes against dead
    latents), else as an independent random matrix (``nn.Linear``'s uniform init); ``b_enc = 0``;
    ``b_pre`` is set from data by :meth:`init_b_pre` (the geometric median, as in the paper).

    Buffer ``tokens_since_fired: (n_latents,)`` counts, during training, the tokens seen since each
    latent last fired (activation > :data:`FIRE_THRESHOLD`); a latent is **dead** when the count reaches
    ``dead_tokens`` (10M tokens in the paper; scaled down here).
    """

    def __init__(self, d_model: int, n_latents: int, *, tied_init: bool = True, dead_tokens: int = 100_000,
                 seed: int | None = None):
        super().__init__()
        self.d_model = _check_int("d_model", d_model, 1)
        self.n_latents = _check_int("n_latents", n_latents, 1)
        self.dead_tokens = _check_int("dead_tokens", dead_tokens, 1)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        w_dec = torch.randn(n_latents, d_model, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        if tied_init:
            w_enc = w_dec.clone()
        else:
            bound = 1 / math.sqrt(d_model)  # nn.Linear's default (kaiming uniform with a = sqrt(5))
            w_enc = torch.empty(n_latents, d_model).uniform_(-bound, bound, generator=generator)
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(w_dec)
        self.b_pre = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("tokens_since_fired", torch.zeros(n_latents, dtype=torch.long))

    # ------------------------------------------------------------------------------- checks, init
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` must be a finite float tensor of shape (batch, d_model)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 2 or x.shape[1] != self.d_model:
            raise ValueError(f"x must have shape (batch, d_model = {self.d_model}), got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"x has {bad} non-finite activations (NaN or inf); the SAE needs finite inputs")
        return x

    @torch.no_grad()
    def init_b_pre(self, x: torch.Tensor, method: str = "geometric_median") -> None:
        """Set ``b_pre`` to the geometric median (or ``"mean"``) of a sample ``x: (batch, d_model)``."""
        self.check_input(x)
        if method == "geometric_median":
            self.b_pre.copy_(geometric_median(x.float()))
        elif method == "mean":
            self.b_pre.copy_(x.float().mean(0))
        else:
            raise ValueError(f"method must be 'geometric_median' or 'mean', got {method!r}")

    @torch.no_grad()
    def scale_encoder_(self, seed: int = 0, n: int = 256) -> float:
        """Rescale ``W_enc`` so that ``n`` random unit inputs (around ``b_pre``) are reconstructed with mean
        norm 1, as the reference code's ``init_from_data_`` does after setting ``b_pre``; returns the
        factor applied. Without it a ReLU SAE starts by firing about half of its latents on every token,
        and its first reconstructions are many times too large."""
        u = torch.randn(n, self.d_model, generator=torch.Generator().manual_seed(seed))
        u = u / u.norm(dim=1, keepdim=True)
        norm = float((self(u + self.b_pre) - self.b_pre).norm(dim=1).mean())
        factor = 1.0 / norm if norm > 0 else 1.0
        self.W_enc.mul_(factor)
        return factor

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``W_enc (x - b_pre) + b_enc``: (batch, n_latents)."""
        return (x - self.b_pre) @ self.W_enc.T + self.b_enc

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Dense decoder, eq. 1 (second line): ``x_hat = z W_dec + b_pre`` for ``z: (batch, n_latents)``."""
        return z @ self.W_dec + self.b_pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``x_hat: (batch, d_model)``."""
        return self.decode(self.encode(x))

    # ---------------------------------------------------------------------------- dead latents
    @torch.no_grad()
    def record_firing(self, fired: torch.Tensor, n_tokens: int) -> None:
        """Update the dead-latent counters after a training batch of ``n_tokens`` tokens.
        fired: (n_latents,) bool, True for latents that fired on at least one token of the batch."""
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0

    @property
    def dead_mask(self) -> torch.Tensor:
        """(n_latents,) bool: latents that have not fired for ``dead_tokens`` tokens."""
        return self.tokens_since_fired >= self.dead_tokens

    def dead_fraction(self) -> float:
        return float(self.dead_mask.float().mean())


class TopKSAE(SparseAutoencoder):
    """TopK SAE (eq. 2, section 2.3) with AuxK (section A.2) and optional Multi-TopK (section 5.3).

    k: active latents per token (1 <= k <= n_latents). k_aux: latents the auxiliary loss may use, chosen
    among the dead ones (0 disables AuxK); aux_coefficient: its weight alpha (1/32 in the paper).
    multi_topk: train with ``L(k) + L(4k) / 8`` so that the SAE also works at larger k at test time.
    decoder_impl: ``"auto"`` (sparse kernel: Numba on CPU, Triton on CUDA), ``"reference"`` (dense).

    Loss (sections 2.3 and A.2, each squared error taken as an NMSE):
    ``NMSE(x_hat, x) + alpha * NMSE(e_hat, e)``, where ``e = x - x_hat`` (no gradient) and ``e_hat`` decodes
    (without ``b_pre``) the top-``k_aux`` pre-activations among the dead latents. With no dead latent the
    auxiliary term is exactly 0.
    """

    def __init__(self, d_model: int, n_latents: int, k: int, *, k_aux: int = 0,
                 aux_coefficient: float = 1 / 32,
                 multi_topk: bool = False, tied_init: bool = True, dead_tokens: int = 100_000,
                 decoder_impl: str = "auto", seed: int | None = None):
        super().__init__(d_model, n_latents, tied_init=tied_init, dead_tokens=dead_tokens, seed=seed)
        self.k = self.check_k(k)
        self.k_aux = _check_int("k_aux", k_aux, 0, n_latents, "n_latents")
        if not (isinstance(aux_coefficient, (int, float)) and aux_coefficient >= 0):
            raise ValueError(f"aux_coefficient must be a number >= 0, got {aux_coefficient!r}")
        self.aux_coefficient = float(aux_coefficient)
        self.multi_topk = bool(multi_topk)
        self.decoder_impl = decoder_impl

    def check_k(self, k: int) -> int:
        return _check_int("k", k, 1, self.n_latents, "n_latents")

    def encode_sparse(self, x: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, indices)``, each (batch, k): the k largest pre-activations (sorted, largest first),
        ReLU-ed. At most k latents per token are nonzero (fewer when some of the top k are <= 0)."""
        k = self.k if k is None else self.check_k(k)
        return self.select(self.pre_activations(self.check_input(x)), k)

    def select(self, pre: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode_sparse` from given pre-activations ``pre`` (batch, n_latents)."""
        k = self.k if k is None else self.check_k(k)
        top = torch.topk(pre, k, dim=1, sorted=True)
        return torch.relu(top.values), top.indices

    def scatter(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Dense latents (batch, n_latents) from the sparse ``(values, indices)``."""
        return torch.zeros(values.shape[0], self.n_latents, dtype=values.dtype, device=values.device).scatter(
            1, indices, values)

    def _impl(self, values: torch.Tensor) -> str:
        """The sparse decoder's implementation: with ``"auto"``, Triton on CUDA and Numba on the CPU, at
        every size (whether Triton beats the dense decoder on a small SAE is for
        ``python -m paperlab.bench sae --device cuda`` to say; before its kernels stopped synchronising
        the GPU it was 2x slower at 1024 latents on an H200)."""
        return self.decoder_impl

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``x_hat = sum_j values_j W_dec[indices_j] + b_pre`` with the sparse kernel."""
        return sparse_decode(values, indices, self.W_dec, impl=self._impl(values)) + self.b_pre

    def encode(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Dense latents z: (batch, n_latents), zero except at the top-k."""
        return self.scatter(*self.encode_sparse(x, k))

    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return self.decode_sparse(*self.encode_sparse(x, k))

    def auxk_loss(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """``NMSE(e_hat, e)`` with ``e = x - x_hat`` (detached) and ``e_hat`` decoded from the top
        ``min(k_aux, n_dead)`` pre-activations of dead latents (no ``b_pre``); 0 when none is dead."""
        dead = self.dead_mask  # not fired for dead_tokens tokens
        n_dead = int(dead.sum())
        if self.k_aux == 0 or n_dead == 0:
            return torch.zeros((), device=x.device)
        dead_index = dead.nonzero().squeeze(1)
        top = torch.topk(pre[:, dead_index], min(self.k_aux, n_dead), dim=1)  # top-k_aux among dead latents
        e = (x - x_hat).detach()  # the residual e = x - x_hat, as a target (no gradient)
        e_hat = sparse_decode(torch.relu(top.values), dead_index[top.indices], self.W_dec,
                              impl=self._impl(pre))  # e_hat = W_dec z_aux, no b_pre
        return nmse(e_hat, e, allow_zero_variance=True)  # L_aux = NMSE(e_hat, e), sec. A.2

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch; updates the dead-latent counters when in training mode."""
        self.check_input(x)
        pre = self.pre_activations(x)  # W_enc (x - b_pre) + b_enc
        k_big = min(4 * self.k, self.n_latents) if self.multi_topk else self.k
        top = torch.topk(pre, k_big, dim=1, sorted=True)  # the k largest (4k for Multi-TopK), largest first
        values, indices = torch.relu(top.values), top.indices  # z = ReLU(TopK(...)), eq. 2
        x_hat = self.decode_sparse(values[:, : self.k], indices[:, : self.k])  # W_dec z + b_pre, eq. 1
        main = nmse(x_hat, x)  # L(k) = ||x - x_hat||^2 / ||x - mean(x)||^2, sec. 2.3
        loss = main
        info = {"nmse": float(main.detach())}
        if self.multi_topk:
            x_hat_big = self.decode_sparse(values, indices)  # the same encoding, 4k latents kept
            main_big = nmse(x_hat_big, x)
            loss = loss + main_big / 8  # + L(4k) / 8, Multi-TopK, sec. 5.3
            info["nmse_4k"] = float(main_big.detach())
        if self.training:  # a latent fires when it is in the top k with activation > 1e-3
            fired = torch.zeros(self.n_latents, dtype=torch.bool, device=x.device)
            fired[indices[:, : self.k][values[:, : self.k] > FIRE_THRESHOLD]] = True
            self.record_firing(fired, x.shape[0])
        aux = self.auxk_loss(x, x_hat, pre)  # L_aux: the residual from the top-k_aux dead latents, sec. A.2
        info["auxk"] = float(aux.detach())
        return loss + self.aux_coefficient * aux, info  # L + alpha L_aux, alpha = 1/32


class ReLUSAE(SparseAutoencoder):
    """ReLU SAE with an L1 penalty (eq. 1, the baseline of section 2.2).

    Loss: ``NMSE(x_hat, x) + lambda_t * E_b[sum_i z_bi] / sqrt(E_b ||x_b - mean(x)||^2)``; dividing by the
    root of the batch's total variance makes the penalty, like the NMSE, independent of the scale of
    ``x``. The decoder has unit-norm directions (so the L1 of z cannot be shrunk by growing W_dec).
    ``lambda_t`` ramps linearly from 0 to ``l1_coefficient`` over the first ``l1_warmup_steps`` training
    steps (the L1 warm-up of common practice, e.g. Anthropic's April 2024 update; the ramp lets the
    dictionary form before the penalty can shut latents off); the step count is the buffer ``steps``.
    """

    def __init__(self, d_model: int, n_latents: int, l1_coefficient: float, *, l1_warmup_steps: int = 0,
                 tied_init: bool = True, dead_tokens: int = 100_000, seed: int | None = None):
        super().__init__(d_model, n_latents, tied_init=tied_init, dead_tokens=dead_tokens, seed=seed)
        if isinstance(l1_coefficient, bool) or not (isinstance(l1_coefficient, (int, float))
                                                    and l1_coefficient >= 0):
            raise ValueError(f"l1_coefficient must be a number >= 0, got {l1_coefficient!r}")
        self.l1_coefficient = float(l1_coefficient)
        self.l1_warmup_steps = _check_int("l1_warmup_steps", l1_warmup_steps, 0)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def current_l1_coefficient(self) -> float:
        """``lambda_t = l1_coefficient * min(1, t / l1_warmup_steps)`` at the current training step t."""
        if self.l1_warmup_steps == 0:
            return self.l1_coefficient
        return self.l1_coefficient * min(1.0, int(self.steps) / self.l1_warmup_steps)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z = ReLU(W_enc (x - b_pre) + b_enc): (batch, n_latents)."""
        return torch.relu(self.pre_activations(self.check_input(x)))

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch; in training mode also counts the step and updates the dead counters."""
        z = self.encode(x)
        x_hat = self.decode(z)
        main = nmse(x_hat, x)  # ||x - x_hat||^2 / ||x - mean(x)||^2
        scale = (x - x.mean(0)).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        l1 = z.sum(1).mean() / scale  # ||z||_1 (z >= 0), in units of the input's spread
        if self.training:
            self.steps += 1
            self.record_firing((z > FIRE_THRESHOLD).any(0), x.shape[0])
        coefficient = self.current_l1_coefficient()
        return main + coefficient * l1, {"nmse": float(main.detach()), "l1": float(l1.detach()),
                                         "l1_coefficient": coefficient}


# ------------------------------------------------------------------------------------- optimizer
@torch.no_grad()
def project_decoder_grad_(W_dec: torch.Tensor) -> None:
    """Remove from each decoder direction's gradient its component along the direction:
    ``g_i <- g_i - (w_i . g_i) w_i`` (rows of ``W_dec``, which have unit norm)."""
    if W_dec.grad is not None:
        parallel = (W_dec.grad * W_dec).sum(1, keepdim=True)
        W_dec.grad -= parallel * W_dec


@torch.no_grad()
def normalise_decoder_(W_dec: torch.Tensor) -> None:
    """Rescale every decoder direction (row of ``W_dec``) to unit norm."""
    W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


class SAEAdam(torch.optim.Adam):
    """Adam for an SAE (the paper's appendix A; the renormalisation after each step is section A.1's):
    betas (0.9, 0.999), eps 6.25e-10, no weight decay; each step

    1. projects the parallel component out of the decoder's gradient (:func:`project_decoder_grad_`),
    2. takes the Adam step,
    3. renormalises the decoder directions to unit norm (:func:`normalise_decoder_`).

    Used as the ``optimizer`` of :func:`paperlab.train.train`, which calls ``step()`` after backward.
    """

    def __init__(self, sae: SparseAutoencoder, lr: float, eps: float = 6.25e-10,
                 betas: tuple[float, float] = (0.9, 0.999)):
        super().__init__(sae.parameters(), lr=lr, eps=eps, betas=betas)
        self.W_dec = sae.W_dec

    def step(self, closure=None):
        project_decoder_grad_(self.W_dec)
        out = super().step(closure)
        normalise_decoder_(self.W_dec)
        return out
