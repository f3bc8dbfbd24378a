"""Reproduction scorecards under the book's evidence standard.

A chapter tests a paper's claim in three moves (the intro's section "How to read a scorecard" explains
them to the reader):

1. **Declare** the claim before computing anything: the one primary metric, how the effect is computed
   from it, and the smallest effect that counts, with its direction::

       CLAIM = Claim("TopK reconstructs better than ReLU at matched sparsity",
                     metric="NMSE at L0 = 32 (lower is better)",
                     effect="ReLU NMSE - TopK NMSE", smallest_effect=0.01)

2. **Estimate** the effect with a 95% interval from the runs (:mod:`paperlab.stats`: over >= 3 seeds, a
   bootstrap over test items, a proportion, against a null of the same kind, or exact).

3. **Judge**: ``row = CLAIM.judge(estimate, setting="n = 512, 3 seeds")`` gives one of four verdicts,
   decided by where the interval lies relative to the declared smallest effect ``d``:

   - ``direction="greater"`` (the claim: effect > d): **held** if the whole interval is above d;
     **not held** if it is wholly below d (an effect that counts is ruled out, including a real but
     smaller one); **inconclusive** if it contains d.
   - ``direction="less"`` (effect < d; give d with its sign, e.g. -0.01 for "at least 0.01 lower"): the
     mirror image.
   - ``direction="within"`` (|effect| < d, e.g. "accuracy is unchanged"): **held** if the interval lies
     inside (-d, d); **not held** if it lies wholly outside; **inconclusive** otherwise.
   - ``claim.untestable(reason)``: **not testable here** (a GPU speed claim on a CPU, a 7B-model claim).

   An estimate over fewer than 3 seeds cannot be held or not held: it is inconclusive, and says so. A
   comparison of runs that had not converged is marked in its row. A ``planted`` claim (the synthetic
   data put the effect there by construction) keeps its verdict but is labelled so, and does not count
   as a reproduction.

The section that computes a result shows its row (:func:`show`); the chapter's final scorecard collects
the rows (:func:`scorecard`). Both render as Markdown tables.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from paperlab.stats import Estimate

__all__ = ["VERDICTS", "Claim", "Row", "SingleRunRow", "scorecard", "scorecard_markdown", "show",
           "summary"]

HELD, NOT_HELD, INCONCLUSIVE, UNTESTABLE = "held", "not held", "inconclusive", "not testable here"
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE, UNTESTABLE)
DIRECTIONS = ("greater", "less", "within")
MIN_SEEDS = 3


@dataclass(frozen=True)
class Claim:
    """A claim declared before its number is computed.

    - ``claim``: the paper's claim, in a sentence (with where the paper makes it, if useful).
    - ``metric``: the one primary metric, with units and which way is better.
    - ``effect``: how the effect is computed from the metric (e.g. ``"ReLU NMSE - TopK NMSE"``).
    - ``smallest_effect``: the effect must be beyond this value, in ``direction``, to count.
    - ``direction``: ``"greater"`` (effect > smallest_effect), ``"less"`` (effect < smallest_effect) or
      ``"within"`` (|effect| < smallest_effect, for "no change" claims; smallest_effect > 0).
    - ``planted``: the synthetic data create this effect by construction (not a reproduction).
    - ``fmt``: format of the numbers in the table (``".3g"``, ``".1%"``...).
    """

    claim: str
    metric: str
    effect: str
    smallest_effect: float
    direction: str = "greater"
    planted: bool = False
    fmt: str = ".3g"

    def __post_init__(self) -> None:
        for name in ("claim", "metric", "effect"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"Claim.{name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"Claim.direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if isinstance(self.smallest_effect, bool) or not isinstance(self.smallest_effect, (int, float)) \
                or not math.isfinite(self.smallest_effect):
            raise ValueError(f"Claim.smallest_effect must be a finite number, got {self.smallest_effect!r}")
        if self.direction == "within" and self.smallest_effect <= 0:
            raise ValueError("a 'within' claim needs smallest_effect > 0 (the half-width of 'no change')")
        if not isinstance(self.planted, bool):
            raise ValueError(f"Claim.planted must be True or False, got {self.planted!r}")
        if not isinstance(self.fmt, str):
            raise ValueError(f"Claim.fmt must be a format spec such as '.3g', got {self.fmt!r}")
        format(1.0, self.fmt)  # raises ValueError for a bad format spec

    @property
    def criterion(self) -> str:
        """The declared criterion in words, e.g. ``"effect > 0.01"``."""
        d = format(self.smallest_effect, self.fmt)
        return {"greater": f"> {d}", "less": f"< {d}", "within": f"within +-{d}"}[self.direction]

    def verdict_for(self, estimate: Estimate) -> str:
        """held / not held / inconclusive from where ``estimate``'s interval lies (see module docstring)."""
        low, high, d = estimate.low, estimate.high, self.smallest_effect
        if self.direction == "greater":
            return HELD if low > d else NOT_HELD if high < d else INCONCLUSIVE
        if self.direction == "less":
            return HELD if high < d else NOT_HELD if low > d else INCONCLUSIVE
        return HELD if -d < low and high < d else NOT_HELD if low >= d or high <= -d else INCONCLUSIVE

    def judge(self, estimate: Estimate, *, setting: str, converged: bool | None = None,
              note: str = "") -> Row:
        """The scorecard row for this claim given ``estimate`` of its effect.

        ``converged=False`` marks a comparison between runs that were still improving; ``note`` adds a
        short remark (what to read into the number).
        """
        if not isinstance(estimate, Estimate):
            raise TypeError(f"judge needs a paperlab.stats.Estimate, got {type(estimate).__name__}")
        if not (converged is None or isinstance(converged, (bool, np.bool_))):
            raise ValueError(f"converged must be True, False or None (not checked), got {converged!r}")
        if not isinstance(setting, str) or not isinstance(note, str):
            raise ValueError(f"setting and note must be strings, got {setting!r} and {note!r}")
        verdict = self.verdict_for(estimate)
        notes = []
        if estimate.method.startswith(("t over", "paired t over", "Welch t")) and estimate.n < MIN_SEEDS:
            if verdict != INCONCLUSIVE:
                notes.append(f"would be '{verdict}', but fewer than {MIN_SEEDS} seeds")
            verdict = INCONCLUSIVE
        if converged is not None and not converged:  # (numpy's False too)
            notes.append("runs not converged")
        if self.planted:
            notes.append("planted by the synthetic data: not a reproduction")
        if note:
            notes.append(note)
        return Row(self, setting, estimate, verdict, tuple(notes))

    def untestable(self, reason: str, *, setting: str = "") -> Row:
        """A row for a claim this setting cannot test; ``reason`` says why."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"say why the claim is not testable here (a non-empty string), got {reason!r}")
        if not isinstance(setting, str):
            raise ValueError(f"setting must be a string, got {setting!r}")
        return Row(self, setting, None, UNTESTABLE, (reason,))


@dataclass(frozen=True)
class Row:
    """One judged scorecard row (made by :meth:`Claim.judge` or :meth:`Claim.untestable`)."""

    claim: Claim
    setting: str
    estimate: Estimate | None
    verdict: str
    notes: tuple[str, ...] = field(default=())

    @property
    def held(self) -> bool | None:
        """True if held, False if not held, None if inconclusive or not testable."""
        return {HELD: True, NOT_HELD: False}.get(self.verdict)

    def cells(self) -> tuple[str, str, str, str, str]:
        c = self.claim
        if self.estimate is None:
            number = "-"
        else:
            number = f"{self.estimate.format(c.fmt)} ({self.estimate.method})"
        verdict = f"**{self.verdict}**" if self.verdict in (HELD, NOT_HELD) else self.verdict
        if c.planted:
            verdict += " (planted)"
        if self.notes:
            verdict += "; " + "; ".join(self.notes)
        return (c.claim, f"{c.metric}; effect = {c.effect}, counts if {c.criterion}", self.setting,
                number, verdict)


@dataclass(frozen=True)
class SingleRunRow:
    """A row from before the evidence standard: one run, no interval, a yes/no. Rendered as such
    ("single run, not judged") so a reader never takes it for a judged verdict. Chapters move to
    :class:`Claim` rows as they are reworked."""

    claim: str
    setting: str
    number: str
    held: bool | None
    note: str = ""

    def cells(self) -> tuple[str, str, str, str, str]:
        answer = {True: "yes", False: "no", None: "not tested"}[self.held]
        verdict = f"single run, not judged: {answer}" + (f" ({self.note})" if self.note else "")
        return (self.claim, "-", self.setting, self.number, verdict)


HEADER = ("claim", "primary metric and criterion (declared first)", "setting", "effect [95% interval]",
          "verdict")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def scorecard_markdown(rows: list[Row | SingleRunRow], header: tuple[str, ...] = HEADER) -> str:
    """The rows as a Markdown table."""
    if not rows:
        raise ValueError("a scorecard needs at least one row")
    for row in rows:
        if not isinstance(row, (Row, SingleRunRow)):
            raise TypeError(f"scorecard rows must be report.Row (from Claim.judge), got {type(row).__name__}")
    if len(header) != 5:
        raise ValueError(f"a scorecard header has 5 columns, got {len(header)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def summary(rows: list[Row | SingleRunRow]) -> str:
    """``"3 held, 1 not held, 1 inconclusive, 1 not testable here (1 planted)"``."""
    counts = Counter(row.verdict for row in rows if isinstance(row, Row))
    parts = [f"{counts[v]} {v}" for v in VERDICTS if counts[v]]
    planted = sum(1 for row in rows if isinstance(row, Row) and row.claim.planted)
    single = sum(1 for row in rows if isinstance(row, SingleRunRow))
    text = ", ".join(parts) if parts else "no judged rows"
    if planted:
        text += f" ({planted} planted)"
    if single:
        text += f"; {single} single-run rows not judged"
    return text


def _display(text: str):
    try:
        from IPython.display import Markdown
    except ImportError:  # pragma: no cover - IPython is installed with the book extras
        return text
    return Markdown(text)


def scorecard(rows: list[Row | SingleRunRow], header: tuple[str, ...] = HEADER):
    """The chapter's scorecard for a notebook (IPython Markdown), or the Markdown string outside IPython."""
    return _display(scorecard_markdown(rows, header) + f"\n\n{summary(rows)}.")


def show(row: Row | SingleRunRow) -> None:
    """Display one row as a one-row table, in the section that computes it: in a notebook wherever the call
    stands (in a loop, or before other lines of its cell, where a returned table would not be shown);
    printed as Markdown outside IPython."""
    text = scorecard_markdown([row])
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython is installed with the book extras
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        print(text)
        return
    display(Markdown(text))
