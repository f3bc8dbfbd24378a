"""The geometry chapter's experiments: each function takes the chapter's :class:`GeometryConfig` and
returns plain results (numbers, lists, strings) for the chapter to plot.

1. :func:`load_lm` trains (once, through the artifact cache) the word-level tiny LM on the synthetic
   hierarchy corpus of :mod:`paperlab.geometry.lm`; its LM head is the unembedding ``gamma``.
2. :func:`analyse_unembedding` runs the paper's estimator on any unembedding (ours, a planted synthetic
   one, or a Hugging Face model's): concept vectors, held-out projections, hierarchical orthogonality
   against random pairs, and the two controls (shuffled rows, unwhitened Euclidean space), the
   parent/child plane, a three-category simplex and the cosine heatmap next to WordNet path similarity.
3. :func:`intervention` adds ``alpha * (l_parent1 - l_parent2)`` to the LM's final hidden state and to
   the residual stream between its blocks, next to random directions of the same norm (the control),
   and measures parent-level and child-level logit differences.
4. :func:`planted` runs the same statistics on synthetic unembeddings whose structure is known.
5. :func:`over_lm_seeds` runs 1-4 (and :func:`anisotropy`) for every LM seed side by side, and
   :func:`seed_effects` gives each LM-based scorecard row's effect for one seed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from paperlab import cache, stats
from paperlab.config import (
    check_ints,
    check_number_tuple,
    check_numbers,
    check_str_tuple,
    check_that,
    check_type,
)
from paperlab.experiments import Experiment
from paperlab.geometry import lm as lm_module
from paperlab.geometry.estimate import (
    Whitening,
    cosine,
    cosines,
    estimate_vector,
    estimate_vectors,
    held_out_projections,
    orthogonality,
    projection,
    random_pairs,
    sibling_orthogonality,
)
from paperlab.geometry.hierarchy import Concepts, Hierarchy, extract_concepts, load_hierarchy, unknown_synsets
from paperlab.geometry.lm import CorpusConfig, HierarchyCorpus, LMConfig, load_trained, representation
from paperlab.geometry.synthetic import PlantedConfig, planted_unembeddings
from paperlab.utils import cpu_threads, parallel_map

__all__ = [
    "GeometryConfig",
    "CONFIGS",
    "load_lm",
    "lm_unembedding",
    "analyse_unembedding",
    "analysis",
    "intervention",
    "planted",
    "planted_statistics",
    "anisotropy",
    "for_seed",
    "over_lm_seeds",
    "seed_effects",
    "run",
    "EXPERIMENT",
]


@dataclass(frozen=True)
class GeometryConfig:
    lm: LMConfig = field(default_factory=LMConfig)
    # the same LM trained on a corpus with Zipf-distributed lemma frequencies: an anisotropic unembedding
    zipf_lm: LMConfig = field(default_factory=lambda: LMConfig(corpus=CorpusConfig(zipf=1.0)))
    min_tokens: int = (
        20  # concepts analysed: at least this many tokens (the reference code uses > 50 for Gemma)
    )
    held_out_fraction: float = 0.7
    n_random_pairs: int = 200
    n_null_draws: int = 50  # draws of the random-subset nulls (random subsets of a parent's tokens)
    heatmap_max_depth: int = 4
    plane: tuple[str, str] = ("animal.n.01", "mammal.n.01")
    simplex: tuple[str, str, str] = ("mammal.n.01", "bird.n.01", "fish.n.01")
    parent_pair: tuple[str, str] = ("animal.n.01", "plant.n.02")
    child_pair: tuple[str, str] = ("mammal.n.01", "reptile.n.01")
    alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # fine near 0
    n_contexts: int = 512
    n_control_directions: int = 8  # random directions of the same norm: the intervention's control
    seeds: tuple[int, ...] = (0, 1, 2)  # LM seeds (both LMs); figures show the first
    points_per_group: int = 250  # tokens per group in the scatter plots
    planted: PlantedConfig = field(default_factory=PlantedConfig)
    seed: int = 0

    def __post_init__(self):
        check_type(self, "lm", LMConfig)
        check_type(self, "zipf_lm", LMConfig)
        check_type(self, "planted", PlantedConfig)
        check_that(self, self.lm.n_layers >= 2, "lm",
                   "an LM with n_layers >= 2 (the intervention also edits a middle layer)")
        check_ints(self, "min_tokens", low=2)
        check_ints(self, "n_random_pairs", "n_contexts", "points_per_group", "n_control_directions")
        check_that(self, isinstance(self.seeds, tuple) and len(self.seeds) >= 2
                   and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds)
                   and len(set(self.seeds)) == len(self.seeds), "seeds",
                   "a tuple of at least 2 distinct ints >= 0 (an interval needs 2; the standard asks 3)")
        check_ints(self, "n_null_draws", low=20)  # stats.against_null needs 20 draws
        check_ints(self, "heatmap_max_depth", "seed", low=0)
        check_numbers(self, "held_out_fraction", low=0, high=1, open_low=True, open_high=True)
        for name in ("plane", "parent_pair", "child_pair"):
            check_str_tuple(self, name, length=2)
        check_str_tuple(self, "simplex", length=3)
        for name in ("plane", "parent_pair", "child_pair", "simplex"):
            problem = unknown_synsets(getattr(self, name), self.lm.corpus.roots)
            check_that(self, problem is None, name, f"synsets of the shipped WordNet subset under the LM "
                                                    f"corpus's roots ({problem})")
        check_number_tuple(self, "alphas", min_len=2)  # the intervention's slope runs first to last
        check_that(self, self.alphas[0] < self.alphas[-1], "alphas", "from a smaller to a larger alpha")


_FAST_TRAIN = dataclasses.replace(LMConfig().train, steps=100, warmup_steps=10, eval_every=25)
CONFIGS = {
    "fast": GeometryConfig(
        lm=LMConfig(eval_sentences=1000, train=_FAST_TRAIN),  # the full LM, a thirtieth of the steps
        zipf_lm=LMConfig(corpus=CorpusConfig(zipf=1.0), eval_sentences=500,  # half the steps again: CI only
                         train=dataclasses.replace(_FAST_TRAIN, steps=50, warmup_steps=5, eval_every=25)),
        n_random_pairs=100,
        n_null_draws=20,
        n_contexts=128,
        n_control_directions=4,
        seeds=(0, 1),  # CI checks the code runs: two seeds (rows on fewer than 3 are judged inconclusive)
        points_per_group=150,
        planted=PlantedConfig(d=64, n_other=500),
    ),
    "full": GeometryConfig(),  # the defaults: LMConfig trains for 3000 steps
}


# ------------------------------------------------------------------------------------------ the LM
def load_lm(config: GeometryConfig, device: str | torch.device | None = None):
    """The trained LM (cached, see :func:`paperlab.geometry.lm.load_trained`), its corpus and record."""
    return load_trained(config.lm, device)


def lm_unembedding(model, corpus: HierarchyCorpus) -> tuple[torch.Tensor, dict[str, int]]:
    """``gamma``: the LM-head rows of the lemmas (the words; context words and special tokens are the
    corpus's scaffolding and are left out), and lemma -> row."""
    gamma = model.lm_head.weight.detach().cpu()[corpus.lemma_ids]
    return gamma, {lemma: i for i, lemma in enumerate(corpus.lemmas)}


# ------------------------------------------------------------------------------------- the analysis
def _subsample(index: list[int], n: int, generator: torch.Generator) -> list[int]:
    if len(index) <= n:
        return list(index)
    return sorted(index[i] for i in torch.randperm(len(index), generator=generator)[:n].tolist())


def _mean_abs(values):
    return sum(abs(v) for v in values) / len(values)


def _pearson(x: list[float], y: list[float]) -> float:
    a, b = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    a, b = a - a.mean(), b - b.mean()
    return float(a.dot(b) / (a.norm() * b.norm()))


def _disjoint_orthogonality(g, sets, pairs, method="lda") -> list[float]:
    """cos(l_R, l_w - l_R) with ``R = Y(z) \\ Y(w)``: the parent's vector estimated without the child's
    tokens. ``R`` is a *sibling* set of the child (the parent's other children), so the theorem predicts a
    negative cosine, ``-||d_R||^2 / (||l_R|| ||d_w - d_R||)`` for orthogonal offsets ``d`` (see the
    chapter); pairs whose rest has fewer than 5 tokens are left out."""
    out = []
    for z, w in pairs:
        rest = sorted(set(sets[z]) - set(sets[w]))
        if len(rest) < 5:
            continue
        lz = estimate_vector(g[torch.tensor(rest)], method)
        lw = estimate_vector(g[torch.tensor(sets[w])], method)
        out.append(cosine(lz, lw - lz))
    return out


def _subset_nulls(g, sets, pairs, n_draws: int, generator: torch.Generator, method="lda") -> dict:
    """Nulls of the same kind as the parent-child statistics: in each draw every child ``w`` of ``z`` is
    replaced by a random subset ``S`` of ``Y(z)`` of the child's size (a "child" with no structure of its
    own), and the two statistics are recomputed:

    - ``true_mean_abs``: mean over pairs of ``|cos(l_z, l_S - l_z)|`` (against the true pairs' mean |cos|);
    - ``disjoint_mean``: mean over pairs of ``cos(l_{Y(z) \\ S}, l_S - l_{Y(z) \\ S})`` (against the
      disjoint statistic's mean; same pairs as :func:`_disjoint_orthogonality`).

    One value per draw for each. The subsets are drawn draw by draw, pair by pair; the vectors are then
    estimated a pair at a time, for all draws at once (its subsets have one size)."""
    parents = {z: estimate_vector(g[torch.tensor(sets[z])], method) for z, _ in pairs}
    orders = [[torch.randperm(len(sets[z]), generator=generator) for z, _ in pairs] for _ in range(n_draws)]
    abs_cos = [[] for _ in range(n_draws)]
    disjoint = [[] for _ in range(n_draws)]
    for p, (z, w) in enumerate(pairs):
        index, n_w = torch.tensor(sets[z]), len(sets[w])
        tokens = index[torch.stack([orders[k][p] for k in range(n_draws)])]  # (n_draws, |Y(z)|), shuffled
        l_subset = estimate_vector(g[tokens[:, :n_w].sort(1).values], method)  # (n_draws, d): each l_S
        for k, value in enumerate(cosines(parents[z], l_subset - parents[z]).tolist()):
            abs_cos[k].append(abs(value))
        if len(index) - n_w >= 5:  # the pairs _disjoint_orthogonality keeps (Y(w) is a subset of Y(z))
            l_rest = estimate_vector(g[tokens[:, n_w:].sort(1).values], method)
            for k, value in enumerate(cosines(l_rest, l_subset - l_rest).tolist()):
                disjoint[k].append(value)
    return {"true_mean_abs": [_mean_abs(values) for values in abs_cos],
            "disjoint_mean": [sum(values) / max(len(values), 1) for values in disjoint]}


def _random_siblings(index: list[int], n_a: int, n_b: int, shared: int,
                     generator: torch.Generator) -> tuple[list[int], list[int]]:
    """Two random subsets of the parent's tokens ``index``, of sizes ``n_a`` and ``n_b``, with exactly
    ``shared`` tokens in common (as many as the real siblings share: none, for disjoint ones): a pair of
    "siblings" with no structure of their own."""
    if not 0 <= shared <= min(n_a, n_b) or n_a + n_b - shared > len(index):
        raise ValueError(f"siblings of {n_a} and {n_b} tokens sharing {shared} do not fit in a parent of "
                         f"{len(index)} tokens")
    order = torch.randperm(len(index), generator=generator).tolist()
    a = order[:n_a]
    b = order[:shared] + order[n_a:n_a + n_b - shared]
    return sorted(index[i] for i in a), sorted(index[i] for i in b)


def _sibling_nulls(g, sets, triples, n_draws: int, generator: torch.Generator, method="lda") -> list[float]:
    """The sibling statistic's null of the same kind: in each draw every sibling pair ``(a, b)`` of ``z``
    is replaced by random subsets of ``Y(z)`` of the siblings' sizes, sharing as many tokens as ``Y(a)``
    and ``Y(b)`` do (:func:`_random_siblings`), and the mean over triples of ``|cos(l_z, l_a - l_b)|`` is
    recomputed (against the true siblings' mean |cos|). One value per draw (drawn draw by draw, triple by
    triple; estimated a triple at a time for all draws at once)."""
    parents = {z: estimate_vector(g[torch.tensor(sets[z])], method) for z, _, _ in triples}
    shared = [len(set(sets[a]) & set(sets[b])) for _, a, b in triples]
    draws = [[_random_siblings(sets[z], len(sets[a]), len(sets[b]), shared[t], generator)
              for t, (z, a, b) in enumerate(triples)] for _ in range(n_draws)]
    abs_cos = [[] for _ in range(n_draws)]
    for t, (z, _, _) in enumerate(triples):
        l_a = estimate_vector(g[torch.tensor([draws[k][t][0] for k in range(n_draws)])], method)
        l_b = estimate_vector(g[torch.tensor([draws[k][t][1] for k in range(n_draws)])], method)
        for k, value in enumerate(cosines(parents[z], l_a - l_b).tolist()):
            abs_cos[k].append(abs(value))
    return [_mean_abs(values) for values in abs_cos]


def _matched_norms(shuffled: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    """The shuffled control's vectors rescaled to the trained vectors' norms, concept by concept: random
    directions with the lengths of the real ones (the statistics depend on the parent/child norm ratio)."""
    return {n: v * (reference[n].norm() / v.norm()) for n, v in shuffled.items()}


@dataclass
class _Concepts:
    """The concepts analysed in one unembedding: their token sets (rows of ``gamma``), the parent-child
    pairs, random unrelated pairs (the null), and sibling triples ``(parent, child a, child b)``."""

    concepts: Concepts
    sets: dict[str, list[int]]
    pairs: list[tuple[str, str]]
    random_pairs: list[tuple[str, str]]
    triples: list[tuple[str, str, str]]


def _concepts(vocabulary: dict[str, int], config: GeometryConfig, hierarchy: Hierarchy,
              roots: tuple[str, ...], generator: torch.Generator) -> _Concepts:
    concepts = extract_concepts(hierarchy, vocabulary, config.min_tokens, roots)
    sets = {c: [vocabulary[t] for t in concepts.tokens[c]] for c in concepts.names}
    pairs = concepts.pairs()
    ancestors = {c: set(concepts.ancestors(c)) for c in concepts.names}
    others = random_pairs(concepts.names, pairs, config.n_random_pairs, generator, ancestors)
    triples = [(z, a, b) for z in concepts.names for i, a in enumerate(concepts.children(z))
               for b in concepts.children(z)[i + 1:]]
    return _Concepts(concepts, sets, pairs, others, triples)


def _spaces(gamma: torch.Tensor, whitening: Whitening, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The unembedding in the causal inner product (whitened), and the two controls: rows permuted before
    whitening (tokens get other tokens' vectors) and the centred, unwhitened Euclidean space."""
    g = whitening(gamma)
    permutation = torch.randperm(len(gamma), generator=generator)
    return {"whitened": g, "shuffled": whitening(gamma[permutation]),
            "euclidean": gamma.double() - gamma.double().mean(0), "whitened (mean)": g}


def _orthogonality(spaces: dict[str, torch.Tensor], vectors: dict[str, dict], c: _Concepts) -> dict:
    """Per space: cosines of parent-child differences (true pairs, random pairs, siblings, disjoint token
    sets) and the vectors' norms."""
    stats = {}
    for name, vs in vectors.items():
        stats[name] = {
            "true_pairs": orthogonality(vs, c.pairs),
            "random_pairs": orthogonality(vs, c.random_pairs),
            "siblings": sibling_orthogonality(vs, c.triples),
            "disjoint": _disjoint_orthogonality(spaces[name], c.sets, c.pairs, _method(name)),
            "norms": [float(vs[n].norm()) for n in c.concepts.names],
        }
    matched = _matched_norms(vectors["shuffled"], vectors["whitened"])
    stats["shuffled"]["true_pairs_matched"] = orthogonality(matched, c.pairs)
    stats["shuffled"]["siblings_matched"] = sibling_orthogonality(matched, c.triples)
    return stats


def _method(space: str) -> str:
    return "mean" if "mean" in space else "lda"


def _held_out(spaces: dict[str, torch.Tensor], sets: dict[str, list[int]], config: GeometryConfig) -> dict:
    """Projections of held-out tokens on vectors estimated from the others (whitened and shuffled)."""
    out = {}
    for name in ("whitened", "shuffled"):
        held = held_out_projections(spaces[name], sets, config.held_out_fraction, config.seed).values()
        out[name] = {key: [h[key] for h in held] for key in ("train", "held_out", "random")}
        out[name].update({key: [x for h in held for x in h[key]] for key in ("held_out_all", "random_all")})
    return out


def _summary(stats: dict, held: dict) -> dict:
    """Means of every statistic, per space: what the chapter's scorecard reads."""
    summary = {
        name: {
            "true_mean_abs": _mean_abs(s["true_pairs"]),
            "true_mean": sum(s["true_pairs"]) / len(s["true_pairs"]),
            "random_mean": sum(s["random_pairs"]) / len(s["random_pairs"]),
            "random_mean_abs": _mean_abs(s["random_pairs"]),
            "siblings_mean_abs": _mean_abs(s["siblings"]) if s["siblings"] else math.nan,
            "disjoint_mean": sum(s["disjoint"]) / max(len(s["disjoint"]), 1),
        }
        for name, s in stats.items()
    }
    shuffled = stats["shuffled"]
    summary["shuffled"]["true_matched_mean_abs"] = _mean_abs(shuffled["true_pairs_matched"])
    summary["shuffled"]["siblings_matched_mean_abs"] = (
        _mean_abs(shuffled["siblings_matched"]) if shuffled["siblings_matched"] else math.nan)
    for name, h in held.items():
        summary[name]["held_out_mean"] = sum(h["held_out"]) / len(h["held_out"])
        summary[name]["random_projection_mean"] = sum(h["random"]) / len(h["random"])
    return summary


def _heatmap(concepts: Concepts, vectors: dict[str, dict], hierarchy: Hierarchy,
             config: GeometryConfig) -> dict:
    """Cosines between the vectors of the concepts down to ``heatmap_max_depth`` (hierarchy order), next to
    WordNet's path similarity, and the correlation of the two (also for the shuffled control)."""
    shown = [c for c in concepts.names if concepts.depth[c] <= config.heatmap_max_depth]
    heat = {name: [[cosine(vectors[name][a], vectors[name][b]) for b in shown] for a in shown]
            for name in ("whitened", "shuffled")}
    path = [[hierarchy.path_similarity(a, b) for b in shown] for a in shown]
    off = [(i, j) for i in range(len(shown)) for j in range(len(shown)) if i < j]

    def correlation(matrix):
        return _pearson([matrix[i][j] for i, j in off], [path[i][j] for i, j in off])

    return {"names": shown, "depth": [concepts.depth[c] for c in shown], "cosine": heat["whitened"],
            "cosine_shuffled": heat["shuffled"],
            "path_similarity": path, "correlation": correlation(heat["whitened"]),
            "correlation_shuffled": correlation(heat["shuffled"])}


@cpu_threads(1)  # many small operations: a second thread costs more than it brings
def analyse_unembedding(
    gamma: torch.Tensor,
    vocabulary: dict[str, int],
    config: GeometryConfig,
    hierarchy: Hierarchy | None = None,
    roots: tuple[str, ...] | None = None,
    figures: bool = True,
    nulls: bool = True,
) -> dict:
    """Every statistic of the chapter for the unembedding ``gamma`` (W, d), ``vocabulary`` mapping each
    lemma to its row. JSON-able results (see the chapter for what each one is); ``nulls=False`` skips the
    random-subset nulls (``result["nulls"]`` is then None)."""
    hierarchy = hierarchy if hierarchy is not None else load_hierarchy()
    generator = torch.Generator().manual_seed(config.seed)  # random pairs, the shuffle, the figures' points
    c = _concepts(vocabulary, config, hierarchy, roots if roots is not None else config.lm.corpus.roots,
                  generator)
    whitening = Whitening(gamma)
    spaces = _spaces(gamma, whitening, generator)
    g = spaces["whitened"]
    vectors = {name: estimate_vectors(space, c.sets, method=_method(name)) for name, space in spaces.items()}
    stats = _orthogonality(spaces, vectors, c)
    held = _held_out(spaces, c.sets, config)
    null_draws = _subset_nulls(g, c.sets, c.pairs, config.n_null_draws, generator) if nulls else None
    if nulls and c.triples:  # its own generator: the draws above and the figures' points stay as they were
        null_draws["siblings_mean_abs"] = _sibling_nulls(
            g, c.sets, c.triples, config.n_null_draws, torch.Generator().manual_seed(config.seed + 2))
    eigenvalues = torch.linalg.eigvalsh(whitening.covariance)
    out = {
        "n_tokens": len(vocabulary), "d": gamma.shape[1], "n_concepts": len(c.concepts.names),
        "n_pairs": len(c.pairs), "names": list(c.concepts.names),
        "depth": [c.concepts.depth[n] for n in c.concepts.names],
        "n_concept_tokens": [len(c.sets[n]) for n in c.concepts.names], "pairs": [list(p) for p in c.pairs],
        "cov_condition_number": float(eigenvalues.max() / eigenvalues.min()),
        "whitened_mean_abs_max": float(g.mean(0).abs().max()),
        "whitened_cov_error": float((g.T @ g / len(g) - torch.eye(g.shape[1], dtype=g.dtype)).abs().max()),
        "orthogonality": stats, "held_out": held, "summary": _summary(stats, held), "nulls": null_draws,
        "heatmap": _heatmap(c.concepts, vectors, hierarchy, config),
    }
    if figures:
        out["plane"] = _plane(g, c.sets, vectors["whitened"], c.concepts, config, generator)
        out["simplex"] = _simplex(g, c.sets, vectors["whitened"], config, generator)
        out["simplex_shuffled"] = _simplex(spaces["shuffled"], c.sets, vectors["shuffled"], config, generator)
    return out


def _plane(g, sets, vectors, concepts, config, generator) -> dict:
    """Tokens on the plane of ``l_parent`` and ``l_child - l_parent`` (the paper's 2D figure)."""
    parent, child = config.plane
    for name in (parent, child):
        concepts.check(name)
    l_parent, l_child = vectors[parent], vectors[child]
    x_axis = l_parent / l_parent.norm()
    difference = l_child - l_parent
    y_axis = difference / difference.norm()
    parent_set, child_set = set(sets[parent]), set(sets[child])
    root = concepts.ancestors(parent)[0]
    everything = set().union(*sets.values())
    groups = {
        f"{child} tokens": sorted(child_set),
        f"other {parent} tokens": sorted(parent_set - child_set),
        f"tokens outside {parent}": sorted(everything - parent_set)
        if root == parent
        else sorted(set(sets[root]) - parent_set),
    }
    out = {
        "axes": [f"l_{parent}", f"l_{child} - l_{parent}"],
        "cos_axes": cosine(l_parent, difference),
        "groups": {},
    }
    for name, index in groups.items():
        pick = torch.tensor(_subsample(index, config.points_per_group, generator))
        out["groups"][name] = {"x": (g[pick] @ x_axis).tolist(), "y": (g[pick] @ y_axis).tolist()}
    out["vectors"] = {
        "parent": [float(l_parent @ x_axis), float(l_parent @ y_axis)],
        "child": [float(l_child @ x_axis), float(l_child @ y_axis)],
    }
    return out


def _simplex(g, sets, vectors, config, generator) -> dict:
    """Tokens of three sibling categories in the 3D span of their vectors (orthonormal coordinates)."""
    names = list(config.simplex)
    basis, _ = torch.linalg.qr(torch.stack([vectors[n] for n in names], 1))  # (d, 3)
    out = {"names": names, "vertices": [(vectors[n] @ basis).tolist() for n in names], "points": {}}
    own = [set(sets[n]) for n in names]
    correct = []  # per token of exactly one category: 1 if its largest projection is on its own vector
    for k, name in enumerate(names):
        exclusive = sorted(own[k] - set().union(*(own[j] for j in range(3) if j != k)))
        pick = torch.tensor(_subsample(exclusive, config.points_per_group, generator))
        out["points"][name] = (g[pick] @ basis).tolist()
        scores = torch.stack([projection(g[torch.tensor(exclusive)], vectors[n]) for n in names], 1)
        correct += (scores.argmax(1) == k).int().tolist()
    out["correct"] = correct
    out["accuracy"] = sum(correct) / len(correct)  # tokens whose largest projection is on their own vector
    out["vertex_cosines"] = [
        cosine(vectors[a], vectors[b]) for i, a in enumerate(names) for b in names[i + 1 :]
    ]
    return out


@cpu_threads(1)
def analysis(config: GeometryConfig, device: str | torch.device | None = None) -> dict:
    """:func:`analyse_unembedding` of the trained LM (cached)."""
    model, corpus, _ = load_lm(config, device)
    gamma, vocabulary = lm_unembedding(model, corpus)
    return cache.cached(
        "geometry-analysis",
        config,
        lambda: analyse_unembedding(gamma, vocabulary, config, corpus.hierarchy),
        seed=config.seed,
    )


def anisotropy(config: GeometryConfig, device: str | torch.device | None = None) -> dict:
    """:func:`analyse_unembedding` (no figures) of the LM trained on Zipf-distributed lemma frequencies
    (``config.zipf_lm``), cached: the same statistics on a more anisotropic unembedding."""
    model, corpus, record = load_trained(config.zipf_lm, device)
    gamma, vocabulary = lm_unembedding(model, corpus)

    def compute():
        out = analyse_unembedding(gamma, vocabulary, config, corpus.hierarchy, figures=False, nulls=False)
        out["lemma_loss"] = record["history"]["evals"][-1]["lemma_loss"]
        out["bayes_lemma_loss"] = record["bayes_lemma_loss"]
        return out

    return cache.cached("geometry-anisotropy", config, compute, seed=config.seed)


# ----------------------------------------------------------------------------------- LM seeds
def for_seed(config: GeometryConfig, seed: int) -> GeometryConfig:
    """``config`` with both LMs trained from ``seed`` and the analysis' own draws (random pairs, the
    shuffle, the nulls, the contexts) seeded with it: one independent replicate of every LM-based result.
    ``for_seed(config, config.seed)`` is ``config`` when its LMs use that seed too (the defaults: 0)."""
    def reseed(lm: LMConfig) -> LMConfig:
        return dataclasses.replace(lm, train=dataclasses.replace(lm.train, seed=seed))

    return dataclasses.replace(config, lm=reseed(config.lm), zipf_lm=reseed(config.zipf_lm), seed=seed)


def _seed_job(kind: str, seed: int, config: GeometryConfig, device: str | None = None) -> dict:
    """One LM seed's results (module level: :func:`paperlab.utils.parallel_map` spawns its workers)."""
    if kind == "planted":
        return {"planted": planted(config)}
    replicate = for_seed(config, seed)
    if kind == "zipf":
        _, _, record = load_trained(replicate.zipf_lm, device)
        return {"anisotropy": anisotropy(replicate, device), **_convergence(record, "zipf_")}
    _, _, record = load_lm(replicate, device)
    return {
        "lemma_loss": record["history"]["evals"][-1]["lemma_loss"],
        "bayes_lemma_loss": record["bayes_lemma_loss"], "uniform_lemma_loss": record["uniform_lemma_loss"],
        **_convergence(record),
        "analysis": analysis(replicate, device), "intervention": intervention(replicate, device),
    }


def _convergence(record: dict, prefix: str = "") -> dict:
    """Is the LM's evaluation lemma loss shown flat over its last fifth of training
    (:func:`paperlab.stats.convergence`: not still falling, nor too noisy to tell)? The check's record
    fields (:meth:`paperlab.stats.Convergence.record`), names led by ``prefix``; ``converged`` None with
    too few evaluations to fit (a run without ``eval_every``)."""
    evals = record["history"]["evals"]
    if len(evals) < stats.CONVERGENCE_MIN_EVALUATIONS:
        return {f"{prefix}converged": None, f"{prefix}convergence": "too few evaluations",
                f"{prefix}convergence_check": None}
    return stats.convergence([e["step"] for e in evals], [e["lemma_loss"] for e in evals]).record(prefix)


def over_lm_seeds(config: GeometryConfig, device: str | None = None) -> dict:
    """Every result of the chapter, the runs side by side on the cores (:func:`paperlab.utils.parallel_map`),
    each through the artifact cache:

    - ``"replicates"``: one dict per seed of ``config.seeds`` (in that order): the uniform-frequency LM's
      training record, :func:`analysis` and :func:`intervention`, and the Zipf-frequency LM's
      :func:`anisotropy`;
    - ``"planted"``: :func:`planted` (no LM; run beside the seeds so that no core waits for it)."""
    lm_module.auto_device(device)  # an unknown device is a one-line error here, before any worker starts
    device = None if device is None else str(device)
    jobs = [(kind, seed, config, device) for kind in ("lm", "zipf") for seed in config.seeds]  # longest first
    results = parallel_map(_seed_job, jobs + [("planted", config.planted.seed, config, device)],
                           desc="LM seeds")
    n = len(config.seeds)
    replicates = [{"seed": seed, **results[i], **results[n + i]} for i, seed in enumerate(config.seeds)]
    return {"replicates": replicates, "planted": results[-1]["planted"]}


def seed_effects(replicate: dict) -> dict[str, float]:
    """The effect of every LM-based scorecard row for one seed (``replicate``: one item of
    :func:`over_lm_seeds`), each against its null of the same kind computed on that seed's unembedding;
    the chapter summarises each over the seeds (:func:`paperlab.stats.over_seeds`)."""
    a, iv, zipf = replicate["analysis"], replicate["intervention"], replicate["anisotropy"]
    summary, nulls = a["summary"], a["nulls"]
    w, sh, eu = summary["whitened"], summary["shuffled"], summary["euclidean"]  # sh: the held-out row
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    abs_mean = lambda values: mean([abs(v) for v in values])  # noqa: E731
    return {
        "held_out": w["held_out_mean"] - sh["held_out_mean"],
        "subsets": w["true_mean_abs"] - mean(nulls["true_mean_abs"]),
        "siblings": w["siblings_mean_abs"] - mean(nulls.get("siblings_mean_abs") or [math.nan]),
        "rest": w["disjoint_mean"] - mean(nulls["disjoint_mean"]),
        "euclidean": eu["true_mean_abs"] - w["true_mean_abs"],
        "euclidean_zipf": (zipf["summary"]["euclidean"]["true_mean_abs"]
                           - zipf["summary"]["whitened"]["true_mean_abs"]),
        "simplex": a["simplex"]["accuracy"] - a["simplex_shuffled"]["accuracy"],
        "heatmap": a["heatmap"]["correlation"] - a["heatmap"]["correlation_shuffled"],
        "steering": iv["child_slope"] / iv["parent_slope"],
        "steering_middle": iv["middle"]["child_slope"] / iv["middle"]["parent_slope"],
        "control": iv["parent_slope"] - abs_mean(iv["control"]["final"]["parent_slopes"]),
        "control_middle": iv["middle"]["parent_slope"] - abs_mean(iv["control"]["middle"]["parent_slopes"]),
    }


# ---------------------------------------------------------------------------------- intervention
@cpu_threads(1)
def intervention(config: GeometryConfig, device: str | torch.device | None = None) -> dict:
    """:func:`_intervention` on the trained LM of ``config`` (cached)."""
    model, corpus, _ = load_lm(config, device)

    def compute():
        with torch.no_grad():
            return _intervention(model, corpus, config)

    return cache.cached("geometry-intervention", config, compute, seed=config.seed)


def _middle_layer(model) -> int:
    """The residual stream the middle-layer intervention edits: after block ``n_layers // 2`` (of >= 2)."""
    if model.config.n_layers < 2:
        raise ValueError(f"a middle-layer intervention needs n_layers >= 2, the model has "
                         f"{model.config.n_layers}")
    return model.config.n_layers // 2


def _curves(logits_of, sets: dict[str, torch.Tensor], config: GeometryConfig) -> dict:
    """Mean-logit differences and probabilities against alpha, from ``logits_of(alpha)``: (contexts,
    lemmas)."""
    p1, p2 = config.parent_pair
    c1, c2 = config.child_pair
    out = {"parent": [], "child": [], "mass_p1": [], "share_c1": []}
    for alpha in config.alphas:
        logits = logits_of(alpha)
        mean = {c: logits[:, s].mean(1) for c, s in sets.items()}
        out["parent"].append(float((mean[p1] - mean[p2]).mean()))
        out["child"].append(float((mean[c1] - mean[c2]).mean()))
        p = logits.softmax(1)
        out["mass_p1"].append(float(p[:, sets[p1]].sum(1).mean()))
        mass_c1, mass_c2 = p[:, sets[c1]].sum(1), p[:, sets[c2]].sum(1)
        out["share_c1"].append(float((mass_c1 / (mass_c1 + mass_c2)).mean()))
    span = config.alphas[-1] - config.alphas[0]
    # the mean slope over the range of alpha (the slope itself at the final layer, where it is linear)
    out["parent_slope"] = (out["parent"][-1] - out["parent"][0]) / span
    out["child_slope"] = (out["child"][-1] - out["child"][0]) / span
    return out


def _intervention(model, corpus: HierarchyCorpus, config: GeometryConfig) -> dict:
    """Steer the LM along ``l_p1 - l_p2`` (whitened; ``A^T (l_p1 - l_p2)`` in the model's coordinates) on
    ``n_contexts`` contexts of the corpus, for each ``alpha`` in ``config.alphas``, at two places:

    - **final**: ``lambda(x) + alpha * A^T (l_p1 - l_p2)``, the paper's intervention on the final
      (normalised) hidden state; every logit moves by ``alpha * (l_p1 - l_p2) . g(y)`` plus a constant, so
      the curves are exactly linear in alpha (``*_slope_closed_form`` gives the slopes in closed form);
    - **middle**: the same vector added to the residual stream of the lemma's position after block
      ``n_layers // 2``, translated into that stream's units, ``rms(h_L) * A^T (l_p1 - l_p2) / w`` (``h_L``
      the last residual stream before the final RMSNorm, ``w`` its gain): what would move ``lambda(x)`` by
      the same vector if the later blocks passed it on unchanged and the norm's denominator stayed put.
      The later blocks and the normalisation make the effect non-linear.

    Measured at each: the parent-level mean-logit difference (mean logit over ``Y(p1)`` minus over
    ``Y(p2)``), the child-level one between two children of ``p1`` (``Y(c1)`` minus ``Y(c2)``), the
    probability mass of ``Y(p1)`` and the share of ``Y(c1)`` within ``Y(c1) + Y(c2)``, averaged over the
    contexts, and their mean slopes over the range of alpha. The **control**: ``n_control_directions``
    random whitened directions of the same norm as ``l_p1 - l_p2``, added the same way (per direction,
    the parent- and child-level mean slopes and the parent-level curve)."""
    gamma, vocabulary = lm_unembedding(model, corpus)
    whitening = Whitening(gamma)
    g = whitening(gamma)
    concepts = extract_concepts(corpus.hierarchy, vocabulary, config.min_tokens, config.lm.corpus.roots)
    names = list(config.parent_pair) + list(config.child_pair)
    for name in names:
        concepts.check(name)
    device = next(model.parameters()).device
    sets = {c: torch.tensor([vocabulary[t] for t in concepts.tokens[c]], device=device) for c in names}
    vectors = {c: estimate_vector(g[sets[c].cpu()]) for c in names}
    p1, p2 = config.parent_pair
    c1, c2 = config.child_pair
    concept = vectors[p1] - vectors[p2]  # whitened
    generator = torch.Generator().manual_seed(config.seed + 1)
    sentences, _ = corpus.sample(config.n_contexts, generator)
    random = torch.randn(config.n_control_directions, len(concept), generator=generator, dtype=concept.dtype)
    random = random / random.norm(dim=1, keepdim=True) * concept.norm()  # random directions, same norm
    x = corpus.inputs(sentences).to(device)
    lemma_ids = corpus.lemma_ids.to(device)
    head = model.lm_head.weight[lemma_ids].float()  # (lemmas, d)
    _, hidden_states = model(x, return_hidden=True)
    last = hidden_states[-1][:, -1].float()  # h_L at the lemma's position, before the final norm
    hidden = representation(model, x)[:, -1].float()  # lambda(x)
    rms = (last.pow(2).mean(-1, keepdim=True) + model.final_norm.eps).sqrt()  # (contexts, 1)
    layer = _middle_layer(model)

    def final(direction):
        return lambda alpha: (hidden + alpha * direction) @ head.T

    def middle(direction):
        step = rms * direction / model.final_norm.weight.float()  # (contexts, d): lambda's vector in h units

        def logits_of(alpha):
            def hook(index, h):
                if index != layer:
                    return h
                h = h.clone()
                h[:, -1] = h[:, -1] + alpha * step.to(h.dtype)
                return h
            return model(x, hook=hook)[:, -1, lemma_ids].float()
        return logits_of

    to_model = lambda v: whitening.to_embedding_direction(v).float().to(device)  # noqa: E731
    out = {"alphas": list(config.alphas), "pairs": {"parent": [p1, p2], "child": [c1, c2]},
           "middle_layer": layer}
    out.update(_curves(final(to_model(concept)), sets, config))  # the final layer, at the top level
    out["middle"] = _curves(middle(to_model(concept)), sets, config)
    out["control"] = {}
    for where, make in (("final", final), ("middle", middle)):
        runs = [_curves(make(to_model(r)), sets, config) for r in random]
        out["control"][where] = {"parent_slopes": [r["parent_slope"] for r in runs],
                                 "child_slopes": [r["child_slope"] for r in runs],
                                 "parent": [r["parent"] for r in runs]}
    # The closed form at the final layer: logits = (lambda(x) + alpha d) . gamma(y), so a mean-logit
    # difference between two token sets moves by alpha * d . (mean gamma over one set - over the other), in
    # every context alike: exactly linear in alpha, with this slope (in whitened terms
    # (l_p1 - l_p2) . (mean g over one set - mean g over the other)).
    mean_head = {c: head[sets[c]].mean(0) for c in names}
    d = to_model(concept)
    out["parent_slope_closed_form"] = float(d @ (mean_head[p1] - mean_head[p2]))
    out["child_slope_closed_form"] = float(d @ (mean_head[c1] - mean_head[c2]))
    return out


# ---------------------------------------------------------------------------------------- planted
def planted(config: GeometryConfig) -> dict:
    """:func:`planted_statistics`, through the artifact cache."""
    return cache.cached(
        "geometry-planted", config, lambda: planted_statistics(config), seed=config.planted.seed
    )


@cpu_threads(1)
def planted_statistics(config: GeometryConfig) -> dict:
    """The estimator on planted synthetic unembeddings over the same concept tree (see
    :mod:`paperlab.geometry.synthetic`): whitened, shuffled and Euclidean statistics, plus the cosines of
    the planted (true) vectors themselves."""
    corpus = HierarchyCorpus(config.lm.corpus)
    concepts = extract_concepts(corpus.hierarchy, corpus.lemmas, config.min_tokens, config.lm.corpus.roots)
    data = planted_unembeddings(concepts, corpus.lemmas, config.planted)
    vocabulary = {t: i for i, t in enumerate(corpus.lemmas)}
    result = analyse_unembedding(data["gamma"], vocabulary, config, corpus.hierarchy, figures=False)
    # Whitening makes the statistics invariant to the distortion M: the same cosines from g itself
    sets = {c: [vocabulary[t] for t in concepts.tokens[c]] for c in concepts.names}
    undistorted = estimate_vectors(Whitening(data["g_true"])(data["g_true"]), sets)
    undistorted_cosines = orthogonality(undistorted, concepts.pairs())
    result["invariance_error"] = max(
        abs(a - b) for a, b in zip(undistorted_cosines, result["orthogonality"]["whitened"]["true_pairs"])
    )
    euclidean = estimate_vectors(data["g_true"] - data["g_true"].mean(0), sets)
    result["undistorted_euclidean_true_mean_abs"] = _mean_abs(orthogonality(euclidean, concepts.pairs()))
    result.pop("heatmap", None)
    return result


def run(config: GeometryConfig, device: str | None = None) -> dict:
    """Every experiment of the chapter (CPU; the LM seeds side by side): JSON-able summary results."""
    results = over_lm_seeds(config, device)
    replicates = results["replicates"]
    first = replicates[0]
    return {
        "seeds": list(config.seeds),
        "lemma_loss": [r["lemma_loss"] for r in replicates],
        "bayes_lemma_loss": first["bayes_lemma_loss"],
        "uniform_lemma_loss": first["uniform_lemma_loss"],
        "effects": [seed_effects(r) for r in replicates],
        "summary": first["analysis"]["summary"],
        "planted": results["planted"]["summary"],
    }


EXPERIMENT = Experiment(name="geometry", chapter="book/06-geometry.md", configs=CONFIGS, run=run)
