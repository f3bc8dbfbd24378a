"""A reader who opens a chapter in JupyterLab (``make lab``) and saves it must get the same file back.

JupyterLab reads and writes the ``.md`` chapters through Jupytext's contents manager, configured by
``book/jupytext.toml``. These tests do what JupyterLab does, through the same contents manager (the one
Jupytext's server extension derives from Jupyter Server's default), and compare bytes:

- open and save, with no kernel started;
- open, run (the kernel's metadata, outputs, execution counts, cell ids and JupyterLab's view state are
  added to the notebook, as the JupyterLab frontend adds them), and save;

both with JupyterLab serving ``book/`` (as ``make lab`` does) and serving the repository root.
Also here: the JupyterLab settings that ``make venv`` installs are valid for the installed JupyterLab.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("jupytext")
pytest.importorskip("jupyter_server")

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(BOOK.glob("*.md"))
CONFIG = BOOK / "jupytext.toml"


def _contents_manager(root: Path):
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
    from jupytext import build_async_jupytext_contents_manager_class

    # What Jupytext's server extension does to Jupyter Server's default contents manager.
    return build_async_jupytext_contents_manager_class(AsyncLargeFileManager)(root_dir=str(root))


def _kernel_metadata() -> tuple[dict, dict]:
    """The notebook metadata JupyterLab writes once its kernel has started: ``kernelspec`` as
    ``NotebookPanel`` sets it (name, display name, language, in that order) and the kernel's
    ``language_info`` from its kernel_info reply."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    kernelspec = {"name": "python3", "display_name": spec.display_name, "language": spec.language}
    return kernelspec, dict(IPythonKernel.language_info)


def _as_if_run_in_jupyterlab(notebook: dict) -> dict:
    """The notebook after a session in JupyterLab: kernel metadata, widget state, cell ids, outputs and
    execution counts, and view state (collapsed outputs and headings, execution timing)."""
    notebook = copy.deepcopy(notebook)
    kernelspec, language_info = _kernel_metadata()
    notebook["metadata"]["kernelspec"] = kernelspec
    notebook["metadata"]["language_info"] = language_info
    notebook["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "state": {}, "version_major": 2, "version_minor": 0}}
    for i, cell in enumerate(notebook["cells"]):
        cell["id"] = f"cell-{i}"
        if cell["cell_type"] == "code":
            cell["execution_count"] = i + 1
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "output\n"}]
            cell["metadata"].update({"collapsed": False, "scrolled": True, "trusted": True, "execution": {
                "iopub.execute_input": "2026-01-01T00:00:00.000Z",
                "shell.execute_reply": "2026-01-01T00:00:01.000Z"}})
        elif cell["cell_type"] == "markdown":
            cell["metadata"]["jp-MarkdownHeadingCollapsed"] = True
    return notebook


def _open_and_save(root: Path, path: str, *, run: bool) -> None:
    async def session():
        manager = _contents_manager(root)
        model = await manager.get(path, content=True, type="notebook")
        notebook = json.loads(json.dumps(model["content"]))  # as the browser receives and returns it
        if run:
            notebook = _as_if_run_in_jupyterlab(notebook)
        await manager.save({"type": "notebook", "format": "json", "content": notebook}, path)

    asyncio.run(session())


def _copy_book(tmp_path: Path, *, with_config: bool = True) -> Path:
    book = tmp_path / "book"
    book.mkdir()
    for chapter in CHAPTERS:
        shutil.copy(chapter, book / chapter.name)
    if with_config:
        shutil.copy(CONFIG, book / CONFIG.name)
    return book


def test_there_are_chapters_and_a_configuration():
    assert len(CHAPTERS) >= 7 and CONFIG.is_file()


@pytest.mark.parametrize("run", [False, True], ids=["open-save", "open-run-save"])
@pytest.mark.parametrize("served", ["book", "repository"])
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_jupyterlab_save_leaves_the_chapter_byte_identical(tmp_path, chapter, served, run):
    book = _copy_book(tmp_path)
    root, path = (book, chapter.name) if served == "book" else (tmp_path, f"book/{chapter.name}")
    _open_and_save(root, path, run=run)
    saved = (book / chapter.name).read_bytes()
    if saved != chapter.read_bytes():
        import difflib

        before, after = chapter.read_text().splitlines(True), saved.decode().splitlines(True)
        diff = "".join(difflib.unified_diff(before, after, "committed", "saved by JupyterLab", n=1))
        pytest.fail(f"saving {chapter.name} in JupyterLab changes it; normalise it once with "
                    f"`python tests/test_roundtrip.py {chapter.relative_to(ROOT)}`:\n{diff[:3000]}")


def test_without_the_configuration_a_save_would_drop_the_title(tmp_path):
    """The check above can fail: Jupytext's defaults lose the front matter the book needs."""
    book = _copy_book(tmp_path, with_config=False)
    chapter = CHAPTERS[1]
    _open_and_save(book, chapter.name, run=True)
    saved = (book / chapter.name).read_text()
    assert "\ntitle:" in chapter.read_text() and "\ntitle:" not in saved


# ------------------------------------------------------------------------------------ lab settings
OVERRIDES = ROOT / "tools" / "jupyterlab-overrides.json"


def _schema(plugin: str) -> dict:
    """The installed JSON schema of a JupyterLab core settings plugin (``package:plugin``)."""
    import sys

    package, name = plugin.split(":")
    path = Path(sys.prefix) / "share/jupyter/lab/schemas" / package / f"{name}.json"
    assert path.is_file(), f"no installed settings schema for {plugin} ({path})"
    return json.loads(path.read_text())


def test_lab_settings_are_valid_for_the_installed_jupyterlab():
    jsonschema = pytest.importorskip("jsonschema")
    overrides = json.loads(OVERRIDES.read_text())
    for plugin, settings in overrides.items():
        schema = _schema(plugin)
        jsonschema.validate(settings, schema)  # unknown keys fail: the schemas forbid additional properties
        for key in settings:
            assert key in schema["properties"], f"{plugin} has no setting {key!r}"


def test_lab_settings_open_chapters_with_jupytext_and_never_ask_for_news():
    overrides = json.loads(OVERRIDES.read_text())
    viewers = overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["markdown"] == "Jupytext Notebook"
    notification = overrides["@jupyterlab/apputils-extension:notification"]
    assert notification["fetchNews"] == "false" and notification["checkForUpdates"] is False


def test_jupyterlab_myst_is_installed_for_the_lab():
    pytest.importorskip("jupyterlab_myst")
    import sys

    assert (Path(sys.prefix) / "share/jupyter/labextensions/jupyterlab-myst/package.json").is_file()


if __name__ == "__main__":  # normalise chapters: python tests/test_roundtrip.py book/NN-slug.md ...
    import sys

    for name in sys.argv[1:] or [str(c) for c in CHAPTERS]:
        chapter = Path(name).resolve()
        _open_and_save(chapter.parent, chapter.name, run=True)
        print(f"normalised {chapter.relative_to(ROOT)} as JupyterLab saves it")
