"""The Mamba-2 block and a Mamba-2 language model (Dao & Gu, 2024, section 7; ``mamba2_simple.py``).

One block maps ``u: (batch, seq, d_model)`` to the same shape:

1. one input projection produces, in parallel, ``z`` (the gate), ``x`` (attention's V), ``B`` (K),
   ``C`` (Q) and ``dt``: ``[z, x, B, C, dt] = u W_in`` (Mamba-1 computed ``B, C, dt`` from ``x``, in
   sequence; producing them together is what lets tensor parallelism split the block like attention);
2. a causal depthwise convolution (width ``d_conv``) over ``[x, B, C]``, then SiLU;
3. ``dt = softplus(dt + dt_bias)``, ``A = -exp(A_log)`` (one scalar per head), and the SSD layer
   ``y = SSD(x, dt, A, B, C, D)`` with ``ngroups`` groups of ``B, C`` shared across heads;
4. the gated RMSNorm ``RMSNorm(y * SiLU(z))`` (the extra normalisation is for stability), then
   ``out_proj``.

:class:`Mamba2LM` stacks ``n_layers`` pre-norm residual blocks ``h + Block(RMSNorm(h))`` between a token
embedding and a tied LM head, like :class:`paperlab.nn.GPT` but with no attention and no MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from paperlab.config import check_ints, check_numbers, check_that
from paperlab.nn import RMSNorm, check_token_ids
from paperlab.ssd.core import ssd_chunked, ssd_quadratic, ssd_recurrent

ALGORITHMS = ("chunked", "recurrent", "quadratic")


@dataclass(frozen=True)
class Mamba2Config:
    """Size of a Mamba-2 block / LM. ``d_inner = expand * d_model`` splits into ``d_inner / headdim``
    heads; ``d_state`` is N, the state size per head and channel."""

    d_model: int = 64
    d_state: int = 16
    expand: int = 2
    headdim: int = 16
    ngroups: int = 1
    d_conv: int = 4
    chunk_size: int = 64
    vocab_size: int = 256
    n_layers: int = 2
    dt_min: float = 1e-3
    dt_max: float = 0.1
    a_init_min: float = 1.0
    a_init_max: float = 16.0

    def __post_init__(self):
        check_ints(self, "d_model", "d_state", "expand", "headdim", "ngroups", "d_conv", "chunk_size",
                   "vocab_size", "n_layers")
        check_that(self, self.d_inner % self.headdim == 0, "headdim",
                   f"a divisor of d_inner = expand * d_model = {self.d_inner} (d_inner must be divisible by "
                   "headdim)")
        check_that(self, self.nheads % self.ngroups == 0, "ngroups",
                   f"a divisor of nheads = {self.nheads} (nheads must be divisible by ngroups)")
        # dt ~ log-uniform[dt_min, dt_max] and A ~ uniform[a_init_min, a_init_max] (A > 0; the SSM uses -A)
        check_numbers(self, "dt_min", "dt_max", "a_init_min", "a_init_max", low=0, open_low=True)
        check_that(self, self.dt_min <= self.dt_max, "dt_max", f">= dt_min = {self.dt_min}")
        check_that(self, self.a_init_min <= self.a_init_max, "a_init_max",
                   f">= a_init_min = {self.a_init_min}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim


def causal_depthwise_conv(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The causal depthwise convolution of the block, on ``u: (batch, seq, channels)``:
    ``out_t = bias + sum_k weight[:, 0, k] * u_{t - (K - 1) + k}`` (zeros before the start), with
    ``weight: (channels, 1, K)`` as in ``nn.Conv1d(groups=channels)``.

    The same numbers as ``conv1d(u, padding=K - 1)[..., :seq]``, written as ``K`` shifted multiply-adds:
    with ``K = 4`` that is faster on a CPU than the convolution (whose backward pass is slow for
    depthwise filters) and keeps the channels-last layout of the projections around it.
    """
    width = weight.shape[-1]
    seq = u.shape[1]
    padded = F.pad(u, (0, 0, width - 1, 0))  # (batch, width - 1 + seq, channels)
    out = padded[:, width - 1:] * weight[:, 0, width - 1]
    for k in range(width - 1):
        out = out + padded[:, k:k + seq] * weight[:, 0, k]
    return out if bias is None else out + bias


class Mamba2Block(nn.Module):
    """The Mamba-2 mixer: ``(batch, seq, d_model) -> (batch, seq, d_model)``."""

    def __init__(self, config: Mamba2Config, algorithm: str = "chunked"):
        super().__init__()
        self.config = config
        self.algorithm = algorithm
        c = config
        self.conv_dim = c.d_inner + 2 * c.ngroups * c.d_state
        self.in_proj = nn.Linear(c.d_model, c.d_inner + self.conv_dim + c.nheads, bias=False)  # z, xBC, dt
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, c.d_conv, groups=self.conv_dim,
                                padding=c.d_conv - 1)
        # dt ~ log-uniform[dt_min, dt_max] at init: dt_bias = softplus^{-1}(dt) = dt + log(1 - exp(-dt))
        dt = torch.exp(torch.rand(c.nheads) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(c.nheads).uniform_(c.a_init_min, c.a_init_max)))
        self.D = nn.Parameter(torch.ones(c.nheads))
        self.norm = RMSNorm(c.d_inner)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=False)

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @algorithm.setter
    def algorithm(self, value: str) -> None:
        if value not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {value!r}")
        self._algorithm = value

    def ssd_inputs(self, u: torch.Tensor):
        """The SSD inputs ``(x, dt, A, B, C, D)`` and the gate ``z`` for ``u: (batch, seq, d_model)``."""
        if u.dim() != 3 or u.shape[-1] != self.config.d_model or u.shape[1] == 0:
            raise ValueError(f"u must be (batch, seq >= 1, d_model = {self.config.d_model}), got "
                             f"{tuple(u.shape)}")
        c = self.config
        z, xBC, dt = self.in_proj(u).split([c.d_inner, self.conv_dim, c.nheads], dim=-1)  # in parallel
        xBC = F.silu(causal_depthwise_conv(xBC, self.conv1d.weight, self.conv1d.bias))  # short conv, SiLU
        x, B, C = xBC.split([c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state], dim=-1)
        x = rearrange(x, "b t (h p) -> b t h p", p=c.headdim)  # heads of headdim channels
        B, C = (rearrange(t, "b t (g n) -> b t g n", n=c.d_state) for t in (B, C))  # groups of d_state
        dt = F.softplus(dt + self.dt_bias)  # Delta = softplus(dt + b_Delta) > 0
        A = -torch.exp(self.A_log.float())  # A = -exp(A_log) < 0: a scalar per head
        return (x, dt, A, B, C, self.D), z

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        (x, dt, A, B, C, D), z = self.ssd_inputs(u)
        if self.algorithm == "chunked":  # the same layer three ways (eq. 2; sections 5.1 and 6)
            y, _ = ssd_chunked(x, dt, A, B, C, D, chunk_size=self.config.chunk_size)
        elif self.algorithm == "recurrent":
            y, _ = ssd_recurrent(x, dt, A, B, C, D)  # h_t = a_t h_{t-1} + Delta_t x_t B_t^T, eq. 2
        else:
            y, _ = ssd_quadratic(x, dt, A, B, C, D)  # y = (L o C B^T)(Delta x) + D x, section 5.1
        y = rearrange(y, "b t h p -> b t (h p)")
        return self.out_proj(self.norm(y * F.silu(z)))  # gated norm: RMSNorm(y * SiLU(z)), then W_out


class Mamba2LM(nn.Module):
    """Token embedding -> ``n_layers`` x ``h + Mamba2Block(RMSNorm(h))`` -> RMSNorm -> tied LM head."""

    def __init__(self, config: Mamba2Config, algorithm: str = "chunked"):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.norms = nn.ModuleList(RMSNorm(config.d_model) for _ in range(config.n_layers))
        self.blocks = nn.ModuleList(Mamba2Block(config, algorithm) for _ in range(config.n_layers))
        self.final_norm = RMSNorm(config.d_model)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def set_algorithm(self, algorithm: str) -> None:
        for block in self.blocks:
            block.algorithm = algorithm

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx: (batch, seq)`` token ids -> logits ``(batch, seq, vocab_size)``."""
        check_token_ids(idx, self.config.vocab_size)
        h = self.token_embedding(idx)
        for norm, block in zip(self.norms, self.blocks):
            h = h + block(norm(h))
        return self.final_norm(h) @ self.token_embedding.weight.T

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) over targets that are not ``ignore_index``."""
        logits = self(idx)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)
