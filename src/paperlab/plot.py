"""Plotting conventions shared by the chapters: one style, labelled axes, units in the labels."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

BOOK_STYLE = {
    "figure.figsize": (6.4, 3.8),
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "font.size": 10,
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (call once at the top of a chapter)."""
    mpl.rcParams.update(BOOK_STYLE)


def labelled(ax: plt.Axes, xlabel: str, ylabel: str, title: str | None = None) -> plt.Axes:
    """Set axis labels (with units, e.g. ``"step"``, ``"loss (nats/token)"``) and an optional title."""
    if not xlabel or not ylabel:
        raise ValueError("every figure needs both axis labels (with units where they apply)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax


def seed_points(ax: plt.Axes, x, per_seed, *, label: str | None = None, color=None, marker: str = "o",
                jitter: float = 0.0, connect: bool = True, log_x: bool = False) -> plt.Axes:
    """Every seed's point, their mean, and the mean's 95% interval (t over seeds) at each ``x``.

    ``per_seed[i]``: the values of all seeds at ``x[i]``. Points are drawn small and translucent, the mean
    as a larger marker (joined by a line if ``connect``) with the interval as an error bar, so a reader
    sees the spread behind every mean. ``jitter`` shifts the points sideways (a fraction of the x step,
    multiplicative on a log axis) so that equal values stay visible.
    """
    import numpy as np

    from paperlab.stats import over_seeds

    if len(x) != len(per_seed):
        raise ValueError(f"seed_points needs one list of seed values per x, got {len(x)} x and "
                         f"{len(per_seed)} lists")
    x = np.asarray(x, dtype=float)
    means, lows, highs = [], [], []
    for xi, values in zip(x, per_seed):
        values = np.asarray(values, dtype=float)
        offsets = (np.arange(values.size) - (values.size - 1) / 2) * jitter
        xs = xi * np.exp(offsets) if log_x else xi + offsets
        (points,) = ax.plot(xs, values, marker, color=color, alpha=0.35, markersize=4, linestyle="none")
        color = points.get_color()
        est = over_seeds(values) if values.size >= 2 else None
        means.append(float(values.mean()))
        lows.append(est.low if est else means[-1])
        highs.append(est.high if est else means[-1])
    means, lows, highs = map(np.asarray, (means, lows, highs))
    ax.errorbar(x, means, yerr=[means - lows, highs - means], fmt=marker + ("-" if connect else ""),
                color=color, markersize=6, capsize=3, label=label)
    if log_x:
        ax.set_xscale("log")
    return ax
