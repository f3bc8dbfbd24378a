"""Offline HTML rendering of the executed chapters (used when the Jupyter Book theme cannot be fetched).

nbconvert renders each executed notebook; before that, the MyST constructs the chapters use are turned
into what nbconvert's Markdown understands:

- ``(label)=`` targets become HTML anchors; ``[](#label)`` and ``[text](#label)`` links resolve across
  chapters (section titles, "Figure N" for labelled figures);
- code cells with ``#| label:`` and ``#| caption:`` get a numbered caption under their output;
- admonitions (``:::{note}`` / ```` ```{note} ````) become block quotes with a bold title;
- cells tagged ``hide-input`` / ``remove-input`` / ``remove-cell`` / ``remove-output`` are treated as in
  the Jupyter Book.

Anything else MyST-specific is left as written; CONTRIBUTING.md lists the subset the chapters keep to.
"""

from __future__ import annotations

import copy
import html
import re
import shutil
import subprocess
from pathlib import Path

import nbformat

LABEL_LINE = re.compile(r"^\((?P<label>[A-Za-z0-9_.:-]+)\)=\s*$", re.M)
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
LINK = re.compile(r"\[(?P<text>[^\]]*)\]\(#(?P<label>[A-Za-z0-9_.:-]+)\)")
ADMONITION = re.compile(
    r"^(?P<fence>:::+|```+)\{(?P<kind>note|tip|warning|important|caution|seealso|attention|hint)\}"
    r"[ \t]*(?P<title>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$",
    re.M | re.S,
)
CELL_OPTION = re.compile(r"^#\|\s*(?P<key>[\w-]+):\s*(?P<value>.*)$")

STYLE = """
<style>
 .paperlab-nav { font-family: system-ui, sans-serif; padding: 0.6em 1.2em; background: #f4f6f8;
   border-bottom: 1px solid #d0d7de; display: flex; gap: 1.5em; align-items: baseline; }
 .paperlab-nav a { text-decoration: none; }
 .paperlab-nav .note { margin-left: auto; color: #57606a; font-size: 0.85em; }
 .paperlab-caption { color: #24292f; font-size: 0.95em; margin: 0.2em 0 1.2em 0; }
</style>
"""


def cell_options(source: str) -> tuple[dict[str, str], str]:
    """Split the ``#| key: value`` header of a code cell from its code."""
    options, lines = {}, source.splitlines()
    while lines and (match := CELL_OPTION.match(lines[0])):
        options[match["key"]] = match["value"].strip()
        lines.pop(0)
    return options, "\n".join(lines)


def collect_labels(stem: str, notebook) -> dict[str, tuple[str, str]]:
    """label -> (page stem, link text) for section targets and labelled figures of one chapter."""
    labels: dict[str, tuple[str, str]] = {}
    figure = 0
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            lines = cell.source.splitlines()
            for i, line in enumerate(lines):
                match = LABEL_LINE.match(line)
                if match:
                    following = next((ln for ln in lines[i + 1:] if ln.strip()), "")
                    heading = HEADING.match(following)
                    labels[match["label"]] = (stem, heading.group(2).strip() if heading else match["label"])
        elif cell.cell_type == "code":
            options, _ = cell_options(cell.source)
            if "label" in options and "caption" in options:
                figure += 1
                labels[options["label"]] = (stem, f"Figure {figure}")
    return labels


def _admonition(match: re.Match) -> str:
    title = match["title"].strip() or match["kind"].capitalize()
    body = match["body"].rstrip("\n").splitlines()
    quoted = "\n".join(f"> {line}" if line.strip() else ">" for line in body)
    return f"> **{title}.**\n>\n{quoted}\n"


def transform_markdown(source: str, stem: str, labels: dict[str, tuple[str, str]]) -> str:
    source = ADMONITION.sub(_admonition, source)
    source = LABEL_LINE.sub(lambda m: f'<a id="{m["label"]}"></a>\n', source)

    def link(match: re.Match) -> str:
        label = match["label"]
        if label not in labels:
            return match.group(0)
        page, text = labels[label]
        href = f"#{label}" if page == stem else f"{page}.html#{label}"
        return f"[{match['text'] or text}]({href})"

    return LINK.sub(link, source)


def prepare(notebook, stem: str, labels: dict[str, tuple[str, str]]):
    """A copy of an executed notebook with the MyST constructs made renderable by nbconvert."""
    notebook = copy.deepcopy(notebook)
    cells = []
    title = notebook.metadata.get("title")
    if title:
        header = f"# {title}"
        if notebook.metadata.get("subtitle"):
            header += f"\n\n*{notebook.metadata['subtitle']}*"
        cells.append(nbformat.v4.new_markdown_cell(header))
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = transform_markdown(cell.source, stem, labels)
            cells.append(cell)
        elif cell.cell_type == "code":
            options, code = cell_options(cell.source)
            cell.source = code
            cells.append(cell)
            if "label" in options and "caption" in options:
                number = labels.get(options["label"], (stem, "Figure"))[1]
                caption = transform_markdown(options["caption"], stem, labels)
                cells.append(nbformat.v4.new_markdown_cell(
                    f'<a id="{options["label"]}"></a>\n\n<div class="paperlab-caption">\n\n'
                    f"**{number}.** {caption}\n\n</div>"
                ))
        else:
            cells.append(cell)
    notebook.cells = cells
    return notebook


MATHJAX_VERSION = "2.7.9"  # the MathJax 2 API nbconvert's template configures
MATHJAX_PARTS = ("MathJax.js", "LICENSE", "config", "extensions", "jax/input/TeX", "jax/element",
                 "jax/output/CommonHTML", "fonts/HTML-CSS/TeX/woff")


def vendor_mathjax(root: Path, out: Path) -> str | None:
    """Copy MathJax (from the npm registry, cached in _build/vendor) into the site, so that equations
    render without the web; returns its URL relative to the pages, or None (then the CDN is used)."""
    vendor = root / "_build" / "vendor"
    package = vendor / "node_modules" / "mathjax"
    if not (package / "MathJax.js").is_file():
        try:
            subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(vendor),
                            f"mathjax@{MATHJAX_VERSION}"], check=True, capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError):
            print("MathJax could not be installed from npm: equations need the web (MathJax CDN) to render")
            return None
    target = out / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        source = package / part
        if source.is_dir():
            shutil.copytree(source, target / part)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target / part)
    return "_static/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"


def _nav(links: list[tuple[str, str]]) -> str:
    items = "".join(f'<a href="{html.escape(href)}">{html.escape(text)}</a>' for text, href in links)
    note = '<span class="note">offline rendering (nbconvert)</span>'
    return f'<nav class="paperlab-nav">{items}{note}</nav>'


def render_offline(root: Path, chapters, parts, executed: dict[str, Path], out: Path, config: dict) -> None:
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    notebooks = {c.stem: nbformat.read(executed[c.stem], as_version=4) for c in chapters}
    labels: dict[str, tuple[str, str]] = {}
    for stem, notebook in notebooks.items():
        labels.update(collect_labels(stem, notebook))

    exporter = HTMLExporter(template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True)
    mathjax_url = vendor_mathjax(root, out)
    if mathjax_url:
        exporter.mathjax_url = mathjax_url
    remover = TagRemovePreprocessor(
        remove_cell_tags={"remove-cell"},
        remove_input_tags={"hide-input", "remove-input"},
        remove_all_outputs_tags={"remove-output"},
        enabled=True,
    )
    exporter.register_preprocessor(remover, enabled=True)

    order = [c.stem for c in chapters]
    titles = {stem: nb.metadata.get("title", stem) for stem, nb in notebooks.items()}
    for i, stem in enumerate(order):
        body, _ = exporter.from_notebook_node(prepare(notebooks[stem], stem, labels))
        links = [("Contents", "index.html")]
        if i > 0:
            links.append((f"← {titles[order[i - 1]]}", f"{order[i - 1]}.html"))
        if i + 1 < len(order):
            links.append((f"{titles[order[i + 1]]} →", f"{order[i + 1]}.html"))
        body = body.replace("</head>", STYLE + "</head>", 1)
        nav = _nav(links)
        body = re.sub(r"(<body[^>]*>)", lambda m, nav=nav: m.group(1) + nav, body, count=1)
        (out / f"{stem}.html").write_text(body)

    project = config["project"]
    authors = ", ".join(a if isinstance(a, str) else a.get("name", "") for a in project.get("authors", []))
    toc = []
    for part, members in parts:
        if part:
            toc.append(f"<h2>{html.escape(part)}</h2>")
        toc.append("<ol>" + "".join(
            f'<li><a href="{c.stem}.html">{html.escape(titles[c.stem])}</a></li>' for c in members
        ) + "</ol>")
    index = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(project['title'])}</title>{STYLE}
<style>body {{ font-family: system-ui, sans-serif; max-width: 48em; margin: 2em auto;
 line-height: 1.5; }}</style>
</head><body>
<h1>{html.escape(project['title'])}</h1>
<p>{html.escape(project.get('description', ''))}</p>
<p><em>{html.escape(authors)}</em></p>
<p class="note">This is the offline rendering (nbconvert) of the executed chapters: the Jupyter Book 2
theme is downloaded from the web at build time, which this machine cannot reach. Content and outputs are
the same; layout and cross-references are simpler.</p>
{''.join(toc)}
</body></html>
"""
    (out / "index.html").write_text(index)
