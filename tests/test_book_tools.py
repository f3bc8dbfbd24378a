"""The book build's own logic: table of contents, MyST -> nbconvert transforms of the offline rendering."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import offline_html  # noqa: E402

import book  # noqa: E402


def test_every_chapter_in_the_toc_exists_and_every_chapter_is_in_the_toc():
    listed = {c.path.resolve() for c in book.chapters()}
    assert all(path.is_file() for path in listed)
    on_disk = {p.resolve() for p in (book.ROOT / "book").glob("*.md")}
    assert on_disk == listed


def test_cell_options_are_split_from_code():
    options, code = offline_html.cell_options("#| label: fig-a\n#| caption: A caption.\nprint(1)")
    assert options == {"label": "fig-a", "caption": "A caption."} and code == "print(1)"


def _notebook():
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("(sec-a)=\n## Section A\n\nSee [](#fig-x) and [](#sec-b)."),
        nbformat.v4.new_code_cell("#| label: fig-x\n#| caption: Loss.\nplot()"),
        nbformat.v4.new_markdown_cell(":::{note}\nBe careful.\n:::"),
    ], metadata={"title": "Chapter"})


def test_labels_resolve_within_and_across_chapters():
    labels = offline_html.collect_labels("02-a", _notebook())
    labels["sec-b"] = ("03-b", "Section B")
    assert labels["sec-a"] == ("02-a", "Section A") and labels["fig-x"] == ("02-a", "Figure 1")
    prepared = offline_html.prepare(_notebook(), "02-a", labels)
    sources = [c.source for c in prepared.cells]
    assert sources[0] == "# Chapter"
    assert '<a id="sec-a"></a>' in sources[1]
    assert "[Figure 1](#fig-x)" in sources[1] and "[Section B](03-b.html#sec-b)" in sources[1]
    assert sources[2] == "plot()"  # options stripped from the shown code
    assert '<a id="fig-x"></a>' in sources[3] and "**Figure 1.** Loss." in sources[3]
    assert sources[4].startswith("> **Note.**") and "> Be careful." in sources[4]


def test_unknown_reference_is_left_alone():
    assert offline_html.transform_markdown("[](#nowhere)", "a", {}) == "[](#nowhere)"
