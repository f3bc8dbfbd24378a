"""Staging: turn an executed chapter into the notebook a renderer reads.

Both renderings (Jupyter Book 2, and Sphinx with myst-nb offline) read the same executed notebooks
after these steps:

- every Markdown output (IPython ``Markdown(...)``, each scorecard) moves into a Markdown cell right after
  its code cell, so that it renders as real Markdown: tables, emphasis, math (mystmd does not parse
  ``text/markdown`` outputs, and myst-nb parses them without MyST's extensions);
- a plotly output keeps one copy of the figure: the plotly JSON for mystmd, which draws it; for Sphinx a
  small ``<div>`` drawn by one shared copy of plotly.js (``PLOTLY_JS`` in the site's ``_static``), instead
  of the ~5 MB self-contained HTML that every visit would otherwise fetch;
- the front matter (``title``, ``subtitle``) becomes a leading Markdown cell (mystmd reads front matter
  from there, not from notebook metadata; Sphinx gets the title as the page heading);
- a cell's ``Out[]`` value that is only an object's default repr (``<matplotlib.legend.Legend at 0x...>``,
  left by a cell that ends with a call returning an artist) is dropped: it says nothing to a reader and
  would be a figure cell's second output;
- for Sphinx, the ``#| label:`` / ``#| caption:`` lines of a figure cell become myst-nb's figure options.

Everything here is a pure function of the notebook, so it is tested without building a site.
"""

from __future__ import annotations

import copy
import re

import nbformat
import yaml

PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTLY_JS = "plotly.min.js"  # in the Sphinx site's _static, added to the pages that draw a plotly figure
CELL_OPTION = re.compile(r"^#\|\s*(?P<key>[\w-]+):\s*(?P<value>.*)$")
OBJECT_REPR = re.compile(r"^<[\w.]+(?: object)? at 0x[0-9a-f]+>$")
NOT_DRAWN = "(not drawn yet: this chapter has not been executed; `make book` executes it)"
REMOVED = {"remove-cell", "remove-output"}  # tags whose outputs are not shown anyway


def cell_options(source: str) -> tuple[dict[str, str], str]:
    """Split the ``#| key: value`` header of a code cell from its code."""
    options, lines = {}, source.splitlines()
    while lines and (match := CELL_OPTION.match(lines[0])):
        options[match["key"]] = match["value"].strip()
        lines.pop(0)
    return options, "\n".join(lines)


def _markdown_of(output) -> str | None:
    if output.get("output_type") in ("display_data", "execute_result"):
        return output.get("data", {}).get("text/markdown")
    return None


def markdown_outputs_to_cells(notebook):
    """Move each ``text/markdown`` output into a Markdown cell right after its code cell (in order)."""
    cells = []
    for cell in notebook.cells:
        cells.append(cell)
        if cell.cell_type != "code" or REMOVED & set(cell.metadata.get("tags", [])):
            continue
        moved = [text for output in cell.get("outputs", []) if (text := _markdown_of(output)) is not None]
        if not moved:
            continue
        cell.outputs = [output for output in cell.outputs if _markdown_of(output) is None]
        for text in moved:
            cells.append(nbformat.v4.new_markdown_cell(text.strip("\n"),
                                                       metadata={"paperlab": {"from_output": True}}))
    notebook.cells = cells
    return notebook


def plotly_html(figure_json: dict) -> str:
    """A ``<div>`` that draws the figure with the page's plotly.js (not inlined)."""
    import plotly.io as pio

    return pio.to_html(figure_json, include_plotlyjs=False, full_html=False, validate=False)


def one_plotly_copy(notebook, target: str):
    """Keep one representation of each plotly figure: JSON for mystmd, a light ``<div>`` for Sphinx."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME not in data:
                continue
            if target == "myst":
                data.pop("text/html", None)
            else:
                data["text/html"] = plotly_html(data.pop(PLOTLY_MIME))
    return notebook


def drop_object_reprs(notebook):
    """Remove each ``execute_result`` that is only an object's default repr (``<... at 0x...>``)."""
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.get("outputs", []) if not (
            o.get("output_type") == "execute_result" and set(o.get("data", {})) == {"text/plain"}
            and OBJECT_REPR.match(o["data"]["text/plain"].strip()))]
    return notebook


def front_matter_cell(notebook, target: str):
    """Move ``title`` / ``subtitle`` from the notebook's metadata into a leading Markdown cell."""
    front = {key: notebook.metadata.pop(key) for key in ("title", "subtitle") if key in notebook.metadata}
    if not front:
        return notebook
    if target == "myst":
        text = "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---"
    else:
        text = f"# {front.get('title', '')}"
        if "subtitle" in front:
            text += "\n\n{.paperlab-subtitle}\n" + front["subtitle"]
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell(text))
    return notebook


def figure_options_to_metadata(notebook):
    """``#| label:`` / ``#| caption:`` -> myst-nb's cell metadata ``mystnb.figure`` (name, caption).

    myst-nb wraps each display output of such a cell in a numbered figure with that name, so a cell may
    have only one (a second would repeat the label).
    """
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        options, code = cell_options(cell.source)
        if not options:
            continue
        cell.source = code
        if "label" in options:
            displays = [o for o in cell.get("outputs", []) if o.get("output_type") in
                        ("display_data", "execute_result")]
            if len(displays) > 1:
                raise ValueError(f"cell labelled {options['label']!r} has {len(displays)} display outputs; "
                                 "a figure cell must show exactly one")
            if not displays:  # a chapter shown before it was executed: keep the figure and its number
                cell.outputs = [*cell.get("outputs", []), nbformat.v4.new_output(
                    "display_data", data={"text/plain": NOT_DRAWN})]
            figure = {"name": options["label"]}
            if "caption" in options:
                figure["caption"] = options["caption"]
            cell.metadata.setdefault("mystnb", {})["figure"] = figure
    return notebook


def figure_labels(notebook) -> set[str]:
    """The labels of a notebook's numbered figures (code cells with ``#| label:`` and ``#| caption:``)."""
    labels = set()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            options, _ = cell_options(cell.source)
            if "label" in options and "caption" in options:
                labels.add(options["label"])
        elif "figure" in cell.metadata.get("mystnb", {}):
            figure = cell.metadata["mystnb"]["figure"]
            if "name" in figure and "caption" in figure:
                labels.add(figure["name"])
    return labels


FIGURE_REF = re.compile(r"\[\]\(#(?P<label>[\w.:-]+)\)")


def figure_refs_to_numref(notebook, labels: set[str]):
    """For Sphinx: ``[](#fig-x)`` -> ``{numref}`fig-x` ``, so that it reads "Figure N" (as in Jupyter Book 2)
    rather than the figure's caption."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = FIGURE_REF.sub(
                lambda m: f"{{numref}}`{m['label']}`" if m["label"] in labels else m.group(0), cell.source)
    return notebook


def stage(notebook, target: str):
    """The staged copy of an executed notebook for ``target``: ``"myst"`` (Jupyter Book 2) or ``"sphinx"``."""
    if target not in ("myst", "sphinx"):
        raise ValueError(f"unknown staging target {target!r}: use 'myst' or 'sphinx'")
    notebook = copy.deepcopy(notebook)
    notebook.metadata.pop("jupytext", None)
    markdown_outputs_to_cells(notebook)
    drop_object_reprs(notebook)
    one_plotly_copy(notebook, target)
    if target == "sphinx":
        figure_options_to_metadata(notebook)
        # an unexecuted chapter has no language_info, which myst-nb needs to highlight its code
        language = notebook.metadata.get("kernelspec", {}).get("language", "python")
        notebook.metadata.setdefault("language_info", {"name": language})
    front_matter_cell(notebook, target)
    return notebook
