"""Build and check the book: execute chapters (cached), render HTML, check MyST content.

    python tools/book.py execute   # run every chapter of myst.yml into _build/executed/*.ipynb (cached)
    python tools/book.py html      # execute, then render _build/html (Jupyter Book 2 site, else offline)
    python tools/book.py convert DIR   # Jupytext each chapter to DIR/*.ipynb (for nbmake in make test)
    python tools/book.py check     # MyST content check: fail on any content warning

Execution runs each chapter once per (chapter text, source of the package code it imports, profile, lock
file): the executed notebook is stored with that key and reused until one of them changes (unlike
mystmd's own execution cache, which ignores the imported package). Expensive runs inside a chapter have
their own finer cache (paperlab.cache).

HTML: the Jupyter Book 2 site needs its theme, which mystmd downloads from the web. Where that fails (no
internet), the same executed notebooks are rendered offline with nbconvert, with an index that follows
myst.yml's table of contents. The last line printed says which was produced.
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


# --------------------------------------------------------------------------------------------------
# Table of contents


@dataclass
class Chapter:
    path: Path  # book/NN-slug.md
    part: str  # part title ("" for top-level entries)

    @property
    def stem(self) -> str:
        return self.path.stem


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
                walk(entry["children"], entry.get("title", part))

    walk(read_config()["project"]["toc"], "")
    return out


def parts() -> list[tuple[str, list[Chapter]]]:
    grouped: dict[str, list[Chapter]] = {}
    for chapter in chapters():
        grouped.setdefault(chapter.part, []).append(chapter)
    return list(grouped.items())


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
    digest.update(source_hash(chapter_code(chapter)).encode())
    digest.update(profile().encode())
    digest.update((ROOT / "constraints.txt").read_bytes())
    return digest.hexdigest()


def read_notebook(path: Path):
    import jupytext

    return jupytext.read(path, fmt="md:myst")


def execute_chapter(chapter: Chapter, timeout: int) -> tuple[Path, float, bool]:
    """Execute one chapter into _build/executed/<stem>.ipynb; returns (path, seconds, reused)."""
    import nbformat
    from nbclient import NotebookClient

    EXECUTED.mkdir(parents=True, exist_ok=True)
    target = EXECUTED / f"{chapter.stem}.ipynb"
    key_file = EXECUTED / f"{chapter.stem}.key"
    key = execution_key(chapter)
    if target.is_file() and key_file.is_file() and key_file.read_text() == key:
        return target, 0.0, True
    notebook = read_notebook(chapter.path)
    os.environ["PAPERLAB_PROGRESS"] = "0"  # no progress bars in the rendered pages
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


def cmd_execute(args) -> int:
    timings = {}
    for chapter in chapters():
        if chapter.path.suffix != ".md":
            continue
        try:
            _, seconds, reused = execute_chapter(chapter, args.timeout)
        except Exception as err:  # noqa: BLE001 - report which chapter failed, then fail the build
            print(f"FAILED  {chapter.path.relative_to(ROOT)}: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
        state = "cached" if reused else f"{seconds:6.1f} s"
        print(f"executed {chapter.path.relative_to(ROOT)} [{profile()}] {state}")
        timings[chapter.stem] = None if reused else round(seconds, 1)
    (EXECUTED / "timings.json").write_text(json.dumps({"profile": profile(), "seconds": timings}, indent=1))
    return 0


def cmd_convert(args) -> int:
    import jupytext

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for chapter in chapters():
        # Each notebook runs with its own folder as cwd, so keep chapters side by side in one folder.
        jupytext.write(read_notebook(chapter.path), out / f"{chapter.stem}.ipynb")
        print(f"converted {chapter.path.relative_to(ROOT)} -> {out / (chapter.stem + '.ipynb')}")
    return 0


# --------------------------------------------------------------------------------------------------
# MyST content check (offline: everything before the theme step)

WARNING = re.compile(r"(⚠️|⛔️|⛔)\s*(.*)")


def myst_site_build(cwd: Path) -> tuple[int, str]:
    env = dict(os.environ)
    cmd = [str(Path(sys.executable).parent / "jupyter"), "book", "build", "--site", "--strict"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def cmd_check(args) -> int:
    rc, output = myst_site_build(ROOT)
    warnings = sorted({m.group(2).strip() for m in WARNING.finditer(output)})
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
    theme = "the site theme was unavailable (offline), which the check ignores" if rc else "site built"
    print(f"MyST content check passed: {built.group(1)} pages, no content warnings ({theme}).")
    return 0


# --------------------------------------------------------------------------------------------------
# HTML: Jupyter Book 2 site when possible, else an offline rendering of the same executed notebooks


def try_jupyter_book_site(executed: dict[str, Path]) -> bool:
    """Render the executed notebooks with Jupyter Book 2 (needs the web for the theme)."""
    stage = BUILD / "jb-stage"
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "book").mkdir(parents=True)
    import nbformat

    for stem, path in executed.items():
        # mystmd reads a notebook's front matter from a leading Markdown cell, not from its metadata.
        notebook = nbformat.read(path, as_version=4)
        notebook.metadata.pop("jupytext", None)
        front = {k: notebook.metadata.pop(k) for k in ("title", "subtitle") if k in notebook.metadata}
        if front:
            header = "---\n" + yaml.safe_dump(front, sort_keys=False) + "---"
            notebook.cells.insert(0, nbformat.v4.new_markdown_cell(header))
        nbformat.write(notebook, stage / "book" / f"{stem}.ipynb")
    config = read_config()

    def retarget(entries):
        for entry in entries:
            if "file" in entry:
                entry["file"] = str(Path(entry["file"]).with_suffix(".ipynb"))
            if "children" in entry:
                retarget(entry["children"])

    retarget(config["project"]["toc"])
    (stage / "myst.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for extra in ("data",):
        if (ROOT / extra).exists():
            shutil.copytree(ROOT / extra, stage / extra)
    cmd = [str(Path(sys.executable).parent / "jupyter"), "book", "build", "--html"]
    try:
        proc = subprocess.run(cmd, cwd=stage, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return False
    site = stage / "_build" / "html"
    if proc.returncode != 0 or not (site / "index.html").is_file():
        reason = "theme download failed (offline)" if "ENOTFOUND" in proc.stdout + proc.stderr else "failed"
        print(f"Jupyter Book 2 site: {reason}; rendering offline instead")
        return False
    if HTML_OUT.exists():
        shutil.rmtree(HTML_OUT)
    shutil.copytree(site, HTML_OUT)
    return True


def cmd_html(args) -> int:
    rc = cmd_execute(args)
    if rc:
        return rc
    executed = {c.stem: EXECUTED / f"{c.stem}.ipynb" for c in chapters()}
    if not args.offline and try_jupyter_book_site(executed):
        print(f"Built the Jupyter Book 2 site: {HTML_OUT / 'index.html'}")
        return 0
    from offline_html import render_offline

    render_offline(ROOT, chapters(), parts(), executed, HTML_OUT, read_config())
    print(f"Built the offline HTML rendering (nbconvert; the Jupyter Book theme needs the web): "
          f"{HTML_OUT / 'index.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("execute", "html"):
        p = sub.add_parser(name)
        p.add_argument("--timeout", type=int, default=900, help="per-cell timeout in seconds")
        if name == "html":
            p.add_argument("--offline", action="store_true", help="skip the Jupyter Book 2 attempt")
    p = sub.add_parser("convert")
    p.add_argument("out")
    sub.add_parser("check")
    args = parser.parse_args(argv)
    return {"execute": cmd_execute, "html": cmd_html, "convert": cmd_convert, "check": cmd_check}[
        args.command
    ](args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
