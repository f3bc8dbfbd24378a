"""The causal inner product, vector representations of binary features, and the statistics of the paper.

Notation (Park, Choe, Jiang & Veitch, 2024): ``gamma(y)`` is the unembedding of token ``y`` (a row of the
LM head, ``W`` tokens by ``d`` dimensions), ``Y(w)`` the tokens having the binary feature ``w`` (e.g. the
lemmas of the hyponyms of ``animal.n.01``).

- **Canonical representation** (the causal inner product made Euclidean, introduced in Park, Choe &
  Veitch 2023 and used throughout the paper): ``g(y) = Cov(gamma)^{-1/2} (gamma(y) - E[gamma])``, so
  that ``Cov(g) = I`` and the Euclidean inner product of ``g``'s is the causal one (:func:`whiten`).
- **Vector of a binary feature** (the paper's estimator, as in ``hierarchical/`` of the reference
  code): with ``m = mean_{y in Y(w)} g(y)`` and ``Sigma`` the (Ledoit-Wolf shrunk) covariance of those
  ``g(y)``, ``u = Sigma^+ m / ||Sigma^+ m||`` and ``l_w = (m . u) u`` (:func:`estimate_vector`,
  ``method="lda"``); LDA-like: the direction separates ``Y(w)`` from the rest with the least spread
  within ``Y(w)``, scaled so that the mean projection ``g(y) . l_w / ||l_w||^2`` over ``Y(w)`` is
  exactly 1. ``method="mean"`` uses ``l_w = m`` (the plain-mean variant).
- **Hierarchical orthogonality** (the paper's main theorem): for ``w`` a child of ``z``,
  ``l_z . (l_w - l_z) = 0``; we report ``cos(l_z, l_w - l_z)`` (:func:`orthogonality`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "Whitening",
    "whiten",
    "ledoit_wolf",
    "pinv_times",
    "estimate_vector",
    "estimate_vectors",
    "projection",
    "cosine",
    "cosines",
    "orthogonality",
    "random_pairs",
    "split_tokens",
    "held_out_projections",
    "sibling_orthogonality",
]


class Whitening:
    """``g = A (gamma - mean)`` with ``A = Cov(gamma)^{-1/2}`` (symmetric), from an eigendecomposition.

    gamma: (W, d) with W > d. ``A`` maps unembeddings to the canonical space; an embedding
    (a hidden state ``lambda`` with ``logit(y) = lambda . gamma(y)``) maps as ``A^{-T} lambda = Cov^{1/2}
    lambda``, so that ``lambda . gamma(y) = (A^{-T} lambda) . g(y) + const``; a vector ``l`` of the
    canonical space is added to a hidden state as ``A^T l`` (:meth:`to_embedding_direction`).
    """

    def __init__(self, gamma: torch.Tensor, eps: float = 1e-8):
        if not isinstance(gamma, torch.Tensor) or gamma.dim() != 2:
            raise ValueError(f"gamma must be a 2-D (vocab, d) tensor, got {getattr(gamma, 'shape', gamma)!r}")
        vocab, d = gamma.shape
        if vocab <= d:
            raise ValueError(
                f"gamma has {vocab} tokens for {d} dimensions: the covariance of the unembedding "
                "is singular; the causal inner product needs vocab much larger than d"
            )
        gamma = gamma.detach().double()
        self.mean = gamma.mean(0)  # E[gamma]
        centred = gamma - self.mean
        covariance = centred.T @ centred / vocab  # Cov(gamma)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # Cov = V diag(e) V^T
        if eigenvalues.min() <= eps * eigenvalues.max():
            raise ValueError(
                f"Cov(gamma) is (numerically) singular: smallest eigenvalue {eigenvalues.min():.3g}, "
                f"largest {eigenvalues.max():.3g}"
            )
        self.covariance = covariance
        self.A = eigenvectors @ torch.diag(eigenvalues.rsqrt()) @ eigenvectors.T  # Cov^{-1/2}
        self.A_inverse = eigenvectors @ torch.diag(eigenvalues.sqrt()) @ eigenvectors.T  # Cov^{1/2}

    def __call__(self, gamma: torch.Tensor) -> torch.Tensor:
        """g(y) for the rows of ``gamma`` (float64)."""
        return (gamma.detach().double() - self.mean) @ self.A.T  # g(y) = Cov^{-1/2} (gamma(y) - E[gamma])

    def to_embedding_direction(self, l: torch.Tensor) -> torch.Tensor:
        """The hidden-state direction whose addition adds ``l . g(y)`` to every logit: ``A^T l``."""
        return l.double() @ self.A


def whiten(gamma: torch.Tensor) -> torch.Tensor:
    """The canonical representation ``g = Cov(gamma)^{-1/2} (gamma - E[gamma])``: (W, d), float64."""
    return Whitening(gamma)(gamma)


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf shrunk covariance of the rows of ``x`` (n, d): ``(1 - s) S + s mu I`` with ``S`` the
    empirical covariance, ``mu = tr(S) / d`` and the shrinkage ``s`` of Ledoit & Wolf (2004), computed
    as scikit-learn's ``LedoitWolf``. Returns (covariance, s)."""
    covariance, shrinkage = _ledoit_wolf(x)
    return covariance, float(shrinkage)


def _ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ledoit_wolf` of each (n, d) matrix of a batch ``x`` (..., n, d): covariances (..., d, d) and
    shrinkages (...)."""
    n, d = x.shape[-2:]
    x = x - x.mean(-2, keepdim=True)
    s_emp = x.mT @ x / n  # S
    trace = s_emp.diagonal(dim1=-2, dim2=-1).sum(-1)
    mu = trace / d  # tr(S) / d
    beta_ = x.pow(2).sum(-1).pow(2).sum(-1) / n  # sum of the entries of (x^2)^T x^2, without forming it
    delta_ = s_emp.pow(2).sum((-2, -1))
    beta = (beta_ - delta_) / (d * n)
    delta = (delta_ - 2 * mu * trace + d * mu**2) / d
    shrinkage = torch.where(delta == 0, 0.0, torch.minimum(beta, delta) / delta)  # 0 / 0 is not taken
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    covariance = (1 - shrinkage)[..., None, None] * s_emp + (shrinkage * mu)[..., None, None] * eye
    return covariance, shrinkage  # (1 - s) S + s mu I


def pinv_times(sigma: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``Sigma^+ m`` for a symmetric positive semi-definite ``sigma (..., d, d)`` and ``m (..., d)``: a
    Cholesky solve where ``sigma`` is positive definite (a Ledoit-Wolf estimate whose shrinkage is above 0,
    as every concept of the chapter's has), else the pseudo-inverse from ``sigma``'s eigendecomposition
    (``torch.linalg.pinv(..., hermitian=True)``), which leaves out its null space.

    Not ``torch.linalg.lstsq``'s default driver on the CPU, gelsy: PyTorch (2.13 included) hands it a
    pivot array that is never cleared, so its result depends on what that memory held before: other last
    bits from run to run, and for a singular matrix possibly a wrong rank and a wrong solution
    (pytorch/pytorch#187411)."""
    L, info = torch.linalg.cholesky_ex(sigma)
    out = torch.cholesky_solve(m[..., None], L)[..., 0]
    failed = info != 0  # not positive definite (to working precision)
    if bool(failed.any()):
        pseudo = (torch.linalg.pinv(sigma, hermitian=True) @ m[..., None])[..., 0]
        out = torch.where(failed[..., None], pseudo, out)
    return out


def estimate_vector(g: torch.Tensor, method: str = "lda") -> torch.Tensor:
    """The vector ``l_w`` of a feature from the canonical representations ``g: (n, d)`` of its tokens;
    for a batch of token sets of one size, ``g: (batch, n, d)`` gives ``(batch, d)``, one vector each."""
    if method not in ("lda", "mean"):
        raise ValueError(f"unknown method {method!r}; use 'lda' or 'mean'")
    if g.dim() not in (2, 3) or g.shape[-2] < 2:
        raise ValueError(
            "need the representations of at least 2 tokens as an (n, d) tensor (or a (batch, n, d) one), "
            f"got {tuple(g.shape)}"
        )
    m = g.mean(-2)  # mean of g(y) over Y(w)
    if method == "mean":
        return m  # l_w = m, the plain-mean variant
    covariance, _ = _ledoit_wolf(g)  # Sigma: the spread inside Y(w), shrunk
    direction = pinv_times(covariance, m)  # Sigma^+ m
    u = direction / direction.norm(dim=-1, keepdim=True)  # u = Sigma^+ m / ||Sigma^+ m||
    return (m * u).sum(-1, keepdim=True) * u  # l_w = (m . u) u: mean projection g(y) . l_w / ||l_w||^2 is 1


def estimate_vectors(
    g: torch.Tensor, token_sets: dict[str, Sequence[int]], method: str = "lda", min_tokens: int = 2
) -> dict[str, torch.Tensor]:
    """``l_w`` for every feature ``w`` of ``token_sets`` (feature -> token indices into the rows of g)."""
    out = {}
    for name, index in token_sets.items():
        if len(index) < min_tokens:
            raise ValueError(
                f"concept {name!r} has {len(index)} tokens, fewer than min_tokens = {min_tokens}"
            )
        out[name] = estimate_vector(g[torch.as_tensor(list(index))], method)
    return out


def projection(g: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """``g(y) . l / ||l||^2`` for each row: 1 on average over the tokens ``l`` was estimated from."""
    return g @ l / l.dot(l)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(cosines(a, b))


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The cosine of each pair of rows of ``a`` and ``b`` (broadcast over leading dimensions)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)


def orthogonality(vectors: dict[str, torch.Tensor], pairs: Sequence[tuple[str, str]]) -> list[float]:
    """``cos(l_z, l_w - l_z)`` for each (parent z, child w) pair."""
    return [cosine(vectors[z], vectors[w] - vectors[z]) for z, w in pairs]  # l_z . (l_w - l_z) = 0 in theory


def sibling_orthogonality(
    vectors: dict[str, torch.Tensor], triples: Sequence[tuple[str, str, str]]
) -> list[float]:
    """``cos(l_z, l_w1 - l_w2)`` for each (parent z, child w1, child w2): sibling differences vs parent."""
    return [cosine(vectors[z], vectors[a] - vectors[b]) for z, a, b in triples]


def random_pairs(
    names: Sequence[str],
    true_pairs: Sequence[tuple[str, str]],
    n: int,
    generator: torch.Generator,
    related: dict[str, set[str]] | None = None,
) -> list[tuple[str, str]]:
    """``n`` random ordered pairs (z, w) of distinct concepts that are not a true (parent, child) pair nor
    (if ``related`` maps a concept to its ancestors) in an ancestor relation."""
    true = set(true_pairs)
    out = []
    while len(out) < n:
        i, j = torch.randint(len(names), (2,), generator=generator).tolist()
        z, w = names[i], names[j]
        if i == j or (z, w) in true:
            continue
        if related is not None and (z in related[w] or w in related[z]):
            continue
        out.append((z, w))
    return out


def split_tokens(
    index: Sequence[int], fraction: float, generator: torch.Generator
) -> tuple[list[int], list[int]]:
    """A random (train, held-out) split with ``fraction`` of the tokens in train (at least 2 each side)."""
    index = list(index)
    if len(index) < 4:
        raise ValueError(f"need at least 4 tokens to split into train and held-out, got {len(index)}")
    order = torch.randperm(len(index), generator=generator).tolist()
    n_train = min(max(2, round(fraction * len(index))), len(index) - 2)
    return sorted(index[i] for i in order[:n_train]), sorted(index[i] for i in order[n_train:])


def held_out_projections(
    g: torch.Tensor,
    token_sets: dict[str, Sequence[int]],
    fraction: float = 0.7,
    seed: int = 0,
    method: str = "lda",
    n_random: int = 200,
) -> dict[str, dict]:
    """For each feature: estimate ``l_w`` on ``fraction`` of its tokens; return the mean projection of the
    training tokens (1 by construction), of the held-out tokens, and of ``n_random`` random tokens outside
    ``Y(w)``. The paper's check that ``l_w`` generalises (their Figure 3 in arXiv v3, the ICLR 2025 version;
    Figure 4 in v1)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, index in token_sets.items():
        train, held = split_tokens(index, fraction, generator)
        l = estimate_vector(g[torch.tensor(train)], method)
        inside = set(index)
        outside = torch.tensor([i for i in range(len(g)) if i not in inside])
        pick = outside[torch.randperm(len(outside), generator=generator)[:n_random]]
        out[name] = {
            "train": float(projection(g[torch.tensor(train)], l).mean()),
            "held_out": float(projection(g[torch.tensor(held)], l).mean()),
            "random": float(projection(g[pick], l).mean()),
            "held_out_all": projection(g[torch.tensor(held)], l).tolist(),
            "random_all": projection(g[pick], l).tolist(),
        }
    return out
