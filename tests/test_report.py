import pytest

from paperlab import stats
from paperlab.report import Claim, SingleRunRow, scorecard_markdown, show, summary

GREATER = Claim("A beats B", metric="accuracy (higher is better)", effect="A - B", smallest_effect=0.05)


def estimate(low, high, method="bootstrap over 500 items", n=500):
    return stats.Estimate((low + high) / 2, low, high, n, method)


@pytest.mark.parametrize("low, high, verdict", [
    (0.06, 0.10, "held"),          # wholly beyond the smallest effect
    (0.01, 0.04, "not held"),      # real, but smaller than what counts
    (-0.03, 0.02, "not held"),     # around zero, narrow: an effect that counts is ruled out
    (-0.20, -0.10, "not held"),    # the opposite direction
    (0.02, 0.08, "inconclusive"),  # contains the smallest effect
])
def test_greater_verdicts(low, high, verdict):
    assert GREATER.judge(estimate(low, high), setting="s").verdict == verdict


def test_less_and_within_verdicts():
    less = Claim("loss drops", metric="loss", effect="new - old", smallest_effect=-0.01, direction="less")
    assert less.judge(estimate(-0.05, -0.02), setting="s").verdict == "held"
    assert less.judge(estimate(-0.02, 0.01), setting="s").verdict == "inconclusive"
    assert less.judge(estimate(0.0, 0.01), setting="s").verdict == "not held"
    within = Claim("unchanged", metric="acc", effect="after - before", smallest_effect=0.02,
                   direction="within")
    assert within.judge(estimate(-0.01, 0.015), setting="s").verdict == "held"
    assert within.judge(estimate(-0.01, 0.03), setting="s").verdict == "inconclusive"
    assert within.judge(estimate(0.03, 0.05), setting="s").verdict == "not held"


def test_fewer_than_three_seeds_is_inconclusive_and_says_why():
    row = GREATER.judge(stats.over_seeds([0.5, 0.5001]), setting="2 seeds")
    assert row.verdict == "inconclusive"
    assert any("fewer than 3 seeds" in n for n in row.notes)


def test_planted_untestable_and_unconverged_are_marked():
    planted = Claim("simplex", metric="m", effect="e", smallest_effect=0.0, planted=True)
    row = planted.judge(estimate(1, 2), setting="s", converged=False)
    text = scorecard_markdown([row])
    assert "(planted)" in text and "not a reproduction" in text and "runs not converged" in text
    untestable = GREATER.untestable("needs a GPU")
    assert untestable.verdict == "not testable here" and untestable.held is None
    assert summary([row, untestable]) == "1 held, 1 not testable here (1 planted)"


def test_table_shape_escapes_pipes_and_legacy_rows():
    rows = [GREATER.judge(estimate(0.06, 0.1), setting="a | b"),
            SingleRunRow("old claim", "one run", "0.3", True)]
    lines = scorecard_markdown(rows).splitlines()
    assert len(lines) == 4 and lines[1] == "|---|---|---|---|---|"
    assert "a \\| b" in lines[2] and "**held**" in lines[2]
    assert "single run, not judged: yes" in lines[3]
    assert "1 single-run rows not judged" in summary(rows)
    assert "effect = A - B, counts if > 0.05" in lines[2]


def test_show_displays_every_row_wherever_it_is_called(monkeypatch, capsys):
    rows = [GREATER.judge(estimate(0.06, 0.1), setting="first"),
            GREATER.judge(estimate(0.1, 0.2), setting="second")]
    assert show(rows[0]) is None  # outside IPython: printed
    printed = capsys.readouterr().out
    assert "first" in printed and "**held**" in printed
    shown = []
    import IPython
    import IPython.display

    monkeypatch.setattr(IPython, "get_ipython", lambda: object())  # as in a notebook's kernel
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    for row in rows:  # in a loop, and not the cell's last value: each row must still be displayed
        assert show(row) is None
    assert [type(obj).__name__ for obj in shown] == ["Markdown", "Markdown"]
    assert "first" in shown[0].data and "second" in shown[1].data


def test_bad_claims_and_rows_are_rejected():
    with pytest.raises(ValueError, match="direction"):
        Claim("c", "m", "e", 0.1, direction="up")
    with pytest.raises(ValueError, match="within"):
        Claim("c", "m", "e", 0.0, direction="within")
    with pytest.raises(ValueError, match="metric"):
        Claim("c", "", "e", 0.1)
    with pytest.raises(TypeError, match="Estimate"):
        GREATER.judge(0.5, setting="s")
    with pytest.raises(ValueError, match="at least one row"):
        scorecard_markdown([])
    with pytest.raises(TypeError, match="report.Row"):
        scorecard_markdown(["not a row"])
    with pytest.raises(ValueError, match="Claim.planted must be True or False"):
        Claim("c", "m", "e", 0.1, planted="no")  # a non-empty string would have counted as planted
    with pytest.raises(ValueError, match="Claim.fmt must be a format spec"):
        Claim("c", "m", "e", 0.1, fmt=5)
    with pytest.raises(ValueError, match="converged must be True, False or None"):
        GREATER.judge(estimate(0.06, 0.1), setting="s", converged="no")  # would have been ignored
    with pytest.raises(ValueError, match="say why"):
        GREATER.untestable(5)
    import numpy as np
    assert GREATER.judge(estimate(0.06, 0.1), setting="s", converged=np.bool_(False)).notes == (
        "runs not converged",)


def test_within_is_not_held_on_either_side():
    within = Claim("unchanged", metric="acc", effect="after - before", smallest_effect=0.02,
                   direction="within")
    assert within.judge(estimate(-0.05, -0.03), setting="s").verdict == "not held"
    assert within.judge(estimate(-0.03, 0.01), setting="s").verdict == "inconclusive"


def test_three_seeds_are_enough_and_two_paired_or_welch_seeds_are_not():
    assert GREATER.judge(stats.over_seeds([0.2, 0.21, 0.22]), setting="s").verdict == "held"
    for two in (stats.paired([0.5, 0.5001], [0.1, 0.1]), stats.difference([0.5, 0.5001], [0.1, 0.1001])):
        row = GREATER.judge(two, setting="s")
        assert row.verdict == "inconclusive" and any("fewer than 3 seeds" in n for n in row.notes), two.method


def test_convergence_unknown_or_shown_adds_no_mark_and_inconclusive_is_neither():
    assert GREATER.judge(estimate(0.06, 0.1), setting="s").notes == ()  # converged=None: not checked
    assert GREATER.judge(estimate(0.06, 0.1), setting="s", converged=True).notes == ()
    assert GREATER.judge(estimate(0.06, 0.1), setting="s", converged=False).notes != ()
    inconclusive = GREATER.judge(estimate(0.02, 0.08), setting="s")
    assert inconclusive.verdict == "inconclusive" and inconclusive.held is None
    assert GREATER.judge(estimate(0.06, 0.1), setting="s").held is True
    assert GREATER.judge(estimate(-0.1, 0.01), setting="s").held is False
