r"""The geometry chapter's live explorer: the intervention strength alpha against the parent and child
logit differences, and what it does to one context's next word (see :mod:`paperlab.explore` for the
pattern, ``06-geometry.md`` (sec-geometry-intervention) for the intervention).

The set-up follows :func:`paperlab.geometry.experiments.intervention` step by step (the same concepts,
vectors, direction and contexts from the same config and seed); ``tests/test_explore.py`` checks that
the two give the same logit differences.
"""

from __future__ import annotations

import torch

from paperlab.explore import Explorer, IntSlider, Slider
from paperlab.geometry import experiments as E
from paperlab.geometry.estimate import Whitening, estimate_vector
from paperlab.geometry.hierarchy import extract_concepts
from paperlab.geometry.lm import HierarchyCorpus, representation
from paperlab.plot import labelled

__all__ = ["intervention_explorer", "intervention_setup"]


@torch.no_grad()
def intervention_setup(model, corpus: HierarchyCorpus, config: E.GeometryConfig) -> dict:
    """What the intervention needs: the concepts' lemma sets, the direction added to the hidden state
    (``A^T (l_p1 - l_p2)``), the contexts, their hidden states and the LM head's lemma rows."""
    gamma, vocabulary = E.lm_unembedding(model, corpus)
    whitening = Whitening(gamma)
    g = whitening(gamma)
    concepts = extract_concepts(corpus.hierarchy, vocabulary, config.min_tokens, config.lm.corpus.roots)
    names = [*config.parent_pair, *config.child_pair]
    for name in names:
        concepts.check(name)
    sets = {c: torch.tensor([vocabulary[t] for t in concepts.tokens[c]]) for c in names}
    vectors = {c: estimate_vector(g[sets[c]]) for c in names}
    p1, p2 = config.parent_pair
    direction = whitening.to_embedding_direction(vectors[p1] - vectors[p2]).float()
    sentences, _ = corpus.sample(config.n_contexts, torch.Generator().manual_seed(config.seed + 1))
    device = next(model.parameters()).device
    hidden = representation(model, corpus.inputs(sentences).to(device))[:, -1].float().cpu()
    head = model.lm_head.weight[corpus.lemma_ids.to(device)].float().cpu()  # (lemmas, d)
    return {"sets": sets, "direction": direction, "sentences": sentences, "hidden": hidden, "head": head}


def _differences(setup: dict, config, alpha: float) -> tuple[float, float]:
    """Mean over contexts of (mean logit over Y(p1) - over Y(p2)) and the same for (c1, c2)."""
    logits = (setup["hidden"] + alpha * setup["direction"]) @ setup["head"].T
    mean = {c: logits[:, s].mean(1) for c, s in setup["sets"].items()}
    (p1, p2), (c1, c2) = config.parent_pair, config.child_pair
    return float((mean[p1] - mean[p2]).mean()), float((mean[c1] - mean[c2]).mean())


def intervention_explorer(model, corpus: HierarchyCorpus, config: E.GeometryConfig, *,
                          n_shown: int = 12) -> Explorer:
    """Controls: ``alpha`` (in multiples of ``l_p1 - l_p2``, from 0 to twice the largest of
    ``config.alphas``) and the ``context`` (one of the ``config.n_contexts`` contexts of the experiment).

    Left, the parent-level and child-level logit differences against alpha, averaged over the contexts,
    with the current alpha marked (the curves are computed once, when the explorer is built); right, the
    ``n_shown`` most likely next words for the chosen context at this alpha, coloured by the concept they
    fall under (the two children, the rest of the first parent, the second parent).
    """
    setup = intervention_setup(model, corpus, config)
    p1, p2 = config.parent_pair
    c1, c2 = config.child_pair
    top = 2 * max(config.alphas)
    grid = torch.linspace(0.0, top, 41).tolist()
    curves = [_differences(setup, config, a) for a in grid]
    group = torch.full((setup["head"].shape[0],), 4)  # 4: in neither parent (other roots, if any)
    for index, name in ((3, p2), (2, p1), (0, c1), (1, c2)):  # children overwrite their parent
        group[setup["sets"][name]] = index
    labels = [_short(c1), _short(c2), f"other {_short(p1)}", _short(p2), "other"]

    def draw(fig, *, alpha: float, context: int):
        from matplotlib.patches import Patch

        curve_ax, word_ax = fig.subplots(1, 2, width_ratios=[1, 1.1])
        curve_ax.plot(grid, [c[0] for c in curves], "-", label=f"{_short(p1)} - {_short(p2)}")
        curve_ax.plot(grid, [c[1] for c in curves], "-", label=f"{_short(c1)} - {_short(c2)}")
        parent, child = _differences(setup, config, alpha)
        curve_ax.plot([alpha, alpha], [parent, child], "o", color="C3", ms=7)
        curve_ax.axvline(alpha, color="C3", lw=0.8, ls=":")
        labelled(curve_ax, f"alpha (multiples of l_{_short(p1)} - l_{_short(p2)})",
                 "mean logit difference (nats)",
                 f"alpha = {alpha:.2f}: {parent:+.2f} (parent), {child:+.2f} (child)")
        curve_ax.legend(fontsize=8)
        logits = (setup["hidden"][context] + alpha * setup["direction"]) @ setup["head"].T
        probabilities = logits.softmax(-1)
        order = torch.argsort(probabilities, descending=True)[:n_shown]
        colours = [f"C{int(group[i])}" for i in order]
        word_ax.barh(range(n_shown), probabilities[order].numpy(), color=colours)
        word_ax.set_yticks(range(n_shown), [corpus.lemmas[int(i)] for i in order], fontsize=7)
        word_ax.invert_yaxis()
        shares = [float(probabilities[group == i].sum()) for i in range(len(labels))]
        handles = [Patch(color=f"C{i}", label=f"{label}: {share:.2f}")
                   for i, (label, share) in enumerate(zip(labels, shares)) if label != "other" or share > 0]
        context_words = corpus.text(setup["sentences"][context][: corpus.config.n_context])
        labelled(word_ax, "next-word probability", f"top {n_shown} next words",
                 f"context {context}: '{context_words}'")
        word_ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       title="probability mass", title_fontsize=7)  # beside the bars, clear of them

    return Explorer(draw, {
        "alpha": Slider(0.0, top, 0.0, step=top / 100, label="alpha"),
        "context": IntSlider(0, config.n_contexts - 1, 0, label="context"),
    }, what="the intervention strength alpha and the context", figsize=(12, 4.0))


def _short(synset: str) -> str:
    """``mammal.n.01`` -> ``mammal``."""
    return synset.split(".")[0]
