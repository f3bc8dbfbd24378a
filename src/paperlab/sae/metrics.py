r"""How to evaluate a sparse autoencoder (Gao et al., 2024, sections 2 and 4).

- :func:`nmse`: normalised mean squared error. **Normaliser: the total variance of the target batch**,

  .. math::

      \mathrm{NMSE}(\hat x, x) =
      \frac{\sum_b \lVert x_b - \hat x_b\rVert^2}{\sum_b \lVert x_b - \bar x\rVert^2},
            \qquad \bar x = \tfrac1B \textstyle\sum_b x_b ,

  so predicting the batch mean gives exactly 1 and a perfect reconstruction 0. (The reference code also
  has a per-token variant normalised by ``mean(x_b^2)``; we use the mean-centred one throughout.)
- :func:`l0`: mean number of nonzero latents per token.
- :func:`firing_counts`: how often each latent fires on a sample (a latent that never fires is not live).
- :func:`feature_recovery`: on data with known features, the mean over true features of the best cosine
  similarity with any decoder direction ("recovery of hypothesised features"), and the per-feature best;
  :func:`random_dictionary_recovery` is its chance level.
- :func:`downstream_loss`: a language model's next-token loss when one residual-stream activation is
  replaced by the SAE's reconstruction (section 4.1); :func:`fraction_of_loss_recovered` places it
  between the mean-ablated and the clean model.
- :func:`top_activations`: the tokens on which a latent fires most (what a reader looks at first).
- :func:`probe_loss`: best 1-D logistic probe on single latents for a known binary feature (section 4.2).
"""

from __future__ import annotations

import torch

__all__ = ["nmse", "l0", "firing_counts", "feature_recovery", "random_dictionary_recovery", "downstream_loss",
           "fraction_of_loss_recovered", "top_activations", "probe_loss", "binary_entropy"]

FIRE_THRESHOLD = 1e-3
"""A latent "fires" on a token when its activation exceeds this (the reference code's threshold)."""


def nmse(x_hat: torch.Tensor, x: torch.Tensor, *, allow_zero_variance: bool = False) -> torch.Tensor:
    """Normalised MSE (see the module docstring); ``x_hat, x: (batch, d)``; a scalar tensor.

    A target with zero variance (every row equal, or a single row) has no meaningful NMSE and raises a
    ValueError, unless ``allow_zero_variance`` (then the denominator is clamped at 1e-12).
    """
    if x_hat.shape != x.shape or x.dim() != 2:
        raise ValueError(f"x_hat and x must both have shape (batch, d); got {tuple(x_hat.shape)} and "
                         f"{tuple(x.shape)}")
    variance = (x - x.mean(0)).pow(2).sum()
    if not allow_zero_variance and float(variance) == 0.0:
        raise ValueError("x has zero variance over the batch (all rows equal or batch of 1): NMSE undefined")
    return (x_hat - x).pow(2).sum() / variance.clamp_min(1e-12)


def l0(z: torch.Tensor) -> float:
    """Mean number of nonzero entries per row of ``z: (batch, n_latents)``."""
    return float((z != 0).float().sum(1).mean())


def firing_counts(z: torch.Tensor) -> torch.Tensor:
    """(n_latents,) long: on how many rows of ``z: (batch, n_latents)`` each latent fires (> 1e-3)."""
    return (z > FIRE_THRESHOLD).sum(0)


def feature_recovery(decoder: torch.Tensor, features: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean over true features of ``max_i cos(feature, decoder_i)``, and the per-feature best cosines.

    decoder: (n_latents, d) decoder directions (pass only the live latents' rows to score live latents
    only); features: (n_features, d) true directions. A feature counts as *recovered* when its best cosine
    exceeds a threshold (0.9 in the chapter): ``(best > 0.9).float().mean()``.
    """
    if decoder.dim() != 2 or features.dim() != 2 or decoder.shape[1] != features.shape[1]:
        raise ValueError(f"decoder (n_latents, d) and features (n_features, d) must share d; got "
                         f"{tuple(decoder.shape)} and {tuple(features.shape)}")
    if decoder.shape[0] == 0:
        return 0.0, torch.zeros(features.shape[0])
    dec = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    feat = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best = (feat @ dec.T).max(dim=1).values
    return float(best.mean()), best


def random_dictionary_recovery(n_latents: int, features: torch.Tensor, *, threshold: float = 0.9,
                               draws: int = 20, seed: int = 0) -> dict[str, list[float]]:
    """Chance level of :func:`feature_recovery`: ``draws`` dictionaries of ``n_latents`` random unit
    directions (Gaussian, normalised), each scored against ``features``. Returns the per-draw mean best
    cosine (``"mean_best_cosine"``) and fraction of features above ``threshold`` (``"recovered"``). Give a
    ``seed`` other than the one that drew ``features``, or the first draw repeats them."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, list[float]] = {"mean_best_cosine": [], "recovered": []}
    for _ in range(draws):
        dictionary = torch.randn(n_latents, features.shape[1], generator=generator)
        mean, best = feature_recovery(dictionary, features)
        out["mean_best_cosine"].append(mean)
        out["recovered"].append(float((best > threshold).float().mean()))
    return out


@torch.no_grad()
def downstream_loss(model, sae, layer: int, idx: torch.Tensor, targets: torch.Tensor, mode: str = "sae",
                    mean: torch.Tensor | None = None, component: str = "residual") -> float:
    """Next-token loss (nats/token) of ``model`` with one activation at ``layer`` replaced.

    component: ``"residual"`` (the residual stream ``h`` after block ``layer - 1``) or ``"block"`` (that
    block's output ``a = h_layer - h_{layer-1}``; the stream then continues as ``h_{layer-1} + a_hat``).
    mode: ``"sae"`` (by the SAE's reconstruction, the SAE working on layer-normalised activations:
    ``a_hat = sae((a - mu) / sigma) * sigma + mu`` per token), ``"clean"`` (unchanged), ``"zero"`` (by 0)
    or ``"mean"`` (by ``mean``, a (d_model,) vector: the activation's mean over tokens).
    idx, targets: (batch, seq) token ids, the targets shifted by one.
    """
    if mode not in ("sae", "clean", "zero", "mean"):
        raise ValueError(f"mode must be 'sae', 'clean', 'zero' or 'mean', got {mode!r}")
    if component not in ("residual", "block"):
        raise ValueError(f"component must be 'residual' or 'block', got {component!r}")
    before: list[torch.Tensor] = []

    def replace(a: torch.Tensor) -> torch.Tensor:
        if mode == "zero":
            return torch.zeros_like(a)
        if mode == "mean":
            return mean.to(a).expand_as(a)
        mu = a.mean(-1, keepdim=True)
        sigma = (a - mu).pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
        flat = ((a - mu) / sigma).reshape(-1, a.shape[-1])
        return sae(flat).reshape(a.shape) * sigma + mu

    def hook(index: int, h: torch.Tensor) -> torch.Tensor:
        if component == "block" and index == layer - 1:
            before.append(h)  # the stream the block reads: its output is what it adds to this
        if index != layer or mode == "clean":
            return h
        if component == "block":
            return before[-1] + replace(h - before[-1])
        return replace(h)

    logits = model(idx, hook=hook)
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()))


def fraction_of_loss_recovered(loss: float, clean: float, ablated: float) -> float:
    """``(ablated - loss) / (ablated - clean)``: 1 when splicing the SAE in costs nothing, 0 when it is as
    bad as replacing the activation by its mean (``ablated``). Needs ``ablated > clean``."""
    if not ablated > clean:
        raise ValueError(f"the ablated loss ({ablated}) must exceed the clean loss ({clean}) for a fraction "
                         "of loss recovered to mean anything")
    return (ablated - loss) / (ablated - clean)


@torch.no_grad()
def top_activations(z: torch.Tensor, latent: int, count: int = 5) -> tuple[list[int], list[float]]:
    """The ``count`` rows (tokens) of ``z: (n_tokens, n_latents)`` on which ``latent`` is largest, and its
    activations there (largest first; only rows where it fires)."""
    column = z[:, latent]
    top = torch.topk(column, min(count, column.numel()))
    keep = top.values > FIRE_THRESHOLD
    return top.indices[keep].tolist(), top.values[keep].tolist()


def binary_entropy(labels: torch.Tensor) -> float:
    """Entropy (nats) of a binary label's frequency: the loss of the best constant probe."""
    p = float(labels.float().mean())
    if p in (0.0, 1.0):
        return 0.0
    return float(-(p * torch.log(torch.tensor(p)) + (1 - p) * torch.log(torch.tensor(1 - p))))


def probe_loss(z: torch.Tensor, labels: torch.Tensor, steps: int = 200, lr: float = 0.5) -> tuple[float, int]:
    """Best 1-D logistic probe (section 4.2): for every latent ``i`` fit ``p(y=1) = sigmoid(a_i z_i + c_i)``
    by full-batch Adam on the cross-entropy, all latents at once; return ``(min_i loss_i, argmin_i)``.

    z: (n_tokens, n_latents) latents; labels: (n_tokens,) in {0, 1}. Latents are standardised first
    (the probe is invariant to that), which makes one learning rate fit all. Loss in nats per token.
    """
    if z.dim() != 2 or labels.shape != (z.shape[0],):
        raise ValueError(f"z must be (n_tokens, n_latents) and labels (n_tokens,); got {tuple(z.shape)}, "
                         f"{tuple(labels.shape)}")
    y = labels.float()[:, None]
    zs = (z - z.mean(0)) / z.std(0).clamp_min(1e-6)
    prior = y.mean().clamp(1e-4, 1 - 1e-4)
    a = torch.zeros(1, z.shape[1], requires_grad=True)
    c = torch.full((1, z.shape[1]), float(torch.log(prior / (1 - prior))), requires_grad=True)
    optimizer = torch.optim.Adam([a, c], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                zs * a + c, y.expand_as(zs), reduction="none").mean(0)
            loss.sum().backward()
            optimizer.step()
    with torch.no_grad():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            zs * a + c, y.expand_as(zs), reduction="none").mean(0)
    best = int(loss.argmin())
    return float(loss[best]), best
