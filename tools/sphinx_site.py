"""The offline book: Sphinx with sphinx-book-theme and myst-nb over the staged, executed notebooks.

Nothing is downloaded, at build time or when a page is read: the theme, MathJax
(sphinx-mathjax-offline), plotly.js (from the plotly package) and the search index are all in the site.
The configuration is generated from ``myst.yml`` (:func:`write_conf` writes ``conf.py`` into the staged
source folder), so the table of contents lives in one place:

- the first file of the toc is the site's root page (``index``); each part becomes a captioned toctree
  appended to it, and a part without chapters yet is left out;
- ``project.title`` / ``site.title`` / ``site.options.logo_text`` give the page and sidebar titles;
- ``project.numbering`` turns on numbered figures and tables (``Figure N``, counted per chapter as Jupyter
  Book 2 does) and numbered display equations.

:func:`setup` is the Sphinx extension the generated ``conf.py`` loads: per-page plotly.js, per-chapter
figure numbers, equation numbers, and search summaries without the theme's button labels.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
STATIC = TOOLS / "sphinx_static"
ROOT_DOC = "index"
WARNING = re.compile(r"(WARNING|ERROR|CRITICAL):\s*(.*)")


def plotly_js() -> Path:
    """plotly.js as shipped inside the plotly package (the version the figures were made with)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def mathjax_static() -> Path:
    """The folder holding ``mathjax/`` (MathJax 3) inside the sphinx-mathjax-offline package; used as a
    static folder (its extension does not declare itself safe for parallel reading)."""
    import importlib.util

    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("sphinx-mathjax-offline is not installed (it is in the book extras: make venv)")
    return Path(spec.origin).parent / "static"


def toc_parts(toc: list[dict]) -> tuple[str, list[tuple[str, list[str]]]]:
    """myst.yml's toc -> (root file, [(part title or "", [files])]); parts without files are left out."""
    files = [entry["file"] for entry in toc if "file" in entry]
    if not files:
        raise ValueError("myst.yml: the toc needs a file before its parts (the book's first page)")
    root, groups = files[0], []
    top = [entry["file"] for entry in toc[1:] if "file" in entry and "children" not in entry]
    if top:
        groups.append(("", top))
    for entry in toc:
        if "children" not in entry:
            continue
        children = entry["children"] or []
        nested = [child for child in children if "children" in child]
        if nested:
            raise ValueError(f"myst.yml: part {entry.get('title')!r} nests parts; the book has one level")
        if children:
            groups.append((entry.get("title", ""), [child["file"] for child in children]))
    return root, groups


def toctree_markdown(toc: list[dict], docname) -> str:
    """Hidden toctrees, one per part, for the root page (``docname`` maps a toc file to its page)."""
    _, groups = toc_parts(toc)
    blocks = []
    for title, files in groups:
        options = ":hidden:\n" + (f":caption: {title}\n" if title else "")
        blocks.append("```{toctree}\n" + options + "\n" + "\n".join(docname(f) for f in files) + "\n```")
    return "\n\n".join(blocks)


def settings(config: dict) -> dict:
    """Sphinx configuration values from myst.yml's ``project`` and ``site`` sections."""
    project = config.get("project", {})
    site = config.get("site", {})
    options = site.get("options", {}) or {}
    numbering = project.get("numbering", {}) or {}
    authors = ", ".join(a["name"] if isinstance(a, dict) else str(a) for a in project.get("authors", []))
    title = site.get("title") or project.get("title", "")
    return {
        "project": project.get("title", ""),
        "author": authors,
        "copyright": f"{authors}; {project['license']} licence" if project.get("license") else authors,
        "root_doc": ROOT_DOC,
        "extensions": ["myst_nb", "sphinx_design", "sphinx_site"],
        "exclude_patterns": ["_build", "**.ipynb_checkpoints"],
        # the notebooks come executed (tools/book.py execute caches them)
        "nb_execution_mode": "off",
        "nb_merge_streams": True,
        "nb_ipywidgets_js": {},  # its default loads require.js and the widget manager from a CDN
        "nb_render_markdown_format": "myst",
        "myst_enable_extensions": ["colon_fence", "dollarmath", "amsmath", "attrs_block"],
        "numfig": bool(numbering.get("figure", True) or numbering.get("table", True)),
        "numfig_format": {"figure": "Figure %s", "table": "Table %s", "code-block": "Listing %s",
                          "section": "Section %s"},
        "paperlab_number_equations": bool(numbering.get("equation", False)),
        "html_theme": "sphinx_book_theme",
        "html_title": title,
        "html_short_title": options.get("logo_text") or title,
        "html_theme_options": {
            "home_page_in_toc": True,
            "show_navbar_depth": 1,
            "show_toc_level": 2,
            "use_download_button": False,
            "use_fullscreen_button": True,
            "logo": {"text": options.get("logo_text") or title},
            "navigation_with_keys": False,
        },
        "html_static_path": [str(STATIC), str(plotly_js()), str(mathjax_static())],
        "mathjax_path": "mathjax/tex-chtml.js",
        "html_css_files": ["paperlab.css"],
        "html_show_sourcelink": False,
        "html_copy_source": False,
        "html_last_updated_fmt": None,
    }


def write_conf(src: Path, config: dict) -> Path:
    """Write ``conf.py`` (generated from myst.yml) into the Sphinx source folder ``src``."""
    lines = [
        "# Generated from myst.yml by tools/book.py: edit myst.yml (or tools/sphinx_site.py), not this file.",
        "import sys",
        f"sys.path.insert(0, {str(TOOLS)!r})",
        "",
    ]
    lines += [f"{key} = {value!r}" for key, value in settings(config).items()]
    path = src / "conf.py"
    text = "\n".join(lines) + "\n"
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def build(src: Path, out: Path, doctrees: Path, *, strict: bool = True) -> tuple[int, list[str], str]:
    """Run sphinx-build (html); returns (exit code, warnings, full output). ``strict``: warnings fail."""
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-d", str(doctrees), "-j", "auto"]
    cmd += ["-W", "--keep-going"] if strict else []
    cmd += [str(src), str(out)]
    path = os.pathsep.join(filter(None, [str(TOOLS), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    output = proc.stdout + proc.stderr
    warnings = [m.group(0).strip() for line in output.splitlines() if (m := WARNING.search(line))]
    return proc.returncode, warnings, output


# --------------------------------------------------------------------------------------------------
# The Sphinx extension (loaded by the generated conf.py)


def _per_page_scripts(app, pagename, templatename, context, doctree) -> None:
    """The shared plotly.js only on pages that draw a plotly figure; the search page's summary fix."""
    if doctree is not None and "plotly-graph-div" in context.get("body", ""):
        app.add_js_file(plotly_js().name, priority=200)
    if pagename == "search":
        app.add_js_file("paperlab-search.js", loading_method="defer")


def _number_equations(app, doctree) -> None:
    """Number every display equation, as Jupyter Book 2 does (myst's ``$$`` blocks are unlabelled)."""
    if not app.config.paperlab_number_equations:
        return
    from docutils import nodes

    env = app.env
    docname = env.current_document.docname
    domain = env.domains.math_domain
    for node in list(doctree.findall(nodes.math_block)):
        if node.get("label") or node.get("nowrap"):
            continue
        node["label"] = f"{docname}:{env.new_serialno('sphinx.ext.math#equations')}"
        domain.note_equation(docname, node["label"], location=node)
        node["number"] = domain.get_equation_number_for(node["label"])
        node["ids"].append(nodes.make_id(f"equation-{node['label']}"))  # numbered through its id


def _figures_per_chapter(app, env) -> list[str]:
    """Count figures (and tables) from 1 in each chapter, as Jupyter Book 2 does; Sphinx counts across
    the whole book unless the toctree is section-numbered."""
    changed = []
    for docname, by_type in env.toc_fignumbers.items():
        for numbers in by_type.values():
            ordered = sorted(numbers, key=numbers.get)
            renumbered = {figure_id: (i + 1,) for i, figure_id in enumerate(ordered)}
            if renumbered != numbers:
                numbers.update(renumbered)
                changed.append(docname)
    return changed


def setup(app):
    app.add_config_value("paperlab_number_equations", False, "env", bool)
    app.connect("html-page-context", _per_page_scripts)
    app.connect("doctree-read", _number_equations)
    app.connect("env-get-updated", _figures_per_chapter, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
