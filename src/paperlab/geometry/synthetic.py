"""Synthetic unembeddings with a planted hierarchical structure: a test bed where the truth is known.

Given a concept tree (:class:`paperlab.geometry.hierarchy.Concepts`) and a vocabulary of tokens, each
concept ``a`` gets a random direction ``delta_a ~ N(0, scale_a^2 I_d / d)`` and each token ``y`` the
canonical representation

    g(y) = sum_{a : y in Y(a)} delta_a + epsilon_y,        epsilon_y ~ N(0, noise^2 I_d / d),

i.e. the sum of the directions of every concept it belongs to (its ancestors), plus its own noise. In
``d`` dimensions independent random directions are nearly orthogonal, so the planted vectors satisfy
hierarchical orthogonality: the vector of a parent (the sum of its ancestors' deltas) is orthogonal to a
child's increment ``delta_child``. The unembedding the estimator sees is a *distorted* copy,

    gamma(y) = M g(y) + c,         M = Q diag(s) Q^T,  s log-uniform in [1, anisotropy],

(``Q`` a random rotation, ``c`` a random offset): the Euclidean geometry of ``gamma`` is not the causal
one, and only whitening (``Cov(gamma)^{-1/2}``) undoes ``M`` (up to a rotation, which keeps inner
products). Tokens that belong to no concept (``n_other``) are pure noise, like the rest of a real
vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paperlab.config import check_ints, check_numbers
from paperlab.geometry.hierarchy import Concepts

__all__ = ["PlantedConfig", "planted_unembeddings"]


@dataclass(frozen=True)
class PlantedConfig:
    d: int = 128
    concept_scale: float = 1.0  # norm of each concept's delta
    root_scale: float = 1.0  # norm of the roots' deltas
    noise: float = 1.0  # norm of each token's own noise
    anisotropy: float = 100.0  # ratio of M's largest to smallest singular value
    n_other: int = 1000
    seed: int = 0

    def __post_init__(self):
        check_ints(self, "d")
        check_ints(self, "n_other", "seed", low=0)
        check_numbers(self, "concept_scale", "root_scale", "noise", low=0)
        check_numbers(self, "anisotropy", low=1)


def planted_unembeddings(concepts: Concepts, tokens: list[str], config: PlantedConfig) -> dict:
    """Planted unembeddings for ``tokens`` (then ``n_other`` extra noise tokens) over ``concepts``.

    Returns ``gamma`` (W, d) float64 with W = len(tokens) + n_other, ``g_true`` (the undistorted
    representations), ``delta`` {concept: (d,)} and ``M``. Raises if W <= d.
    """
    d = config.d
    vocab = len(tokens) + config.n_other
    if vocab <= d:
        raise ValueError(f"vocabulary ({vocab} tokens) must be larger than d = {d}")
    generator = torch.Generator().manual_seed(config.seed)

    def gaussian(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    index = {t: i for i, t in enumerate(tokens)}
    delta = {}
    g = gaussian(vocab, d) * config.noise / d**0.5
    for name in concepts.names:
        scale = config.root_scale if concepts.parent[name] is None else config.concept_scale
        delta[name] = gaussian(d) * scale / d**0.5
        members = [index[t] for t in concepts.tokens[name] if t in index]
        g[members] += delta[name]
    q, _ = torch.linalg.qr(gaussian(d, d))
    s = torch.logspace(0, torch.log10(torch.tensor(float(config.anisotropy))), d, dtype=torch.float64)
    M = q @ torch.diag(s) @ q.T
    gamma = g @ M.T + gaussian(d)
    return {"gamma": gamma, "g_true": g, "delta": delta, "M": M}
