"""The statistics behind every scorecard: an effect with a 95% interval, and how it was obtained.

Each function returns an :class:`Estimate`: a point value, the ends of its interval and the name of the
method, so a scorecard row can say *how* uncertain a number is and *why* (over seeds, over test items, or
exact). The methods, and when to use which (the intro's "how to read a scorecard" section shows them on
an example):

- :func:`over_seeds`: independent training runs of one configuration, one number per seed; Student-t
  interval of the mean. The seed-to-seed spread is what says whether a difference between two methods is
  real, so comparisons of trained models use it (:func:`difference` for two families of runs,
  :func:`paired` when run ``i`` of both families shares seed ``i`` and its data order).
- :func:`bootstrap`: one model (or a fixed set of them) evaluated on many test items; percentile
  bootstrap over the items. For ratios of sums (loss per token = nats / tokens) resample items jointly.
- :func:`proportion`: ``k`` successes in ``n`` trials; Wilson score interval.
- :func:`against_null`: an observed statistic against draws from a null of the same kind (random
  subsets of the same size, shuffled labels); the interval is the observed value minus the null's
  central 95%.
- :func:`exact`: a deterministic quantity (a size in bytes, a count); zero width.

Also here, because every chapter needs them once: :func:`loglog_fit` (a power law ``y = a x^b`` by least
squares on logs) and :func:`convergence` (is a loss curve still falling over its last fifth?).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as _scipy_stats

__all__ = [
    "Convergence",
    "Estimate",
    "against_null",
    "bootstrap",
    "convergence",
    "difference",
    "exact",
    "loglog_fit",
    "over_seeds",
    "paired",
    "proportion",
]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point value with its 95% interval ``[low, high]``.

    ``n`` is the number of independent units the interval rests on (seeds, test items, trials, null
    draws); ``method`` names how the interval was made (shown in the scorecard); ``values`` keeps the
    per-unit numbers when they are few (seeds), so a figure can show every one of them.
    """

    value: float
    low: float
    high: float
    n: int
    method: str
    values: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        for name in ("value", "low", "high"):
            if not isinstance(getattr(self, name), (int, float, np.floating, np.integer)):
                raise TypeError(f"Estimate.{name} must be a number, got {getattr(self, name)!r}")
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        if self.low > self.high:
            raise ValueError(f"Estimate interval is reversed: low {self.low} > high {self.high}")
        slack = 1e-9 * max(abs(self.low), abs(self.high), 1e-300)  # rounding in mean -+ half width
        if not self.low - slack <= self.value <= self.high + slack:
            raise ValueError(f"Estimate value {self.value} lies outside its interval "
                             f"[{self.low}, {self.high}]")

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def format(self, spec: str = ".3g") -> str:
        """``"0.123 [0.101, 0.145]"`` (a bare number when the interval has zero width)."""
        if self.low == self.high == self.value:
            return format(self.value, spec)
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def __str__(self) -> str:
        return self.format()

    def scaled(self, factor: float) -> Estimate:
        """The same estimate in other units (e.g. ``100`` for percent); a negative factor swaps the ends."""
        low, high = sorted((self.low * factor, self.high * factor))
        return Estimate(self.value * factor, low, high, self.n, self.method,
                        tuple(v * factor for v in self.values))


def _finite_array(values: Sequence[float], name: str, minimum: int) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:  # a table of runs flattened would count each of its cells as a seed
        raise ValueError(f"{name} needs a flat sequence of values (one per unit), got shape {array.shape}")
    if array.size < minimum:
        raise ValueError(f"{name} needs at least {minimum} values, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} got a non-finite value: {array[~np.isfinite(array)][:3].tolist()}")
    return array


def _t_interval(values: np.ndarray, method: str) -> Estimate:
    n = values.size
    mean = float(values.mean())
    sem = float(values.std(ddof=1) / math.sqrt(n))
    half = float(_scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1)) * sem
    return Estimate(mean, mean - half, mean + half, n, method, tuple(values) if n <= 64 else ())


def over_seeds(values: Sequence[float]) -> Estimate:
    """Mean over independent runs (one value per seed) with a Student-t 95% interval.

    ``mean +- t_{0.975, n-1} * s / sqrt(n)``. With 3 seeds ``t = 4.30``: the interval is wide, and that
    is the honest answer for three runs. Needs at least 2 values (the evidence standard asks for 3; a
    row judged on fewer says so).
    """
    array = _finite_array(values, "over_seeds", 2)
    return _t_interval(array, f"t over {array.size} seeds")


def paired(a: Sequence[float], b: Sequence[float], unit: str = "seeds") -> Estimate:
    """Mean of ``a[i] - b[i]`` with a Student-t 95% interval over the pairs.

    Use when ``a[i]`` and ``b[i]`` share what varies between units: the same seed (same initialisation
    stream and data order) for two methods, or the same test item for two models. Pairing removes the
    shared variation, so the interval is narrower than :func:`difference`'s when the pairing is real.
    """
    a_array, b_array = _finite_array(a, "paired (a)", 2), _finite_array(b, "paired (b)", 2)
    if a_array.size != b_array.size:
        raise ValueError(f"paired needs equally many values, got {a_array.size} and {b_array.size}")
    return _t_interval(a_array - b_array, f"paired t over {a_array.size} {unit}")


def difference(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """``mean(a) - mean(b)`` for two independent sets of runs, with Welch's 95% interval."""
    a_array, b_array = _finite_array(a, "difference (a)", 2), _finite_array(b, "difference (b)", 2)
    var_a, var_b = a_array.var(ddof=1) / a_array.size, b_array.var(ddof=1) / b_array.size
    diff = float(a_array.mean() - b_array.mean())
    se = math.sqrt(var_a + var_b)
    if se == 0:
        return Estimate(diff, diff, diff, min(a_array.size, b_array.size),
                        f"Welch t over {a_array.size} and {b_array.size} seeds")
    df = (var_a + var_b) ** 2 / (var_a**2 / (a_array.size - 1) + var_b**2 / (b_array.size - 1))
    half = float(_scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df=df)) * se
    return Estimate(diff, diff - half, diff + half, min(a_array.size, b_array.size),
                    f"Welch t over {a_array.size} and {b_array.size} seeds")


def bootstrap(samples: Sequence[Sequence[float]] | np.ndarray, statistic: Callable[..., float] | None = None,
              *, n_resamples: int = 2000, seed: int = 0, unit: str = "items") -> Estimate:
    """Percentile-bootstrap 95% interval of ``statistic`` over test items.

    ``samples``: one array of per-item values, or a tuple of equally long arrays resampled **jointly**
    (item ``i`` of every array together), e.g. ``(excess_nats, n_tokens)`` with
    ``statistic=lambda e, t: e.sum() / t.sum()`` for a per-token rate. ``statistic`` (default: the mean)
    receives one resample's arrays (1-D each) and returns a float. Resampling uses a generator seeded
    with ``seed``, so the interval is reproducible; :func:`scipy.stats.bootstrap`, percentile method.
    """
    if isinstance(samples, np.ndarray) and samples.ndim == 1:
        arrays = (samples,)
    elif samples and np.ndim(samples[0]) == 0:
        arrays = (samples,)
    else:
        arrays = tuple(samples)
    arrays = tuple(_finite_array(a, "bootstrap", 2) for a in arrays)
    if len({a.size for a in arrays}) != 1:
        raise ValueError(f"bootstrap arrays must be equally long, got sizes {[a.size for a in arrays]}")
    if not isinstance(n_resamples, int) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an int >= 100, got {n_resamples!r}")
    statistic = statistic or (lambda x: float(np.mean(x)))
    value = float(statistic(*arrays))
    result = _scipy_stats.bootstrap(
        arrays, lambda *xs: statistic(*xs), paired=True, vectorized=False, n_resamples=n_resamples,
        confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed),
    )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    low, high = min(low, value), max(high, value)  # a degenerate resample set cannot exclude the value
    return Estimate(value, low, high, arrays[0].size, f"bootstrap over {arrays[0].size} {unit}")


def proportion(successes: int, trials: int) -> Estimate:
    """``successes / trials`` with the Wilson score 95% interval (sound near 0 and 1, unlike +- 2 SE)."""
    for name, value in (("successes", successes), ("trials", trials)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if trials == 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    interval = _scipy_stats.binomtest(int(successes), int(trials)).proportion_ci(
        confidence_level=CONFIDENCE, method="wilson")
    return Estimate(successes / trials, interval.low, interval.high, int(trials),
                    f"Wilson interval over {trials} trials")


def against_null(observed: float, null_draws: Sequence[float], unit: str = "null draws") -> Estimate:
    """``observed - mean(null)`` with the interval ``observed - [q97.5, q2.5]`` of the null draws.

    The null is a statistic of the same kind computed where the claimed structure is absent (random
    subsets of the same size, shuffled labels with matched norms). The interval covers the effects the
    null's own variation allows: it excludes 0 exactly when ``observed`` lies outside the null's central
    95%.
    """
    draws = _finite_array(null_draws, "against_null", 20)
    if not math.isfinite(observed):
        raise ValueError(f"observed must be finite, got {observed!r}")
    q_low, q_high = np.quantile(draws, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Estimate(observed - float(draws.mean()), observed - float(q_high), observed - float(q_low),
                    draws.size, f"against {draws.size} {unit}")


def exact(value: float, what: str = "exact (deterministic)") -> Estimate:
    """A deterministic quantity: no sampling, zero-width interval."""
    if not math.isfinite(value):
        raise ValueError(f"exact value must be finite, got {value!r}")
    return Estimate(value, value, value, 1, what)


# --------------------------------------------------------------------------------------------------
# Fits


def loglog_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares fit of ``log y = b log x + log a`` (a power law ``y = a x^b``).

    Returns ``(b, a, r2)``: the exponent, the prefactor and R^2 on the log scale. Five points on any
    smooth monotone curve give R^2 > 0.95, so R^2 is no test of a law: predict a held-out point instead.
    """
    x_array, y_array = _finite_array(x, "loglog_fit (x)", 2), _finite_array(y, "loglog_fit (y)", 2)
    if x_array.size != y_array.size:
        raise ValueError(f"loglog_fit needs equally many x and y, got {x_array.size} and {y_array.size}")
    if np.any(x_array <= 0) or np.any(y_array <= 0):
        raise ValueError("loglog_fit needs positive x and y")
    if np.unique(x_array).size < 2:
        raise ValueError(f"loglog_fit needs at least 2 distinct x to fit a slope, got "
                         f"{np.unique(x_array).tolist()}")
    log_x, log_y = np.log(x_array), np.log(y_array)
    slope, intercept = np.polyfit(log_x, log_y, 1)
    residual = log_y - (slope * log_x + intercept)
    total = ((log_y - log_y.mean()) ** 2).sum()
    r2 = 1.0 - float((residual**2).sum() / total) if total > 0 else 1.0
    return float(slope), float(math.exp(intercept)), r2


@dataclass(frozen=True)
class Convergence:
    """Is a curve still improving at its end? (see :func:`convergence`). For a loss (``higher_is_better``
    False) improving means falling; for a reward or success rate, rising. ``drop`` and ``still_falling``
    count the improvement in the curve's own direction, so one check serves both.

    Three states (:attr:`state`): *still falling* (or *still rising*), *converged* (shown flat: even the
    largest improvement the slope's 95% interval allows is negligible), and *too noisy to tell* (neither:
    the curve may still be improving by an amount that counts). Only the second is :attr:`converged`."""

    slope: Estimate  # change of the value per step over the tail, with a t interval
    tail_steps: tuple[int, int]  # first and last step of the tail
    drop: float  # fitted improvement over the tail (value units): a decrease, or a rise if higher_is_better
    level: float  # mean value over the tail
    tolerance: float  # relative improvement (of level) below which it is negligible
    still_falling: bool  # still improving: still falling, or still rising if higher_is_better
    floor: float = 0.0  # absolute improvement (value units) below which it is negligible
    higher_is_better: bool = False
    drop_high: float = math.inf  # the largest improvement over the tail the slope's 95% interval allows

    @property
    def negligible(self) -> float:
        """The improvement over the tail (value units) below which it does not count."""
        return max(self.tolerance * abs(self.level), self.floor)

    @property
    def state(self) -> str:
        """``"still falling"`` (``"still rising"``), ``"converged"`` or ``"too noisy to tell"``."""
        if self.still_falling:
            return "still rising" if self.higher_is_better else "still falling"
        return "converged" if self.drop_high <= self.negligible else "too noisy to tell"

    @property
    def converged(self) -> bool:
        """Shown flat: the slope's 95% interval rules out an improvement that counts."""
        return self.state == "converged"

    @property
    def unresolved(self) -> bool:
        """Too noisy to tell: not shown to improve, nor shown flat."""
        return self.state == "too noisy to tell"

    def record(self, prefix: str = "") -> dict:
        """The check as the JSON fields of a run's record: ``converged`` (shown flat), ``convergence`` (the
        words of :meth:`describe`, to print) and ``convergence_check`` (the state and the numbers behind it:
        the fitted and the largest allowed improvement over the tail, the level, what counts, the tail's
        steps), so that a chapter asserts on the state and numbers instead of parsing the words. ``prefix``
        names a second check in one record (``"success_"``: ``success_converged``, ...)."""
        check = {"state": self.state, "drop": self.drop, "drop_high": self.drop_high, "level": self.level,
                 "negligible": self.negligible, "tail_steps": list(self.tail_steps)}
        return {f"{prefix}converged": self.converged, f"{prefix}convergence": self.describe(),
                f"{prefix}convergence_check": check}

    def describe(self) -> str:
        """The state, the fitted change over the tail and the reason: the curve rose; the largest fall its
        interval allows is under the tolerance (or floor); or that largest fall is over it (noise)."""
        improved, worsened = ("rose", "fell") if self.higher_is_better else ("fell", "rose")
        change = improved if self.drop > 0 else worsened if self.drop < 0 else "changed by"
        share = f"{100 * abs(self.drop) / abs(self.level):.2g}% of {self.level:.3g}" if self.level else ""
        counts = (f"the {self.floor:g} floor" if self.floor > self.tolerance * abs(self.level)
                  else f"the {100 * self.tolerance:g}% that counts")
        reason = ""
        if not self.still_falling and self.drop_high > 0:
            noun = "rise" if self.higher_is_better else "fall"
            reason = (f"its 95% interval allows a {noun} of up to {self.drop_high:.2g}, "
                      f"{'under' if self.converged else 'over'} {counts}")
        detail = "; ".join(part for part in (share, reason) if part)
        first, last = self.tail_steps
        said = f"{self.state}: {change} {abs(self.drop):.3g} over steps {first}-{last}"
        return f"{said} ({detail})" if detail else said


CONVERGENCE_TAIL = 0.2  # the share of training (in steps) at its end whose evaluations the check fits
CONVERGENCE_MIN_EVALUATIONS = 5  # the fewest evaluations it fits its line to (3 degrees of freedom)


def convergence(steps: Sequence[int], values: Sequence[float], *, tail: float = CONVERGENCE_TAIL,
                tolerance: float = 0.005, floor: float = 0.0, higher_is_better: bool = False) -> Convergence:
    """Fit a line to the last ``tail`` fraction of a curve (a validation loss) and ask if it still falls.

    With ``higher_is_better`` the curve is a score to raise (a reward, a success rate) and the same check
    asks whether it still *rises*: it runs on the negated curve, and reports the level, slope and rise in
    the curve's own units.

    A fall *counts* when it exceeds both ``tolerance`` times the curve's level over the tail (0.5% by
    default: smaller gains would not change a comparison) and ``floor``, in the curve's own units (for a
    loss that can reach 0, such as a cross-entropy on a task with one right answer, a relative tolerance
    alone would call a fall from 1e-6 to 1e-7 nats a fall). Then the curve is

    - *still falling* when the slope's 95% interval lies below zero (the fall is not noise) and the fitted
      fall over the tail counts;
    - *converged* when even the largest fall the slope's interval allows (its low end times the tail's
      length) does not count: flat within the tolerance, or turned up (overfitting: more steps at this
      learning rate would not lower it);
    - *too noisy to tell* otherwise: not shown to fall, but not shown flat either.

    The line is fitted to at least ``CONVERGENCE_MIN_EVALUATIONS`` (5) evaluations: with 3, its slope's
    interval has one degree of freedom and is so wide that it settles nothing.
    :meth:`paperlab.train.TrainConfig.evaluation_steps` adds evaluations to the last fifth of training
    so that it holds five; a curve with fewer there is fitted over its last five, which reach further back.
    """
    need = CONVERGENCE_MIN_EVALUATIONS
    x = _finite_array(steps, "convergence (steps)", need)
    y = _finite_array(values, "convergence (values)", need)
    if x.size != y.size:
        raise ValueError(f"convergence needs equally many steps and values, got {x.size} and {y.size}")
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be in (0, 1], got {tail!r}")
    if not (math.isfinite(floor) and floor >= 0):
        raise ValueError(f"floor must be a finite number >= 0, got {floor!r}")
    start = x[-1] - tail * (x[-1] - x[0])
    keep = x >= start
    if keep.sum() < need:  # too few in the last fifth: the last five, reaching further back
        keep = np.zeros_like(keep)
        keep[-need:] = True
    tx, ty = x[keep], y[keep]
    fit = _scipy_stats.linregress(tx, ty)
    stderr = fit.stderr if np.ptp(ty) > 0 else 0.0  # a constant tail: scipy gives nan; it is exact
    half = float(_scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df=tx.size - 2)) * stderr
    slope = Estimate(fit.slope, fit.slope - half, fit.slope + half, int(tx.size),
                     f"least squares over the last {tx.size} evaluations")
    sign = -1.0 if higher_is_better else 1.0  # an improvement is a fall of sign * value
    drop = float(-sign * fit.slope * (tx[-1] - tx[0]))
    level = float(ty.mean())
    improving = (slope.low > 0) if higher_is_better else (slope.high < 0)  # not noise
    falling = bool(improving and drop > max(tolerance * abs(level), floor))
    best_slope = slope.high if higher_is_better else -slope.low  # the interval's end that improves most
    drop_high = float(best_slope * (tx[-1] - tx[0]))
    return Convergence(slope, (int(tx[0]), int(tx[-1])), drop, level, tolerance, falling, floor,
                       higher_is_better, drop_high)
