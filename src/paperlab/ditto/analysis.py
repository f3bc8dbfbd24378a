"""Win rates from the chapter's scored runs (:func:`paperlab.ditto.experiments.score_runs`).

The paper's metric is a pairwise win rate: a judge reads two outputs for the same prompt and says which is
closer to the author. Here an output that keeps the prompt's content beats one that does not, and otherwise
the judge's ``log p(author | output)`` decides (:func:`paperlab.ditto.judge.wins`,
ties count half). The unit of the evidence is the **seed**: each seed draws its own demonstrations, trains
every method on them and samples; a seed's win rate is the mean over its target authors and their held-out
prompts (:func:`win_rates_by_seed`), and an effect's interval is a t interval over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paperlab.ditto.judge import wins

__all__ = ["win_matrix", "win_rates_by_seed", "win_rates_by_author", "seeds_of", "authors_of",
           "identical_to_demonstration", "identical_share", "identical_shares_by_seed",
           "win_rates_where_different", "needed_where_different"]


def seeds_of(scores: Sequence[dict]) -> list[int]:
    return sorted({s["seed"] for s in scores})


def authors_of(scores: Sequence[dict]) -> list[int]:
    return sorted({s["author"] for s in scores})


def _check(scores: Sequence[dict], *methods: str, judge: str) -> None:
    if not scores:
        raise ValueError("no scored runs")
    known = set(scores[0]["methods"])
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; the runs have {sorted(known)}")
    if judge not in scores[0]["methods"][methods[0]]["score"]:
        raise ValueError(f"unknown judge {judge!r}; the runs were scored by "
                         f"{sorted(scores[0]['methods'][methods[0]]['score'])}")


def _run_win_rate(run: dict, a: str, b: str, judge: str) -> float:
    first, second = run["methods"][a], run["methods"][b]
    return float(wins(first["score"][judge], second["score"][judge], first["kept"], second["kept"]).mean())


def win_rates_by_seed(scores: Sequence[dict], a: str, b: str, judge: str = "char") -> list[float]:
    """Per seed (in :func:`seeds_of` order): the share of held-out prompts, over all its target authors, on
    which ``a``'s output reads more like the author than ``b``'s (ties half)."""
    _check(scores, a, b, judge=judge)
    return [float(np.mean([_run_win_rate(s, a, b, judge) for s in scores if s["seed"] == seed]))
            for seed in seeds_of(scores)]


def win_rates_by_author(scores: Sequence[dict], a: str, b: str,
                        judge: str = "char") -> dict[int, list[float]]:
    """Per target author: its win rate of ``a`` over ``b`` for each seed."""
    _check(scores, a, b, judge=judge)
    return {author: [_run_win_rate(s, a, b, judge) for s in sorted(scores, key=lambda s: s["seed"])
                     if s["author"] == author] for author in authors_of(scores)}


def win_matrix(scores: Sequence[dict], methods: Sequence[str], judge: str = "char") -> np.ndarray:
    """``M[i, j]``: the mean over seeds of method i's win rate over method j (0.5 on the diagonal)."""
    matrix = np.full((len(methods), len(methods)), 0.5)
    for i, a in enumerate(methods):
        for j, b in enumerate(methods):
            if i != j:
                matrix[i, j] = float(np.mean(win_rates_by_seed(scores, a, b, judge)))
    return matrix


def identical_to_demonstration(run: dict, method: str) -> float:
    """Share of ``method``'s outputs in one run that repeat one of the demonstrations' messages word for word
    (with another prompt's names and slots, so they also say the wrong thing)."""
    messages = {d["message"] for d in run["demonstrations"]}
    texts = run["texts"][method]
    return sum(t in messages for t in texts) / len(texts)


def identical_share(run: dict, a: str, b: str) -> float:
    """Share of one run's held-out prompts on which ``a`` and ``b`` wrote the very same output."""
    first, second = run["texts"][a], run["texts"][b]
    return sum(x == y for x, y in zip(first, second)) / len(first)


def _by_seed(runs: Sequence[dict], scores: Sequence[dict]) -> dict[int, list[tuple[dict, dict]]]:
    """The runs (``run_target`` results) with their scores (same order, as ``score_runs`` returns them),
    grouped by seed."""
    if len(runs) != len(scores) or not scores:
        raise ValueError(f"need one scored run per run, got {len(runs)} runs and {len(scores)} scores")
    return {seed: [(r, s) for r, s in zip(runs, scores) if s["seed"] == seed] for seed in seeds_of(scores)}


def identical_shares_by_seed(runs: Sequence[dict], scores: Sequence[dict], a: str, b: str) -> list[float]:
    """Per seed (in :func:`seeds_of` order): the share of its held-out prompts, over all its target authors,
    on which ``a`` and ``b`` wrote the same output. Such a pair is a tie: it counts one half in the win rate
    whatever the judge, so a win rate of ``a`` over ``b`` lies within ``0.5 +- (1 - share) / 2``."""
    _check(scores, a, b, judge="char")
    return [float(np.mean([identical_share(r, a, b) for r, _ in pairs]))
            for pairs in _by_seed(runs, scores).values()]


def win_rates_where_different(runs: Sequence[dict], scores: Sequence[dict], a: str, b: str,
                              judge: str = "char") -> list[float]:
    """Per seed: ``a``'s win rate over ``b`` on only the held-out prompts where their outputs differ (NaN for
    a seed where they never differ). A description of the informative comparisons, not a claim's metric."""
    _check(scores, a, b, judge=judge)
    out = []
    for pairs in _by_seed(runs, scores).values():
        won = []
        for run, scored in pairs:
            first, second = scored["methods"][a], scored["methods"][b]
            each = wins(first["score"][judge], second["score"][judge], first["kept"], second["kept"])
            won.extend(w for w, x, y in zip(each, run["texts"][a], run["texts"][b]) if x != y)
        out.append(float(np.mean(won)) if won else float("nan"))
    return out


def needed_where_different(share_identical: float, win_rate: float) -> float:
    """The win rate on the differing outputs that a total win rate of ``win_rate`` needs when a share
    ``share_identical`` of the outputs are identical (ties, one half each): ``0.5 + (win_rate - 0.5) /
    (1 - share_identical)``; above 1 (infinite when every output is identical) means that total is out of
    reach."""
    if not 0 <= share_identical <= 1:
        raise ValueError(f"share_identical must be in [0, 1], got {share_identical}")
    if share_identical == 1:
        return 0.5 if win_rate == 0.5 else float("inf")
    return 0.5 + (win_rate - 0.5) / (1 - share_identical)
