"""The SaySelf chapter's explorer: the reliability diagram of any method, in or out of distribution, with
as many bins as the reader likes (the binned ECE changes with the binning; the stated levels do not).

It reads the chapter's cached results (:func:`paperlab.sayself.experiments.run`); nothing is trained here.
"""

from __future__ import annotations

import numpy as np

from paperlab.explore import Choice, Explorer, IntSlider
from paperlab.sayself.calibration import binned_ece, reliability

__all__ = ["pooled", "reliability_explorer"]


def pooled(results: dict, method: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Confidences (0..1) and correctness of ``method`` on ``split`` ("id" or "ood"), every seed's test
    questions pooled."""
    records = [seed["results"][method][split] for seed in results["seeds"]]
    confidence = np.concatenate([np.asarray(r["confidence"], float) / 10 for r in records])
    correct = np.concatenate([np.asarray(r["correct"], float) for r in records])
    return confidence, correct


def reliability_explorer(results: dict, methods: tuple[str, ...]) -> Explorer:
    """Reliability diagram (accuracy against stated confidence per bin, bar width = bin) of one of
    ``methods``, with the number of equal-width bins and the split as controls; the title gives the binned
    ECE at that binning."""
    data = {(m, s): pooled(results, m, s) for m in methods for s in ("id", "ood")}

    def draw(fig, *, method: str, split: str, n_bins: int):
        confidence, correct = data[method, split]
        bins = reliability(confidence, correct, n_bins)
        edges = np.asarray(bins["edges"])
        centres, width = (edges[:-1] + edges[1:]) / 2, 1 / n_bins
        accuracy = np.nan_to_num(np.asarray(bins["accuracy"]))
        ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        ax.bar(centres, accuracy, width=width * 0.9, color="tab:blue", alpha=0.8, label="accuracy in bin")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.05),
               title=f"{method}, {'in' if split == 'id' else 'out of'} distribution: "
                     f"ECE = {binned_ece(confidence, correct, n_bins):.3f} ({n_bins} bins)")
        ax.legend(loc="upper left")
        hist.bar(centres, bins["count"], width=width * 0.9, color="tab:gray")
        hist.set(xlabel="stated confidence (c / 10)", ylabel="answers")

    return Explorer(draw, {"method": Choice(list(methods), methods[-1]),
                           "split": Choice({"in distribution": "id", "out of distribution": "ood"}, "id"),
                           "n_bins": IntSlider(2, 20, 10)},
                    what="the method, the split and the number of bins", figsize=(7.0, 5.0))
