"""Build and check the book: execute chapters (cached), stage them, render HTML, check MyST content.

    python tools/book.py execute [--only CHAPTER]  # run chapters into _build/executed/*.ipynb (cached)
    python tools/book.py html [--offline]          # execute, then render _build/html
    python tools/book.py html --only CHAPTER       # execute one chapter (cached), render the book
    python tools/book.py serve [--port 8000]       # serve _build/html on http://127.0.0.1:PORT/
    python tools/book.py convert DIR               # Jupytext each chapter to DIR/*.ipynb (for nbmake)
    python tools/book.py check                     # content check: fail on any MyST or Sphinx warning

Execution runs each chapter once per (chapter text, source of the package code it imports, profile, lock
file): the executed notebook is stored with that key and reused until one of them changes (unlike
mystmd's own execution cache, which ignores the imported package). Expensive runs inside a chapter have
their own finer cache (paperlab.cache).

Staging (tools/stage.py) prepares the executed notebooks for a renderer; both renderings read the same
ones. HTML: the Jupyter Book 2 site, whose theme mystmd downloads from the web; where that download fails
(no internet), the offline book: Sphinx with sphinx-book-theme and myst-nb (tools/sphinx_site.py),
configured from myst.yml, with nothing fetched from the web. The last line printed says which was
produced and how to view it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
EXECUTED = BUILD / "executed"
HTML_OUT = BUILD / "html"
RENDERER_NOTE = BUILD / "html-renderer.txt"  # which renderer wrote _build/html
JB_STAGE = BUILD / "jb-stage"
JB_KEEP = ("_build/templates",)  # mystmd's downloaded theme and its node modules: kept between builds
SPHINX_SRC = BUILD / "sphinx" / "src"
SPHINX_DOCTREES = BUILD / "sphinx" / "doctrees"
SPHINX_CHECK = BUILD / "sphinx-check"
CONVERT_MANIFEST = ".paperlab-convert"  # the files `convert` wrote into its folder, one a line
DEFAULT_PORT = 8000


class BookError(Exception):
    """A problem with the input, reported as one line before any work starts."""


# --------------------------------------------------------------------------------------------------
# Table of contents


@dataclass
class Chapter:
    path: Path  # book/NN-slug.md
    part: str  # part title ("" for top-level entries)

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT)) if self.path.is_relative_to(ROOT) else str(self.path)


def read_config() -> dict:
    return yaml.safe_load((ROOT / "myst.yml").read_text())


def chapters() -> list[Chapter]:
    """Every file in myst.yml's toc, in order, with the title of the part it sits in."""
    out: list[Chapter] = []

    def walk(entries: list[dict], part: str) -> None:
        for entry in entries:
            if "file" in entry:
                out.append(Chapter(ROOT / entry["file"], part))
            if "children" in entry:
                walk(entry["children"] or [], entry.get("title", part))

    walk(read_config()["project"]["toc"], "")
    return out


def existing_chapters() -> list[Chapter]:
    """The toc's chapters, after checking that every one of them exists (one error naming all missing)."""
    listed = chapters()
    missing = [c.name for c in listed if not c.path.is_file()]
    if missing:
        raise BookError(f"myst.yml lists {', '.join(missing)}, which does not exist"
                        if len(missing) == 1 else f"myst.yml lists {', '.join(missing)}, which do not exist")
    return listed


def find_chapter(name: str, listed: list[Chapter]) -> Chapter:
    """A chapter by stem (``02-ssd``), number (``02``) or path (``book/02-ssd.md``)."""
    key = Path(name).stem
    matches = [c for c in listed if c.stem == key or c.stem.split("-")[0] == key]
    if len(matches) != 1:
        raise BookError(f"no chapter {name!r} in myst.yml; the chapters are: "
                        + ", ".join(c.stem for c in listed))
    return matches[0]


# --------------------------------------------------------------------------------------------------
# Execution


def profile() -> str:
    return os.environ.get("PAPERLAB_PROFILE", "full")


def chapter_code(chapter: Chapter) -> tuple[str, ...]:
    """The package modules a chapter's code cells import (the roots of its code closure)."""
    from paperlab.cache import imported_modules

    notebook = read_notebook(chapter.path)
    source = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    return tuple(sorted(imported_modules(source)))


def execution_key(chapter: Chapter) -> str:
    """Chapter text + the source of the package code it imports (transitively) + profile + lock file."""
    from paperlab.cache import source_hash

    digest = hashlib.sha256()
    digest.update(chapter.path.read_bytes())
    digest.update(source_hash(chapter_code(chapter), on_disk=True).encode())  # the kernels load it afresh
    digest.update(profile().encode())
    digest.update((ROOT / "constraints.txt").read_bytes())
    return digest.hexdigest()


def read_notebook(path: Path):
    import jupytext

    return jupytext.read(path, fmt="md:myst")


def executed_path(chapter: Chapter) -> Path:
    return EXECUTED / f"{chapter.stem}.ipynb"


def is_current(chapter: Chapter) -> bool:
    """Whether the executed notebook of ``chapter`` matches its current execution key."""
    key_file = EXECUTED / f"{chapter.stem}.key"
    return (executed_path(chapter).is_file() and key_file.is_file()
            and key_file.read_text() == execution_key(chapter))


def execute_chapter(chapter: Chapter, timeout: int) -> tuple[Path, float, bool]:
    """Execute one chapter into _build/executed/<stem>.ipynb; returns (path, seconds, reused)."""
    import nbformat
    from nbclient import NotebookClient

    EXECUTED.mkdir(parents=True, exist_ok=True)
    target = executed_path(chapter)
    key_file = EXECUTED / f"{chapter.stem}.key"
    key = execution_key(chapter)
    if target.is_file() and key_file.is_file() and key_file.read_text() == key:
        return target, 0.0, True
    notebook = read_notebook(chapter.path)
    os.environ["PAPERLAB_PROGRESS"] = "0"  # no progress bars in the rendered pages
    os.environ["PAPERLAB_STATIC"] = "1"  # explorers render their static view (no kernel behind a page)
    from paperlab.utils import reuse_freed_memory

    reuse_freed_memory()  # the kernel and its workers keep freed memory for reuse (no numbers change)
    start = time.perf_counter()
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(chapter.path.parent)}})
    client.execute()
    seconds = time.perf_counter() - start
    tmp = target.with_suffix(".tmp")
    nbformat.write(notebook, tmp)
    os.replace(tmp, target)
    key_file.write_text(key)
    return target, seconds, False


def execute(selected: list[Chapter], timeout: int) -> int:
    """Execute each chapter in turn; one that fails is reported and the others still run (each executed
    chapter is kept, and so is every run its experiments finished, in the artifact cache), then 1."""
    timings, failed = {}, []
    for chapter in selected:
        if chapter.path.suffix != ".md":
            continue
        try:
            _, seconds, reused = execute_chapter(chapter, timeout)
        except Exception as err:  # noqa: BLE001 - report which chapter failed, go on with the others
            print(f"FAILED  {chapter.name}: {type(err).__name__}: {err}", file=sys.stderr)
            failed.append((chapter, err))
            continue
        state = "cached" if reused else f"{seconds:6.1f} s"
        print(f"executed {chapter.name} [{profile()}] {state}")
        timings[chapter.stem] = None if reused else round(seconds, 1)
    if len(selected) > 1 and not failed:
        (EXECUTED / "timings.json").write_text(
            json.dumps({"profile": profile(), "seconds": timings}, indent=1))
    for chapter, err in failed:
        first_line = (str(err).strip().splitlines() or [""])[0]
        print(f"not executed: {chapter.name} ({type(err).__name__}: {first_line})", file=sys.stderr)
    if any(type(err).__name__ == "CellTimeoutError" for _, err in failed):
        print(f"A cell ran past the {timeout} s per-cell limit (a slower or busy machine): the runs it "
              "finished are in the artifact cache, so running the same command again resumes from them; "
              "`make book TIMEOUT=3600` raises the limit.", file=sys.stderr)
    return 1 if failed else 0


def cmd_execute(args) -> int:
    listed = existing_chapters()
    selected = [find_chapter(args.only, listed)] if args.only else listed
    return execute(selected, args.timeout)


# --------------------------------------------------------------------------------------------------
# convert: the chapters as .ipynb for nbmake, into a folder this tool owns


def _refuse_unsafe_target(out: Path, listed: list[Chapter]) -> list[str]:
    """Check that ``convert`` may write into ``out``; return the files it wrote there before.

    Refused: the repository or a folder above it, the chapters' source folder (or one inside it), and a
    folder holding anything but the notebooks this tool wrote (listed in its manifest; a folder without
    one, from before the manifest existed, may hold only ``<chapter>.ipynb`` files, which are rewritten).
    """
    if out == ROOT or ROOT.is_relative_to(out):
        raise BookError(f"refusing to convert into {out}: it holds the repository")
    for chapter in listed:
        source_dir = chapter.path.parent.resolve()
        if out.is_relative_to(source_dir) or chapter.path.resolve().is_relative_to(out):
            raise BookError(f"refusing to convert into {out}: it is (or holds) the chapters' source folder")
    if not out.exists():
        return []
    if not out.is_dir():
        raise BookError(f"refusing to convert into {out}: it is a file, not a folder")
    manifest = out / CONVERT_MANIFEST
    if manifest.is_file():
        written = manifest.read_text().split()
    else:  # a folder from before the manifest: only the chapters' own notebooks, which are rewritten
        written = [f"{chapter.stem}.ipynb" for chapter in listed]
    foreign = sorted(str(p.relative_to(out)) for p in out.iterdir()
                     if p.name not in written and p.name != CONVERT_MANIFEST)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise BookError(f"refusing to convert into {out}: it holds files this tool did not write ({shown}); "
                        "choose a new or empty folder")
    return written


def cmd_convert(args) -> int:
    import jupytext

    out = Path(args.out).resolve()
    listed = existing_chapters()
    written_before = _refuse_unsafe_target(out, listed)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{chapter.stem}.ipynb" for chapter in listed]
    for stale in set(written_before) - set(names):
        (out / stale).unlink(missing_ok=True)
    (out / CONVERT_MANIFEST).write_text("\n".join(names) + "\n")  # before writing: it covers a partial run
    for chapter, name in zip(listed, names, strict=True):
        # Each notebook runs with its own folder as cwd, so keep chapters side by side in one folder.
        jupytext.write(read_notebook(chapter.path), out / name)
        print(f"converted {chapter.name} -> {out / name}")
    return 0


# --------------------------------------------------------------------------------------------------
# Staging: the executed notebooks as each renderer reads them


def load_notebooks(listed: list[Chapter], *, executed_only: bool = True) -> tuple[dict, list[str], list[str]]:
    """stem -> notebook: the executed one where there is one, else the source (no outputs).

    Returns (notebooks, stale, unexecuted): chapters shown from an earlier execution (their text or code
    changed since) and chapters never executed.
    """
    import nbformat

    notebooks, stale, unexecuted = {}, [], []
    for chapter in listed:
        path = executed_path(chapter)
        if path.is_file():
            notebooks[chapter.stem] = nbformat.read(path, as_version=4)
            if not executed_only and not is_current(chapter):
                stale.append(chapter.stem)
        elif executed_only:
            raise BookError(f"{chapter.name} has not been executed (run: python tools/book.py execute)")
        else:
            notebooks[chapter.stem] = read_notebook(chapter.path)
            unexecuted.append(chapter.stem)
    return notebooks, stale, unexecuted


def _write_if_changed(path: Path, text: str) -> None:
    """Leave an unchanged file alone, so that incremental builds see only what changed."""
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _without_empty_parts(entries: list[dict]) -> list[dict]:
    return [entry for entry in entries if "children" not in entry or entry["children"]]


def stage_myst(notebooks: dict, config: dict, stage: Path = JB_STAGE) -> Path:
    """Write the Jupyter Book 2 project: book/*.ipynb and myst.yml; keeps mystmd's theme (JB_KEEP)."""
    import nbformat
    from stage import stage as stage_notebook

    if stage.exists():
        _clear_except(stage, JB_KEEP)
    (stage / "book").mkdir(parents=True, exist_ok=True)
    for stem, notebook in notebooks.items():
        nbformat.write(stage_notebook(notebook, "myst"), stage / "book" / f"{stem}.ipynb")
    config = json.loads(json.dumps(config))  # a deep copy

    def retarget(entries: list[dict]) -> list[dict]:
        for entry in entries:
            if "file" in entry:
                entry["file"] = str(Path(entry["file"]).with_suffix(".ipynb"))
            if "children" in entry:
                entry["children"] = retarget(entry["children"] or [])
        return _without_empty_parts(entries)

    config["project"]["toc"] = retarget(config["project"]["toc"])
    (stage / "myst.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    if (ROOT / "data").exists():
        shutil.copytree(ROOT / "data", stage / "data")
    return stage


def _clear_except(folder: Path, keep: tuple[str, ...]) -> None:
    """Delete everything under ``folder`` except the relative paths in ``keep`` (and their parents)."""
    kept = [folder / k for k in keep]
    for path in folder.iterdir():
        if any(k == path for k in kept):
            continue
        if any(k.is_relative_to(path) for k in kept) and path.is_dir():
            _clear_except(path, tuple(str(k.relative_to(path)) for k in kept if k.is_relative_to(path)))
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def stage_sphinx(notebooks: dict, config: dict, src: Path = SPHINX_SRC) -> Path:
    """Write the Sphinx source folder: one notebook per chapter (the first toc file as index) and conf.py."""
    import nbformat
    import sphinx_site
    from stage import figure_labels, figure_refs_to_numref
    from stage import stage as stage_notebook

    toc = config["project"]["toc"]
    root_file, _ = sphinx_site.toc_parts(toc)

    def docname(file: str) -> str:
        return sphinx_site.ROOT_DOC if file == root_file else Path(file).stem

    labels = set().union(*(figure_labels(nb) for nb in notebooks.values()))
    src.mkdir(parents=True, exist_ok=True)
    wanted = {"conf.py"}
    files = _toc_files(toc)
    for file in files:
        stem = Path(file).stem
        staged = figure_refs_to_numref(stage_notebook(notebooks[stem], "sphinx"), labels)
        if file == root_file:
            staged.cells.append(nbformat.v4.new_markdown_cell(sphinx_site.toctree_markdown(toc, docname)))
        name = f"{docname(file)}.ipynb"
        _write_if_changed(src / name, nbformat.writes(staged))
        wanted.add(name)
    for path in src.iterdir():  # chapters no longer in the toc (the folder is this tool's own)
        if path.name not in wanted:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    sphinx_site.write_conf(src, config)
    return src


def _toc_files(toc: list[dict]) -> list[str]:
    files: list[str] = []
    for entry in toc:
        if "file" in entry:
            files.append(entry["file"])
        files += _toc_files(entry.get("children") or [])
    return files


# --------------------------------------------------------------------------------------------------
# Rendering


# mystmd's messages when it cannot reach the web for the theme
OFFLINE = re.compile(r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ETIMEDOUT|ENETUNREACH|fetch failed|getaddrinfo")
MYST_WARNING = re.compile(r"(⚠️|⛔️|⛔)\s*(.*)")


def jupyter_book() -> list[str]:
    return [str(Path(sys.executable).parent / "jupyter"), "book"]


def render_jupyter_book(notebooks: dict, config: dict) -> tuple[bool, str]:
    """Render with Jupyter Book 2; returns (built, why not). Content warnings are errors (raised)."""
    stage = stage_myst(notebooks, config)
    cmd = jupyter_book() + ["build", "--html", "--strict"]
    try:
        proc = subprocess.run(cmd, cwd=stage, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return False, "mystmd did not finish within 15 minutes"
    except OSError as err:
        return False, f"mystmd could not start ({err})"
    output = proc.stdout + proc.stderr
    site = stage / "_build" / "html"
    if proc.returncode == 0 and (site / "index.html").is_file():
        _replace_html(site, "jupyter-book")
        return True, ""
    if OFFLINE.search(output):
        return False, "its theme could not be downloaded (offline)"
    warnings = sorted({m.group(2).strip() for m in MYST_WARNING.finditer(output)})
    if warnings:
        raise BookError("Jupyter Book 2 content warnings: " + " | ".join(warnings))
    tail = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
    return False, f"mystmd failed ({tail[0].strip()})"


def _replace_html(site: Path, renderer: str) -> None:
    if HTML_OUT.exists():
        shutil.rmtree(HTML_OUT)
    shutil.copytree(site, HTML_OUT)
    RENDERER_NOTE.write_text(renderer + "\n")


def render_sphinx(notebooks: dict, config: dict) -> None:
    """Render the offline book with Sphinx into _build/html (incrementally: unchanged pages are kept)."""
    import sphinx_site

    src = stage_sphinx(notebooks, config)
    if not (RENDERER_NOTE.is_file() and RENDERER_NOTE.read_text().strip() == "sphinx"):
        shutil.rmtree(HTML_OUT, ignore_errors=True)  # another renderer's site: start clean
    rc, warnings, output = sphinx_site.build(src, HTML_OUT, SPHINX_DOCTREES)
    if rc != 0 or warnings:
        shown = "\n".join(warnings) or output.strip()
        raise BookError(f"the offline book (Sphinx) failed:\n{shown}")
    RENDERER_NOTE.write_text("sphinx\n")


def view_hint(port: int = DEFAULT_PORT) -> str:
    return f"view it with `make serve` (http://127.0.0.1:{port}/)"


def cmd_html(args) -> int:
    listed = existing_chapters()
    only = find_chapter(args.only, listed) if args.only else None
    rc = execute([only] if only else listed, args.timeout)
    if rc:
        return rc
    notebooks, stale, unexecuted = load_notebooks(listed, executed_only=only is None)
    if stale:
        print(f"shown as last executed (changed since; `make book` updates them): {', '.join(stale)}")
    if unexecuted:
        print(f"shown without outputs (not executed yet; `make book` executes them): {', '.join(unexecuted)}")
    config = read_config()
    if not args.offline:
        built, why = render_jupyter_book(notebooks, config)
        if built:
            print(f"Built the Jupyter Book 2 site in {HTML_OUT.relative_to(ROOT)}/: {view_hint()}")
            return 0
        print(f"Jupyter Book 2 site not built: {why}; building the offline book instead")
    render_sphinx(notebooks, config)
    print(f"Built the offline book (Sphinx, sphinx-book-theme) in {HTML_OUT.relative_to(ROOT)}/: "
          f"{view_hint()}")
    return 0


def make_server(directory: Path, port: int):
    """An HTTP server for ``directory`` on 127.0.0.1 only (``port`` 0: any free port)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # one line per request is noise here
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Quiet, directory=str(directory)))


def cmd_serve(args) -> int:
    if not (HTML_OUT / "index.html").is_file():
        raise BookError(f"no book in {HTML_OUT.relative_to(ROOT)}/ yet: run `make book` first")
    try:
        server = make_server(HTML_OUT, args.port)
    except OSError as err:
        raise BookError(f"cannot listen on 127.0.0.1:{args.port} ({err.strerror}); "
                        f"choose another port: make serve PORT={args.port + 1}") from None
    print(f"Serving the book at http://127.0.0.1:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


# --------------------------------------------------------------------------------------------------
# Content check: mystmd (everything before the theme step, which needs the web) and the offline renderer


def cmd_check(args) -> int:
    listed = existing_chapters()
    cmd = jupyter_book() + ["build", "--site", "--strict"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    warnings = sorted({m.group(2).strip() for m in MYST_WARNING.finditer(output)})
    built = re.search(r"Built (\d+) pages", output)
    if warnings:
        print("MyST content check FAILED:")
        for warning in warnings:
            print("  -", warning)
        return 1
    if not built:
        print(output)
        print("MyST content check FAILED: mystmd did not build the pages (output above)")
        return 1
    theme = ("the site theme was unavailable (offline), which the check ignores" if proc.returncode
             else "site built")
    print(f"MyST content check passed: {built.group(1)} pages, no content warnings ({theme}).")

    # The offline renderer reads the same chapters (without outputs here): its references must resolve too.
    import sphinx_site

    notebooks = {chapter.stem: read_notebook(chapter.path) for chapter in listed}
    src = stage_sphinx(notebooks, read_config(), SPHINX_CHECK / "src")
    rc, sphinx_warnings, sphinx_output = sphinx_site.build(src, SPHINX_CHECK / "html",
                                                           SPHINX_CHECK / "doctrees")
    if rc or sphinx_warnings:
        print("Offline book (Sphinx) check FAILED:")
        for warning in sphinx_warnings or [sphinx_output.strip()]:
            print("  -", warning)
        return 1
    print(f"Offline book (Sphinx) check passed: {len(notebooks)} pages, no warnings.")
    if args.executed:
        return check_executed(Path(args.executed))
    return 0


def staging_problems(folder: Path) -> tuple[list[str], int]:
    """Stage every executed notebook in ``folder`` (e.g. the fast run's, which ``make chapters`` keeps) for
    both renderers: what only outputs can break (a figure cell with two displays). Returns (problems, number
    of notebooks that had outputs)."""
    import nbformat
    from stage import stage as stage_notebook

    problems, checked = [], 0
    for path in sorted(folder.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        if not any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"):
            continue
        checked += 1
        for target in ("myst", "sphinx"):
            try:
                stage_notebook(notebook, target)
            except ValueError as err:
                problems.append(f"{path.name} ({target}): {err}")
    return problems, checked


def check_executed(folder: Path) -> int:
    if not folder.is_dir():
        print(f"Staging check skipped: {folder} does not exist (make chapters writes it)")
        return 0
    problems, checked = staging_problems(folder)
    if problems:
        print("Staging check of the executed chapters FAILED:")
        for problem in problems:
            print("  -", problem)
        return 1
    print(f"Staging check passed: {checked} executed chapters in {folder} staged for both renderers.")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("execute", "html"):
        p = sub.add_parser(name)
        p.add_argument("--timeout", type=_positive_int, default=1800, help="per-cell timeout in seconds")
        p.add_argument("--only", metavar="CHAPTER", help="one chapter: 02-ssd, 02 or book/02-ssd.md")
        if name == "html":
            p.add_argument("--offline", action="store_true", help="skip the Jupyter Book 2 attempt")
    p = sub.add_parser("serve")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p = sub.add_parser("convert")
    p.add_argument("out")
    p = sub.add_parser("check")
    p.add_argument("--executed", metavar="DIR",
                   help="also stage the executed notebooks in DIR (make chapters keeps them in .nbtest)")
    args = parser.parse_args(argv)
    commands = {"execute": cmd_execute, "html": cmd_html, "serve": cmd_serve, "convert": cmd_convert,
                "check": cmd_check}
    try:
        return commands[args.command](args)
    except BookError as err:
        print(f"book.py {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
