"""The DITTO chapter's live explorer: what each method writes for one target author, dimension by
dimension (see :mod:`paperlab.explore` for the pattern; ``10-ditto.md`` (sec-ditto-results) for the runs)."""

from __future__ import annotations

import numpy as np

from paperlab.ditto.data import DIMENSIONS, STYLE, Content, make_cast, parse_style
from paperlab.ditto.experiments import MAIN_METHODS, RunSpec
from paperlab.explore import Choice, Explorer
from paperlab.plot import labelled

__all__ = ["style_explorer"]


def _content(record: dict) -> Content:
    return Content(record["name"], record["intent"], tuple(tuple(slot) for slot in record["slots"]))


def style_explorer(runs: list[dict], specs: list[RunSpec], scores: list[dict], *,
                   n_shown: int = 4) -> Explorer:
    """Controls: the target ``author``, the ``seed`` (its draw of demonstrations) and the ``method``.

    Left, for each style dimension, the share of the author's held-out outputs that use the author's
    preferred option, for every main method (the chosen one dark) and for the author's own messages; right,
    ``n_shown`` of the chosen method's outputs with the char judge's ``p(author | output)``. Nothing is
    trained or sampled: the runs' texts are parsed once here.
    """
    if not runs or len(runs) != len(specs) or len(scores) != len(runs):
        raise ValueError("style_explorer needs the runs, their specs and their scores, one of each per run")
    cast = make_cast(specs[0].cast)
    methods = [*MAIN_METHODS, "author"]
    table = {}  # (author, seed) -> method -> (per-dimension match shares, texts, judge probabilities)
    for run, spec, score in zip(runs, specs, scores):
        author = cast.author(spec.group, spec.author)
        contents = [_content(c) for c in run["contents"]]
        entry = {}
        for method in methods:
            texts = run["texts"][method]
            parsed = np.array([[p == s for p, s in zip(parse_style(c, t), author.style)]
                               for c, t in zip(contents, texts)], dtype=float)
            entry[method] = (parsed.mean(0), texts, np.exp(score["methods"][method]["score"]["char"]))
        table[(spec.author, spec.seed)] = entry
    authors = sorted({a for a, _ in table})
    seeds = sorted({s for _, s in table})

    def draw(fig, *, author: int, seed: int, method: str):
        entry = table[(author, seed)]
        bars_ax, text_ax = fig.subplots(1, 2, width_ratios=[1.1, 1.3])
        width = 0.8 / len(methods)
        x = np.arange(len(DIMENSIONS))
        for i, name in enumerate(methods):
            shade = "C3" if name == method else ("0.25" if name == "author" else f"C{i}")
            bars_ax.bar(x + (i - len(methods) / 2 + 0.5) * width, entry[name][0], width, label=name,
                        color=shade, alpha=1.0 if name in (method, "author") else 0.35)
        bars_ax.set_xticks(x, DIMENSIONS, rotation=30, fontsize=8)
        bars_ax.set_ylim(0, 1.05)
        labelled(bars_ax, "style dimension", "share of outputs in the author's style")
        bars_ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.32))
        text_ax.axis("off")
        _, texts, probabilities = entry[method]
        for row in range(min(n_shown, len(texts))):
            text = texts[row] if len(texts[row]) <= 95 else texts[row][:92] + "..."
            words = text.split(" ")
            lines = [" ".join(words[:len(words) // 2]), " ".join(words[len(words) // 2:])]
            text_ax.text(0.0, 1 - (row + 0.3) / n_shown, f"p(author) = {probabilities[row]:.2f}", fontsize=8,
                         color="C3", transform=text_ax.transAxes)
            text_ax.text(0.0, 1 - (row + 0.55) / n_shown, "\n".join(lines), fontsize=8, family="monospace",
                         va="top", transform=text_ax.transAxes)
        preferred = cast.target[author].style
        text_ax.set_title(f"{method}, target author {author} (greeting {STYLE['greeting'][preferred[0]]!r}, "
                          f"sign-off {STYLE['signoff'][preferred[-1]] or 'none'!r})", fontsize=9)

    return Explorer(draw, {"author": Choice(authors, authors[0], label="target author"),
                           "seed": Choice(seeds, seeds[0], label="seed"),
                           "method": Choice(list(MAIN_METHODS), "DITTO", label="method")},
                    what="the target author, the seed and the method", figsize=(11, 4.2))
