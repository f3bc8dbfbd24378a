"""The book build's own logic: table of contents, staging, the offline (Sphinx) book, convert's safety."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import sphinx_site  # noqa: E402
import stage  # noqa: E402

import book  # noqa: E402

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
TOOL = [sys.executable, str(book.ROOT / "tools" / "book.py")]


def test_every_chapter_in_the_toc_exists_and_every_chapter_is_in_the_toc():
    listed = {c.path.resolve() for c in book.chapters()}
    assert all(path.is_file() for path in listed)
    on_disk = {p.resolve() for p in (book.ROOT / "book").glob("*.md")}
    assert on_disk == listed


def test_every_code_cells_options_are_valid_yaml():
    """mystmd reads a cell's ``#|`` lines as YAML and refuses the page if they are not ("Invalid code cell
    metadata", no line given): a caption with ": " in it is the usual cause. Name the cell here instead."""
    import yaml

    problems = []
    for chapter in book.chapters():
        lines = chapter.path.read_text(encoding="utf-8").split("\n")
        for i, line in enumerate(lines):
            if not line.startswith("```{code-cell}"):
                continue
            options = []
            for option in lines[i + 1:]:
                if not option.startswith("#|"):
                    break
                options.append(option[3:] if option.startswith("#| ") else option[2:])
            try:
                yaml.safe_load("\n".join(options))
            except yaml.YAMLError as error:
                problems.append(f"{chapter.path.name}:{i + 2}: {str(error).splitlines()[0]}")
    assert not problems, ("cell options that are not YAML (quote a caption with ': ' in it): "
                          + "; ".join(problems))


# --------------------------------------------------------------------------------------------------
# Staging


def _markdown_output(text, kind="display_data"):
    if kind == "execute_result":
        return nbformat.v4.new_output(kind, data={"text/markdown": text, "text/plain": "<Markdown>"},
                                      execution_count=1)
    return nbformat.v4.new_output(kind, data={"text/markdown": text, "text/plain": "<Markdown>"})


def _chapter(title="Chapter A"):
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("(sec-a)=\n## Section A\n\nSee [](#fig-a) and [](#sec-b)."),
        nbformat.v4.new_code_cell("#| label: fig-a\n#| caption: A figure.\nplot()", outputs=[
            nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})]),
        nbformat.v4.new_code_cell("scorecard(rows)", metadata={"tags": ["hide-input"]}, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="before\n"),
            _markdown_output("| a | b |\n|---|---|\n| 1 | $x^2$ |"),
            _markdown_output("**second**", "execute_result")]),
        nbformat.v4.new_code_cell("hidden()", metadata={"tags": ["remove-output"]},
                                  outputs=[_markdown_output("not moved")]),
    ], metadata={"title": title, "subtitle": "Its subtitle", "jupytext": {"formats": "md:myst"},
                 "kernelspec": {"name": "python3", "display_name": "Python 3"}})


def test_markdown_outputs_become_markdown_cells_in_order_after_their_cell():
    staged = stage.stage(_chapter(), "myst")
    sources = [c.source for c in staged.cells]
    code = staged.cells[3]
    assert code.source == "scorecard(rows)" and [o.output_type for o in code.outputs] == ["stream"]
    assert sources[4] == "| a | b |\n|---|---|\n| 1 | $x^2$ |" and sources[5] == "**second**"
    assert staged.cells[4].cell_type == "markdown"
    assert staged.cells[6].outputs[0].data["text/markdown"] == "not moved"  # remove-output: left alone


def test_front_matter_becomes_the_first_cell_for_each_renderer():
    myst = stage.stage(_chapter(), "myst")
    assert myst.cells[0].source == "---\ntitle: Chapter A\nsubtitle: Its subtitle\n---"
    assert "jupytext" not in myst.metadata and "title" not in myst.metadata
    sphinx = stage.stage(_chapter(), "sphinx")
    assert sphinx.cells[0].source == "# Chapter A\n\n{.paperlab-subtitle}\nIts subtitle"


def test_the_input_notebook_is_not_modified():
    chapter = _chapter()
    before = nbformat.writes(chapter)
    stage.stage(chapter, "sphinx")
    assert nbformat.writes(chapter) == before


def test_figure_options_become_myst_nb_figure_metadata_for_sphinx():
    staged = stage.stage(_chapter(), "sphinx")
    figure = staged.cells[2]
    assert figure.source == "plot()"
    assert figure.metadata["mystnb"]["figure"] == {"name": "fig-a", "caption": "A figure."}
    assert stage.stage(_chapter(), "myst").cells[2].source.startswith("#| label: fig-a")


def test_a_figure_cell_with_two_displays_is_refused():
    chapter = _chapter()
    chapter.cells[1].outputs.append(chapter.cells[1].outputs[0])
    with pytest.raises(ValueError, match="fig-a"):
        stage.stage(chapter, "sphinx")


def test_an_object_repr_value_is_dropped_so_a_figure_keeps_one_output():
    chapter = _chapter()
    legend = nbformat.v4.new_output("execute_result", execution_count=5,
                                    data={"text/plain": "<matplotlib.legend.Legend at 0x7f1d15f512d0>"})
    value = nbformat.v4.new_output("execute_result", execution_count=6, data={"text/plain": "0.25"})
    chapter.cells[1].outputs.insert(0, legend)
    chapter.cells[3].outputs = [value]
    staged = stage.stage(chapter, "sphinx")
    assert [o.output_type for o in staged.cells[2].outputs] == ["display_data"]  # the figure alone
    assert staged.cells[2].metadata["mystnb"]["figure"]["name"] == "fig-a"
    assert any(o.get("data", {}).get("text/plain") == "0.25" for c in staged.cells if c.cell_type == "code"
               for o in c.outputs)  # a value that says something stays


def test_an_unexecuted_figure_keeps_its_number_with_a_placeholder():
    chapter = _chapter()
    chapter.cells[1].outputs = []
    figure = stage.stage(chapter, "sphinx").cells[2]
    assert figure.outputs[0].data["text/plain"] == stage.NOT_DRAWN


def test_figure_references_become_numrefs_for_sphinx_only_for_figures():
    staged = stage.figure_refs_to_numref(stage.stage(_chapter(), "sphinx"), {"fig-a"})
    assert "See {numref}`fig-a` and [](#sec-b)." in staged.cells[1].source
    assert stage.figure_labels(_chapter()) == {"fig-a"}


def _plotly_chapter():
    import plotly.graph_objects as go

    figure = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    html = figure.to_html(full_html=False, include_plotlyjs=True)
    data = {stage.PLOTLY_MIME: figure.to_plotly_json(), "text/html": html}
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "fig", outputs=[nbformat.v4.new_output("display_data", data=data)])])


def test_plotly_keeps_one_copy_per_renderer():
    inlined = len(_plotly_chapter().cells[0].outputs[0].data["text/html"])
    myst = stage.stage(_plotly_chapter(), "myst").cells[0].outputs[0].data
    assert set(myst) == {stage.PLOTLY_MIME}  # mystmd draws from the JSON
    sphinx = stage.stage(_plotly_chapter(), "sphinx").cells[0].outputs[0].data
    assert set(sphinx) == {"text/html"} and "plotly-graph-div" in sphinx["text/html"]
    assert len(sphinx["text/html"]) < inlined / 100  # plotly.js is not inlined


# --------------------------------------------------------------------------------------------------
# Table of contents for the renderers


TOC = [
    {"file": "book/00-a.md"},
    {"title": "Part one", "children": [{"file": "book/01-b.md"}]},
    {"title": "Empty part", "children": []},
]


def test_empty_parts_are_left_out_of_the_sphinx_toctree():
    root, groups = sphinx_site.toc_parts(TOC)
    assert root == "book/00-a.md" and groups == [("Part one", ["book/01-b.md"])]
    text = sphinx_site.toctree_markdown(TOC, lambda f: Path(f).stem)
    assert ":caption: Part one" in text and "01-b" in text and "Empty part" not in text


def test_nested_parts_are_refused():
    with pytest.raises(ValueError, match="nests parts"):
        sphinx_site.toc_parts([{"file": "a.md"},
                               {"title": "P", "children": [{"title": "Q", "children": []}]}])


def test_sphinx_settings_come_from_myst_yml():
    config = book.read_config()
    settings = sphinx_site.settings(config)
    assert settings["html_theme"] == "sphinx_book_theme"
    assert settings["html_theme_options"]["logo"]["text"] == config["site"]["options"]["logo_text"]
    assert settings["numfig"] and settings["nb_execution_mode"] == "off"
    assert settings["nb_ipywidgets_js"] == {}  # its default loads from a CDN


def test_jupyter_book_stage_drops_empty_parts_and_keeps_the_downloaded_theme(tmp_path):
    config = {"version": 1, "project": {"toc": TOC}, "site": {"template": "book-theme"}}
    theme = tmp_path / "_build" / "templates" / "site" / "theme.txt"
    theme.parent.mkdir(parents=True)
    theme.write_text("downloaded")
    (tmp_path / "_build" / "html").mkdir()
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "old.ipynb").write_text("{}")
    notebooks = {"00-a": _chapter(), "01-b": _chapter("B")}
    book.stage_myst(notebooks, config, tmp_path)
    assert theme.read_text() == "downloaded"
    assert not (tmp_path / "_build" / "html").exists() and not (tmp_path / "book" / "old.ipynb").exists()
    staged = book.yaml.safe_load((tmp_path / "myst.yml").read_text())
    assert staged["project"]["toc"] == [{"file": "book/00-a.ipynb"},
                                        {"title": "Part one", "children": [{"file": "book/01-b.ipynb"}]}]
    first = nbformat.read(tmp_path / "book" / "01-b.ipynb", as_version=4).cells[0]
    assert first.source.startswith("---\ntitle: B")


@pytest.mark.slow
def test_jupyter_book_reads_the_staged_notebooks_without_warnings(tmp_path):
    """As far as offline allows (mystmd's content step; the theme step needs the web)."""
    import json

    config = {"version": 1, "project": {"title": "Small", "toc": TOC,
                                        "numbering": {"figure": True, "equation": True}},
              "site": {"template": "book-theme"}}
    second = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("(sec-b)=\n## Section B")],
                                      metadata={"title": "B"})
    book.stage_myst({"00-a": _chapter(), "01-b": second}, config, tmp_path)
    proc = subprocess.run(book.jupyter_book() + ["build", "--site", "--strict"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert "Built 2 pages" in output and not book.MYST_WARNING.search(output), output
    pages = (tmp_path / "_build" / "site" / "content").glob("*.json")
    content = json.dumps([json.loads(page.read_text()) for page in pages])
    assert '"type": "table"' in content  # the scorecard output, now a Markdown cell: a real table
    assert '"type": "crossReference"' in content


class _Proc:
    def __init__(self, returncode, stdout):
        self.returncode, self.stdout, self.stderr = returncode, stdout, ""


def test_jupyter_book_falls_back_offline_and_fails_on_content_warnings(tmp_path, monkeypatch):
    monkeypatch.setattr(book, "JB_STAGE", tmp_path / "stage")
    notebooks = {c.stem: _chapter(c.stem) for c in book.chapters()}
    config = book.read_config()
    offline = "request to https://api.mystmd.org/templates failed, reason: getaddrinfo ENOTFOUND"
    monkeypatch.setattr(book.subprocess, "run", lambda *a, **k: _Proc(1, offline))
    built, why = book.render_jupyter_book(notebooks, config)
    assert not built and why == "its theme could not be downloaded (offline)"
    warning = '⚠️ book/02-ssd.ipynb No target for internal reference "#nowhere" was found'
    monkeypatch.setattr(book.subprocess, "run", lambda *a, **k: _Proc(1, warning))
    with pytest.raises(book.BookError, match="#nowhere"):
        book.render_jupyter_book(notebooks, config)


# --------------------------------------------------------------------------------------------------
# The offline book, built for two small chapters


def _small_book(tmp_path):
    first = _chapter("Chapter A")
    first.cells[0].source += "\n\n$$\na = b\n$$"
    second = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("(sec-b)=\n## Section B\n\nBack to [](#sec-a); see [](#fig-b)."),
        nbformat.v4.new_code_cell("#| label: fig-b\n#| caption: Another.\nplot()", outputs=[
            nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})]),
    ], metadata={"title": "Chapter B", "kernelspec": {"name": "python3", "display_name": "Python 3"}})
    second.cells.append(_plotly_chapter().cells[0])
    config = {"project": {"title": "Small book", "toc": TOC, "numbering": {"figure": True, "equation": True}},
              "site": {"options": {"logo_text": "small"}}}
    src = book.stage_sphinx({"00-a": first, "01-b": second}, config, tmp_path / "src")
    return sphinx_site.build(src, tmp_path / "html", tmp_path / "doctrees")


@pytest.mark.slow
def test_offline_book_has_sidebar_references_tables_and_nothing_from_the_web(tmp_path):
    rc, warnings, output = _small_book(tmp_path)
    assert rc == 0 and warnings == [], output
    index = (tmp_path / "html" / "index.html").read_text()
    second = (tmp_path / "html" / "01-b.html").read_text()
    # the sidebar lists the part and its chapter on every page; prev/next links
    for page in (index, second):
        assert re.search(r'<p[^>]*class="caption"[^>]*><span class="caption-text">Part one</span>', page)
        assert 'href="01-b.html"' in page or 'href="#"' in page
    assert 'class="right-next"' in index and 'class="left-prev"' in second
    # cross-references resolved within and across chapters; figures counted per chapter
    assert re.search(r'href="01-b.html#sec-b"[^>]*><span class="std std-ref">Section B</span>', index)
    assert re.search(r'href="index.html#sec-a"[^>]*><span class="std std-ref">Section A</span>', second)
    assert re.search(r'href="#fig-a"[^>]*><span class="std std-numref">Figure 1</span>', index)
    assert re.search(r'href="#fig-b"[^>]*><span class="std std-numref">Figure 1</span>', second)
    # the Markdown output is a real table (with math), its input collapsed; numbered equation
    assert re.search(r"<table[^>]*>.*<td><p><span class=\"math[^>]*>\\\(x\^2\\\)</span>", index, re.S)
    assert re.search(r'<details class="[^"]*hide above-input">', index)
    assert '<span class="eqno">(1)' in index
    # search, local MathJax, plotly.js only where a plotly figure is drawn, no request leaves the machine
    assert (tmp_path / "html" / "searchindex.js").is_file()
    assert "paperlab-search.js" in (tmp_path / "html" / "search.html").read_text()
    assert "_static/mathjax/tex-chtml.js" in index
    assert "plotly.min.js" in second and "plotly.min.js" not in index
    for page in (index, second):
        assert not re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(?:https?:)?//', page)


# --------------------------------------------------------------------------------------------------
# convert: never deletes what it did not write; one-line errors


def _run(*args, cwd=None):
    return subprocess.run(TOOL + list(args), capture_output=True, text=True, cwd=cwd, timeout=300)


def test_convert_writes_notebooks_and_refuses_folders_it_does_not_own(tmp_path):
    out = tmp_path / "nb"
    assert _run("convert", str(out)).returncode == 0
    names = sorted(p.name for p in out.glob("*.ipynb"))
    assert names == sorted(f"{c.stem}.ipynb" for c in book.chapters())
    assert _run("convert", str(out)).returncode == 0  # its own folder: rewritten
    (out / "notes.txt").write_text("mine")
    refused = _run("convert", str(out))
    assert refused.returncode == 2 and "notes.txt" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert (out / "notes.txt").read_text() == "mine"


def test_convert_refuses_the_source_folder_and_the_repository():
    sources = {p: p.read_bytes() for p in (book.ROOT / "book").glob("*.md")}
    for target in ("book", "."):
        refused = _run("convert", target, cwd=book.ROOT)
        assert refused.returncode == 2 and "refusing" in refused.stderr
    assert {p: p.read_bytes() for p in (book.ROOT / "book").glob("*.md")} == sources


def _with_missing_chapter(monkeypatch):
    config = book.read_config()
    config["project"]["toc"].append({"title": "Later", "children": [{"file": "book/99-missing.md"}]})
    monkeypatch.setattr(book, "read_config", lambda: config)


def test_convert_names_a_missing_chapter_before_writing(tmp_path, monkeypatch, capsys):
    _with_missing_chapter(monkeypatch)
    assert book.main(["convert", str(tmp_path / "nb")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "book.py convert: myst.yml lists book/99-missing.md, which does not exist"
    assert not (tmp_path / "nb").exists()


def test_execute_reports_a_missing_chapter_before_executing_any(monkeypatch, capsys):
    _with_missing_chapter(monkeypatch)
    executed = []
    monkeypatch.setattr(book, "execute_chapter", lambda chapter, timeout: executed.append(chapter))
    assert book.main(["execute"]) == 2
    assert executed == [] and "book/99-missing.md" in capsys.readouterr().err


def test_a_chapter_that_fails_does_not_stop_the_others(monkeypatch, capsys):
    class CellTimeoutError(Exception):  # nbclient's, by name
        pass

    chapters = book.existing_chapters()[:3]
    monkeypatch.setattr(book, "existing_chapters", lambda: chapters)
    monkeypatch.setattr(book, "EXECUTED", Path("/nonexistent/never-written"))  # no timings.json on a failure
    executed = []

    def execute_chapter(chapter, timeout):
        if chapter == chapters[1]:
            raise CellTimeoutError(f"A cell timed out after {timeout} seconds.\nHere is a preview")
        executed.append(chapter)
        return None, 1.0, False

    monkeypatch.setattr(book, "execute_chapter", execute_chapter)
    assert book.main(["execute", "--timeout", "7"]) == 1
    assert executed == [chapters[0], chapters[2]]  # the one after the failure ran too
    err = capsys.readouterr().err
    assert f"not executed: {chapters[1].name} (CellTimeoutError: A cell timed out after 7 seconds.)" in err
    assert "resumes" in err and "TIMEOUT=" in err


def test_a_timeout_that_is_not_a_positive_number_is_refused(capsys):
    for value in ("0", "-5", "ten"):
        with pytest.raises(SystemExit):
            book.main(["execute", "--timeout", value])
        assert "is not a positive number of seconds" in capsys.readouterr().err


def test_an_unknown_chapter_lists_the_chapters(capsys):
    assert book.main(["html", "--only", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no chapter 'nope'" in err and "01-toolkit" in err


# --------------------------------------------------------------------------------------------------
# serve


def test_serve_answers_on_localhost_only(tmp_path):
    (tmp_path / "index.html").write_text("<p>the book</p>")
    server = book.make_server(tmp_path, 0)
    host, port = server.server_address[:2]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert b"the book" in response.read()
    finally:
        server.shutdown()
        server.server_close()


def test_the_staging_check_names_an_executed_chapter_whose_figure_cell_shows_two_outputs(tmp_path, capsys):
    bad = _chapter()
    bad.cells[1].outputs.append(bad.cells[1].outputs[0])
    nbformat.write(bad, tmp_path / "02-bad.ipynb")
    nbformat.write(_chapter(), tmp_path / "01-good.ipynb")
    unexecuted = _chapter()
    for cell in unexecuted.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    nbformat.write(unexecuted, tmp_path / "03-not-run.ipynb")
    problems, checked = book.staging_problems(tmp_path)
    assert checked == 2  # the notebook without outputs is not a run to check
    assert len(problems) == 1 and problems[0].startswith("02-bad.ipynb (sphinx)") and "fig-a" in problems[0]
    assert book.check_executed(tmp_path) == 1
    assert "02-bad.ipynb" in capsys.readouterr().out
    assert book.check_executed(tmp_path / "missing") == 0
