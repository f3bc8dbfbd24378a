"""The SAE chapter's live explorer: the number of active latents k against the reconstruction, and the
active latents of one token (see :mod:`paperlab.explore` for the pattern, ``04-sae.md`` (sec-sae-multitopk)
for test-time k)."""

from __future__ import annotations

import torch

from paperlab.explore import Choice, Explorer, IntSlider
from paperlab.plot import labelled
from paperlab.sae.data import SyntheticData
from paperlab.sae.metrics import nmse
from paperlab.sae.model import TopKSAE

__all__ = ["topk_explorer", "multi_topk_saes"]


def multi_topk_saes(config) -> dict[str, TopKSAE]:
    """The two SAEs of the chapter's Multi-TopK section (a TopK and a Multi-TopK SAE, both trained at
    ``config.multi_k`` with ``config.frontier_size`` latents, the first seed's), from the artifact cache."""
    from paperlab.sae import experiments
    from paperlab.sae.train import load_sae

    runs = {name: experiments._topk_run(config, config.frontier_size, config.multi_k, config.seeds[0],
                                        multi_topk=multi)
            for name, multi in (("TopK", False), ("Multi-TopK", True))}
    return {name: load_sae(run)[0] for name, run in runs.items()}


def topk_explorer(saes: dict[str, TopKSAE], data: SyntheticData, *, n_tokens: int = 1024, seed: int = 0,
                  max_k: int = 64) -> Explorer:
    """Controls: the ``sae`` (one of ``saes``, e.g. TopK against Multi-TopK), the test-time ``k`` and the
    ``token`` (one of ``n_tokens`` synthetic samples, drawn with ``seed``).

    Left, the token's 40 largest pre-activations, the k kept ones coloured, each kept latent labelled with
    the true feature its decoder direction is closest to (cosine); middle, the token and its
    reconstruction, coordinate by coordinate; right, the NMSE over all ``n_tokens`` against k for every
    SAE (the curves are computed once, when the explorer is built), the current k marked.
    """
    if not saes:
        raise ValueError("topk_explorer needs at least one SAE")
    x = data.sample(n_tokens, torch.Generator().manual_seed(seed))
    largest = min(max_k, min(sae.n_latents for sae in saes.values()))
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= largest]
    with torch.no_grad():
        curves = {name: [float(nmse(sae(x, k), x)) for k in ks] for name, sae in saes.items()}
        matches = {}
        for name, sae in saes.items():  # best true feature per latent: cosine of unit decoder rows
            directions = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
            cosine = directions @ data.features.T  # (n_latents, n_features)
            matches[name] = cosine.max(dim=1)

    def draw(fig, *, sae: str, k: int, token: int):
        model = saes[sae]
        with torch.no_grad():
            pre = model.pre_activations(x[token : token + 1])[0]
            x_hat = model(x[token : token + 1], k)[0]
        order = torch.argsort(pre, descending=True)[:40]
        bars_ax, token_ax, curve_ax = fig.subplots(1, 3, width_ratios=[1.3, 1, 1])
        colours = ["C0" if i < k else "0.75" for i in range(len(order))]
        bars_ax.bar(range(len(order)), pre[order].numpy(), color=colours)
        best_cosine, best_feature = matches[sae]
        for i, latent in enumerate(order[: min(k, 8)].tolist()):
            bars_ax.annotate(f"f{int(best_feature[latent])} ({float(best_cosine[latent]):.2f})",
                             (i, float(pre[latent])), rotation=90, fontsize=6, ha="center", va="bottom",
                             xytext=(0, 2), textcoords="offset points")
        bars_ax.axhline(0, color="k", lw=0.5)
        bars_ax.set_ylim(top=1.35 * max(float(pre[order[0]]), 1e-6))  # room for the labels
        labelled(bars_ax, "latents, largest pre-activation first", "pre-activation",
                 f"{sae}: the k = {k} kept (blue), true feature (cosine)")
        token_ax.plot(x[token].numpy(), "o-", ms=2, lw=0.8, color="0.5", label="x")
        token_ax.plot(x_hat.numpy(), "o-", ms=2, lw=0.8, color="C0", label="reconstruction")
        error = float(((x_hat - x[token]).norm() / x[token].norm()) ** 2)
        labelled(token_ax, "coordinate", "value", f"token {token}: squared error / |x|^2 = {error:.3f}")
        token_ax.legend(fontsize=7)
        for name, curve in curves.items():
            curve_ax.plot(ks, curve, "o-", ms=3, label=name, color="C3" if name == sae else "0.6")
        curve_ax.plot(k, float(nmse(_at(model, x, k), x)), "o", ms=9, mfc="none", color="C3")
        curve_ax.axvline(model.k, color="k", ls=":", lw=1, label=f"training k = {model.k}")
        curve_ax.set_xscale("log", base=2)
        curve_ax.set_yscale("log")
        labelled(curve_ax, "k at test time", f"NMSE over {n_tokens} tokens")
        curve_ax.legend(fontsize=7)

    names = list(saes)
    first = saes[names[0]]
    return Explorer(draw, {
        "sae": Choice(names, names[-1], label="SAE"),
        "k": IntSlider(1, largest, min(first.k, largest), label="k (test time)"),
        "token": IntSlider(0, n_tokens - 1, 0, label="token"),
    }, what="k, the token and the SAE", figsize=(12, 3.8))


def _at(sae: TopKSAE, x: torch.Tensor, k: int) -> torch.Tensor:
    with torch.no_grad():
        return sae(x, k)
