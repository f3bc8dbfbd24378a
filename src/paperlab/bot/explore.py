"""The Buffer of Thoughts chapter's live explorer: the retrieval threshold family by family (see
:mod:`paperlab.explore` for the pattern, ``08-bot.md`` (sec-bot-threshold) for the sweep it reads)."""

from __future__ import annotations

import numpy as np

from paperlab.explore import Choice, Explorer
from paperlab.plot import labelled

__all__ = ["threshold_explorer", "threshold_breakdown"]

MEASURES = {"answered by a template": "template", "on a wrong template": "wrong", "correct": "correct"}


def threshold_breakdown(results: dict, buffer: str, delta: float) -> dict[str, dict[str, list[float]]]:
    """From :func:`paperlab.bot.experiments.run`'s sweep: for each family, the share of its test problems
    answered by a template's program, on another family's template, and answered correctly, at threshold
    ``delta`` with the buffer ``buffer``; one value per seed: ``{measure: {family: [per seed]}}``."""
    families = results["test_families"]
    out: dict[str, dict[str, list[float]]] = {m: {} for m in MEASURES}
    for run in results["seeds"]:
        rows = {row["delta"]: row for row in run["sweep"][buffer]}
        if delta not in rows:
            raise ValueError(f"delta {delta} was not swept; swept: {sorted(rows)}")
        row = rows[delta]
        marks = {"template": [p == "template" for p in row["path"]], "wrong": row["wrong"],
                 "correct": row["correct"]}
        for name in results["families"]:
            index = [i for i, f in enumerate(families) if f == name]
            for measure, key in MEASURES.items():
                out[measure].setdefault(name, []).append(float(np.mean([marks[key][i] for i in index])))
    return out


def threshold_explorer(results: dict, *, delta: float | None = None) -> Explorer:
    """Controls: the retrieval threshold ``delta`` (the values swept) and the ``buffer`` (all four
    templates, or all but the arithmetic one). Per family, the share of test problems answered by a
    template's program, the share on another family's template, and the accuracy; bars are means over the
    seeds, dots each seed. Reads the cached sweep only: nothing is run again."""
    first = results["seeds"][0]["sweep"]
    buffers = list(first)
    deltas = [row["delta"] for row in first[buffers[0]]]
    start = delta if delta is not None else deltas[len(deltas) // 2]
    families = results["families"]

    def draw(fig, *, delta: float, buffer: str):
        breakdown = threshold_breakdown(results, buffer, delta)
        ax = fig.subplots()
        width = 0.8 / len(MEASURES)
        for k, (measure, per_family) in enumerate(breakdown.items()):
            xs = np.arange(len(families)) + (k - (len(MEASURES) - 1) / 2) * width
            values = [100 * np.array(per_family[name]) for name in families]
            ax.bar(xs, [v.mean() for v in values], width, label=measure, alpha=0.8)
            for x, v in zip(xs, values):
                ax.plot(np.full(v.size, x), v, "k.", markersize=3)
        ax.set_xticks(range(len(families)), families)
        ax.set_ylim(0, 105)
        labelled(ax, "task family", "share of the family's test problems (%)",
                 f"retrieval threshold {delta:g}, {buffer}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3, fontsize=8)

    return Explorer(draw, {"delta": Choice(deltas, start, label="threshold δ"),
                           "buffer": Choice(buffers, buffers[0], label="meta-buffer")},
                    what="the retrieval threshold and the templates in the buffer")
