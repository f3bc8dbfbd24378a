import json
import math

import numpy as np
import pytest

from paperlab import stats


def test_over_seeds_matches_the_t_formula_and_keeps_values():
    est = stats.over_seeds([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n)
    assert est.value == 2.0 and est.n == 3 and est.values == (1.0, 2.0, 3.0)
    assert est.low == pytest.approx(2.0 - half) and est.high == pytest.approx(2.0 + half)
    assert "3 seeds" in est.method


def test_t_interval_covers_the_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(2000):
        est = stats.over_seeds(rng.normal(1.0, 2.0, size=5))
        covered += est.low < 1.0 < est.high
    assert 0.93 < covered / 2000 < 0.97


def test_paired_is_narrower_than_unpaired_when_pairs_share_noise():
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 5, size=8)
    a, b = shared + 1.0 + rng.normal(0, 0.1, 8), shared + rng.normal(0, 0.1, 8)
    assert stats.paired(a, b).half_width < stats.difference(a, b).half_width / 5
    assert stats.paired(a, b).low > 0.5


def test_bootstrap_ratio_of_sums_and_reproducible():
    rng = np.random.default_rng(2)
    excess, tokens = rng.normal(0.1, 0.05, 400) * 10, rng.integers(5, 15, 400)
    ratio = lambda e, t: e.sum() / t.sum()
    one = stats.bootstrap((excess, tokens), ratio, seed=3)
    assert one == stats.bootstrap((excess, tokens), ratio, seed=3)
    assert one.value == pytest.approx(excess.sum() / tokens.sum())
    assert one.low < one.value < one.high and one.n == 400


def test_proportion_wilson_edges():
    est = stats.proportion(500, 500)
    assert est.value == 1.0 and est.high == pytest.approx(1.0) and 0.99 < est.low < 1.0
    with pytest.raises(ValueError, match="successes"):
        stats.proportion(6, 5)


def test_against_null_excludes_zero_only_outside_the_null():
    null = np.random.default_rng(4).normal(0, 1, 1000)
    assert stats.against_null(3.5, null).low > 0
    inside = stats.against_null(0.5, null)
    assert inside.low < 0 < inside.high


def test_loglog_fit_needs_two_distinct_x():
    with pytest.raises(ValueError, match="at least 2 distinct x"):
        stats.loglog_fit([2.0, 2.0], [3.0, 3.0])  # used to return an exponent with R^2 = 1


def test_loglog_fit_recovers_a_power_law():
    x = np.array([1, 2, 4, 8, 16.0])
    slope, prefactor, r2 = stats.loglog_fit(x, 3 * x ** -0.5)
    assert slope == pytest.approx(-0.5) and prefactor == pytest.approx(3) and r2 == pytest.approx(1)
    with pytest.raises(ValueError, match="positive"):
        stats.loglog_fit([1, 2], [0, 1])


def test_convergence_tells_falling_from_flat_and_noisy():
    steps = np.arange(100, 2100, 100)
    falling = stats.convergence(steps, 2.0 - steps / 4000)
    assert falling.still_falling and falling.drop > 0
    rng = np.random.default_rng(5)
    flat = stats.convergence(steps, 1.5 + rng.normal(0, 0.001, steps.size))
    assert flat.converged and flat.state == "converged"
    assert stats.convergence(steps, np.full(steps.size, 0.3)).converged  # a constant tail: an exact fit
    noisy = stats.convergence(steps, 1.5 + rng.normal(0, 0.01, steps.size))  # noise above the 0.5%
    assert not noisy.still_falling and not noisy.converged and noisy.unresolved
    assert noisy.state == "too noisy to tell" and noisy.drop_high > noisy.negligible
    rising = stats.convergence(steps, 1.5 + steps / 10000)
    assert rising.converged  # overfitting is not "still falling"
    tiny = stats.convergence(steps, 2.0 - steps * 1e-8)
    assert tiny.converged  # a significant but negligible fall


def test_convergence_fits_five_evaluations_and_has_an_absolute_floor():
    steps = np.arange(100, 1100, 100)  # the last fifth (820-1000) holds 2 evaluations
    check = stats.convergence(steps, 2.0 - steps / 4000)
    assert check.slope.n == 5 and check.tail_steps == (600, 1000)  # the last five, reaching back
    with pytest.raises(ValueError, match="at least 5"):
        stats.convergence(steps[:4], 2.0 - steps[:4] / 4000)
    near_zero = 1e-6 * np.exp(-steps / 300)  # a loss at its floor of 0: falls 10x, by 1e-8 nats
    assert stats.convergence(steps, near_zero).still_falling  # relative to its level, a big fall
    assert stats.convergence(steps, near_zero, floor=1e-3).converged
    with pytest.raises(ValueError, match="floor"):
        stats.convergence(steps, near_zero, floor=-1)


def test_convergence_says_why_a_fall_did_not_count():
    steps = np.arange(100, 2100, 100)
    falling = stats.convergence(steps, 2.0 - steps / 4000).describe()
    assert falling == "still falling: fell 0.1 over steps 1600-2000 (6.5% of 1.55)"
    assert stats.convergence(steps, 1.5 + steps / 10000).describe().startswith("converged: rose ")
    tiny = stats.convergence(steps, 2.0 - steps * 1e-8).describe()
    assert tiny.startswith("converged: fell ") and tiny.endswith("under the 0.5% that counts)")
    near_zero = stats.convergence(steps, 1e-6 * np.exp(-steps / 300), floor=1e-3).describe()
    assert near_zero.endswith("under the 0.001 floor)")
    noisy = 1.0 + np.where(np.arange(steps.size) % 2 == 0, 0.2, -0.2)  # a large zigzag ending in a fall
    noisy[-1] -= 0.1
    check = stats.convergence(steps, noisy)
    assert not check.converged and check.drop > 0.005 * check.level and check.slope.low < 0 < check.slope.high
    assert check.describe().startswith("too noisy to tell: fell ")
    bound = f"allows a fall of up to {check.drop_high:.2g}, over the 0.5% that counts)"
    assert check.describe().endswith(bound)
    # the largest fall the interval allows is the slope's low end times the tail's length
    assert check.drop_high == pytest.approx(-check.slope.low * (2000 - 1600))


def test_convergence_shown_flat_needs_the_whole_interval_under_the_tolerance():
    """A fall within noise is not shown flat unless even the interval's largest fall is negligible: the
    same small zigzag is too noisy to tell around a level of 1 and converged around a level of 100."""
    steps = np.arange(100, 2100, 100)
    zigzag = np.where(np.arange(steps.size) % 2 == 0, 0.02, -0.02)
    small, large = stats.convergence(steps, 1.0 + zigzag), stats.convergence(steps, 100.0 + zigzag)
    assert small.unresolved and not small.converged and not small.still_falling
    assert large.converged and not large.unresolved
    assert small.drop_high == pytest.approx(large.drop_high)  # the same interval; a different tolerance
    assert stats.convergence(steps, 1.0 + zigzag, floor=1.0).converged  # under an absolute floor


def test_convergence_of_a_score_to_raise_mirrors_the_loss_check():
    steps = np.arange(100, 2100, 100)
    rising = stats.convergence(steps, 0.2 + steps / 10000, higher_is_better=True)
    mirrored = stats.convergence(steps, -(0.2 + steps / 10000))
    assert rising.still_falling and mirrored.still_falling  # still improving, in either direction
    assert rising.drop > 0 and rising.drop == pytest.approx(mirrored.drop)
    assert rising.level == pytest.approx(-mirrored.level)
    assert rising.slope.value == pytest.approx(1e-4)  # the slope in the curve's own units
    assert rising.describe() == "still rising: rose 0.04 over steps 1600-2000 (11% of 0.38)"
    falling = stats.convergence(steps, 0.6 - steps / 10000, higher_is_better=True)
    assert falling.converged and falling.describe().startswith("converged: fell 0.04 ")
    noisy = 0.5 + np.where(np.arange(steps.size) % 2 == 0, -0.2, 0.2)  # a zigzag ending in a rise
    noisy[-1] += 0.1
    check = stats.convergence(steps, noisy, higher_is_better=True)
    assert check.unresolved and check.drop > 0
    assert check.describe().startswith("too noisy to tell: rose ")
    assert "allows a rise of up to" in check.describe()
    assert check.drop_high == pytest.approx(stats.convergence(steps, -noisy).drop_high)  # mirrored


def test_a_checks_record_holds_its_state_and_numbers_for_a_chapter_to_assert_on():
    steps = np.arange(100, 2100, 100)
    zigzag = 1.0 + np.where(np.arange(steps.size) % 2 == 0, 0.02, -0.02)
    check = stats.convergence(steps, zigzag)
    record = check.record()
    assert record["converged"] is False and record["convergence"] == check.describe()
    fields = record["convergence_check"]
    assert fields["state"] == "too noisy to tell" == check.state
    assert [fields[k] for k in ("drop", "drop_high", "level")] == [check.drop, check.drop_high, check.level]
    assert fields["negligible"] == pytest.approx(0.005 * check.level) and fields["tail_steps"] == [1600, 2000]
    assert json.loads(json.dumps(record)) == record  # JSON-able, as the artifact cache stores it
    named = stats.convergence(steps, 2.0 - steps / 4000, higher_is_better=True).record("success_")
    assert set(named) == {"success_converged", "success_convergence", "success_convergence_check"}
    assert named["success_convergence_check"]["state"] == "converged"  # a falling score is not improving


def test_a_curve_that_did_not_move_says_so():
    steps = np.arange(100, 2100, 100)
    flat = stats.convergence(steps, np.full(steps.size, 0.5))
    assert flat.converged and flat.drop == 0
    assert flat.describe() == "converged: changed by 0 over steps 1600-2000 (0% of 0.5)"


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 2"):
        stats.over_seeds([1.0])
    with pytest.raises(ValueError, match="non-finite"):
        stats.over_seeds([1.0, float("nan")])
    with pytest.raises(ValueError, match="equally many"):
        stats.paired([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        stats.exact(float("inf"))


def _square_plus(seed, offset):
    return seed * seed + offset


def test_over_seeds_runner_keeps_seed_order_and_rejects_duplicates():
    from paperlab.experiments import over_seeds as run_over_seeds

    assert run_over_seeds(_square_plus, [3, 1, 2], 10, workers=1) == [19, 11, 14]
    with pytest.raises(ValueError, match="distinct"):
        run_over_seeds(_square_plus, [1, 1], 0, workers=1)


def test_train_result_convergence_needs_evaluations():
    from paperlab.train import TrainResult

    falling = TrainResult(evals=[{"step": s, "val_loss": 2 - s / 1000} for s in range(100, 1100, 100)])
    assert falling.convergence().still_falling
    with pytest.raises(ValueError, match="eval_every"):
        TrainResult(evals=[{"step": 1, "val_loss": 1.0}]).convergence()


def test_difference_is_a_minus_b_with_welchs_interval():
    from scipy.stats import ttest_ind  # an independent implementation of Welch's interval
    a, b = [1.0, 2.0, 3.0], [0.0, 0.0, 1.0]
    est = stats.difference(a, b)
    welch = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert est.value == pytest.approx(5 / 3) and est.n == 3
    assert (est.low, est.high) == pytest.approx((welch.low, welch.high))  # (-0.382, 3.715)
    flipped = stats.difference(b, a)
    assert (flipped.value, flipped.low, flipped.high) == pytest.approx((-est.value, -est.high, -est.low))


def test_proportion_is_the_wilson_interval():
    z = 1.959963984540054  # the normal's 97.5% quantile
    n, p = 10, 0.3
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    est = stats.proportion(3, 10)
    assert est.value == 0.3  # its interval: 0.108 to 0.603
    assert (est.low, est.high) == pytest.approx((centre - half, centre + half))


def test_against_null_uses_the_nulls_mean_and_quantiles():
    est = stats.against_null(5.0, [0.0] * 30 + [10.0] * 10)  # mean 2.5; 2.5% quantile 0, 97.5% quantile 10
    assert (est.value, est.low, est.high) == (2.5, -5.0, 5.0)


def test_convergence_fits_the_last_fifth_with_n_minus_2_degrees_of_freedom():
    steps = np.arange(0, 2600, 100)
    assert stats.convergence(steps, 2.0 - steps / 4000).tail_steps == (2000, 2500)  # from 2500 - 0.2 * 2500
    assert stats.convergence(steps, 2.0 - steps / 4000).slope.n == 6
    # 20 evaluations, 4 in the last fifth: the last five are fitted; a zigzag around a flat line
    steps = np.arange(100, 2100, 100)
    values = 1.0 + np.where(np.arange(steps.size) % 2 == 0, 0.02, -0.02)
    x, y = steps[-5:].astype(float), values[-5:]
    sxx = ((x - x.mean()) ** 2).sum()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    residuals = y - y.mean() - slope * (x - x.mean())
    se = math.sqrt((residuals**2).sum() / (5 - 2) / sxx)
    half = 3.182446305284263 * se  # t_{0.975, 3}
    check = stats.convergence(steps, values)
    assert check.tail_steps == (1600, 2000) and check.slope.n == 5
    assert (check.slope.low, check.slope.high) == pytest.approx((slope - half, slope + half))


def test_bootstrap_keeps_its_value_inside_its_interval():
    # every resample repeats some item, so each resample's statistic is below the full sample's 1.0
    est = stats.bootstrap(np.arange(50.0), lambda v: len(np.unique(v)) / v.size)
    assert est.value == 1.0 and est.low <= est.high == 1.0


def test_scaled_by_a_negative_factor_swaps_the_ends():
    est = stats.Estimate(1.0, 0.5, 2.0, 3, "m").scaled(-1)
    assert (est.value, est.low, est.high) == (-1.0, -2.0, -0.5)
    percent = stats.Estimate(1.0, 0.5, 2.0, 3, "m").scaled(100)
    assert (percent.value, percent.low, percent.high) == (100.0, 50.0, 200.0)


def test_a_table_of_runs_is_not_taken_for_one_value_per_seed():
    with pytest.raises(ValueError, match=r"flat sequence .* shape \(2, 2\)"):
        stats.over_seeds([[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ValueError, match="flat sequence"):
        stats.paired(np.ones((3, 1)), np.zeros((3, 1)))
    assert stats.over_seeds(np.array([0.1, 0.2, 0.3])).n == 3


def test_an_estimate_holds_its_value_inside_its_interval():
    with pytest.raises(ValueError, match="outside its interval"):
        stats.Estimate(0.5, 0.0, 0.4, 3, "t")
    with pytest.raises(ValueError, match="outside its interval"):
        stats.Estimate(float("nan"), 0.0, 0.4, 3, "t")
    assert stats.Estimate(0.4, 0.0, 0.4, 3, "t").value == 0.4
    third = stats.over_seeds([0.1, 0.1, 0.1])  # zero width: the mean is both ends, whatever its rounding
    assert third.low <= third.value <= third.high
