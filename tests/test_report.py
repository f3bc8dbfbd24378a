import pytest

from paperlab.report import Row, scorecard_markdown


def test_scorecard_table_shape_and_verdicts():
    text = scorecard_markdown([
        Row("loss falls", "300 steps", "2.1 | 2.3", True),
        Row("GPU is faster", "CPU only", "-", None, note="needs a GPU"),
        Row("gap narrows", "3 sizes", "0.2 -> 0.3", False),
    ])
    lines = text.splitlines()
    assert lines[0] == "| paper's claim | our setting | our number | held? |"
    assert len(lines) == 5 and all(line.count(" | ") == 3 for line in lines[2:])
    assert "2.1 \\| 2.3" in lines[2] and lines[2].endswith("| yes |")
    assert "not tested here (needs a GPU)" in lines[3] and "**no**" in lines[4]


def test_empty_scorecard_is_an_error():
    with pytest.raises(ValueError, match="at least one row"):
        scorecard_markdown([])
