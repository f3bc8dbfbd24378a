"""The artifact cache: expensive runs are computed once per (experiment, config, seed, code).

A chapter calls ``cached(name, config, compute)``; the first call runs ``compute()`` and stores what it
returns, later calls load it. The key hashes

- the experiment ``name`` and its ``config`` (a dataclass, via :func:`paperlab.config.config_to_dict`),
- the ``seed``,
- the number of processes of a ``torchrun`` launch, when there are several (data-parallel training sees
  each step's data split over them, so its result is not a one-process run's),
- the source of the code the result depends on: the module that calls :func:`cached` (an experiment
  module such as ``paperlab.toolkit``) and, transitively, every module of ``paperlab`` and
  ``paperlab_kernels`` it imports (found by reading the ``import`` statements, see :func:`code_closure`).
  Called from outside the package (a notebook), the whole of both packages counts.

so editing code a result depends on recomputes it (stale results are never shown), while editing another
chapter's code does not. The source hashed is the code as this process loaded it: each file's bytes are
recorded when this module is imported (files added later, when first read). A file that has changed on disk
since then is refused (:class:`CodeChangedError`, one line naming it) rather than hashed: a notebook's
kernel runs the old code, with autoreload the new, and a module imported after the edit the new beside the
old, so no key can say which code computed a result. Restarting the process is the fix.

Storage: ``$PAPERLAB_CACHE`` if set, else ``.cache/paperlab`` at the repository root (next to
``pyproject.toml``; ``~/.cache/paperlab`` for a non-editable install). Results made only of JSON types
(metrics, histories) are stored as ``<key>.json``; results holding tensors (trained weights, activations)
as ``<key>.pt`` written by ``torch.save`` and read back with ``weights_only=True`` (so a result must be
plain containers of tensors, numbers and strings). Next to each entry, ``<key>.meta.json`` holds the
description it hashes and the SHA-256 of the entry's bytes.

The cache never loses a computed result and never crashes a run:

- every write goes to a temporary file in the same folder and is then renamed over the target, so a
  crash never leaves half an entry; temporaries left by a killed writer (their process is gone, or they
  are older than a day) are removed by the next write to that folder;
- an entry that cannot be read, or whose bytes do not match the checksum in its meta file (truncated,
  overwritten, copied from elsewhere), is reported with a warning, deleted if possible, and recomputed;
- a cache that cannot be written (read-only, full, not a folder) is reported with a warning and the
  freshly computed result is returned all the same.

``make clean-cache`` empties the folder. ``PAPERLAB_CACHE_DISABLE=1`` bypasses the cache (always
recompute, never store).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import io
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch

from paperlab.config import config_to_dict
from paperlab.utils import launched_world_size

R = TypeVar("R")
FORMAT_VERSION = 1


def repository_root() -> Path | None:
    """The checkout this package was imported from (a folder with ``pyproject.toml``), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def disabled() -> bool:
    """Whether ``PAPERLAB_CACHE_DISABLE`` asks to bypass the cache: ``1``, ``true``, ``yes`` or ``on`` do;
    unset, empty, ``0``, ``false``, ``no`` or ``off`` do not; anything else is an error naming it."""
    value = os.environ.get("PAPERLAB_CACHE_DISABLE", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"PAPERLAB_CACHE_DISABLE must be 1/true/yes/on or 0/false/no/off (or unset), "
                     f"got {value!r}")


def cache_dir() -> Path:
    """Where entries live: ``$PAPERLAB_CACHE``, else ``<repo>/.cache/paperlab``."""
    env = os.environ.get("PAPERLAB_CACHE")
    if env:
        return Path(env).expanduser()
    root = repository_root()
    return (root / ".cache" / "paperlab") if root else Path.home() / ".cache" / "paperlab"


PACKAGES = ("paperlab", "paperlab_kernels")


@functools.lru_cache(maxsize=1)
def _package_dirs() -> dict[str, Path]:
    import paperlab
    import paperlab_kernels

    return {"paperlab": Path(paperlab.__file__).parent,
            "paperlab_kernels": Path(paperlab_kernels.__file__).parent}


def _module_path(name: str) -> Path | None:
    """The file of module ``name`` of our packages (``a/b.py`` or ``a/b/__init__.py``), else None."""
    top, *rest = name.split(".")
    if top not in PACKAGES:
        return None
    base = _package_dirs()[top].joinpath(*rest)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(source: str, module: str = "", is_package: bool = False) -> set[str]:
    """Names of our packages' modules that ``source`` imports (``import x``, ``from x import y``,
    relative imports resolved against ``module``), including parent packages, which an import runs."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # "from pkg import submodule"
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if _module_path(prefix) is not None:
                found.add(prefix)
    return found


def code_closure(roots: Iterable[str]) -> list[Path]:
    """Files of the modules ``roots`` and of everything of our packages they import, transitively."""
    seen: set[str] = set()
    stack = [r for r in roots if _module_path(r) is not None]
    for root in roots:
        parts = root.split(".")
        stack += [".".join(parts[:i]) for i in range(1, len(parts)) if _module_path(".".join(parts[:i]))]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_path(name)
        stack += imported_modules(path.read_text(), name, path.name == "__init__.py") - seen
    return sorted(_module_path(name) for name in seen)


def _all_files() -> list[Path]:
    return sorted(p for d in _package_dirs().values() for p in d.rglob("*.py"))


class CodeChangedError(RuntimeError):
    """A file of our packages changed on disk after this process loaded it (see the module docstring)."""


def _fingerprint(path: Path) -> tuple[int, int, bytes]:
    """(mtime in ns, size, SHA-256 of the bytes) of ``path`` now."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size, hashlib.sha256(path.read_bytes()).digest()


def _snapshot() -> dict[Path, tuple[int, int, bytes]]:
    """Every ``.py`` file of both packages as it is now: taken when this module is imported."""
    return {path: _fingerprint(path) for path in _all_files()}


_LOADED = _snapshot()


def _loaded_digest(path: Path) -> bytes:
    """The SHA-256 of ``path``'s bytes as this process loaded them (a file not seen at import: as first
    read here); CodeChangedError if the file on disk no longer has them. A file only touched (new mtime,
    same bytes) is fine."""
    try:
        stat = path.stat()
        if path not in _LOADED:
            _LOADED[path] = _fingerprint(path)
        mtime, size, digest = _LOADED[path]
        if (stat.st_mtime_ns, stat.st_size) != (mtime, size):
            now = _fingerprint(path)
            if now[2] != digest:
                raise CodeChangedError(f"{_name(path)} changed on disk after this process loaded it: "
                                       "restart the kernel (or rerun the command) so that results are "
                                       "computed and cached by the code on disk")
            _LOADED[path] = now
        return digest
    except FileNotFoundError:
        raise CodeChangedError(f"{_name(path)} was deleted after this process loaded it: restart the "
                               "kernel (or rerun the command)") from None


def _name(path: Path) -> str:
    return str(path.relative_to(_top_dir(path)))


def _named_files(roots: tuple[str, ...] | None) -> tuple[tuple[Path, str], ...]:
    """(file, its name in the hash, e.g. ``paperlab/nn.py``) for the code of ``roots``."""
    files = _all_files() if roots is None else code_closure(roots)
    return tuple((path, _name(path)) for path in files)


_code_files = functools.lru_cache(maxsize=64)(_named_files)  # the files of roots, as first found here


def source_hash(roots: tuple[str, ...] | None = None, *, on_disk: bool = False) -> str:
    """SHA-256 over the path and bytes of the code that ``roots`` depend on (:func:`code_closure`), or
    of every ``.py`` file of both packages when ``roots`` is None: the bytes this process loaded
    (:class:`CodeChangedError` if a file has changed on disk since), or with ``on_disk=True`` the files as
    they are now (for a tool that starts fresh processes on them, such as ``tools/book.py``)."""
    files = _named_files(roots) if on_disk else _code_files(roots)
    digest = hashlib.sha256()
    for path, name in files:
        digest.update(name.encode())  # e.g. "paperlab/nn.py"
        digest.update(b"\0")
        digest.update(_fingerprint(path)[2] if on_disk else _loaded_digest(path))
        digest.update(b"\0")
    return digest.hexdigest()


def _top_dir(path: Path) -> Path:
    for directory in _package_dirs().values():
        if directory in path.parents:
            return directory.parent
    raise ValueError(f"{path} is not in paperlab or paperlab_kernels")


def cache_key(name: str, config: Any, seed: int | None = None,
              code: tuple[str, ...] | None = None) -> tuple[str, dict]:
    """The entry's key (24 hex digits) and the description it hashes; ``code``: see :func:`cached`."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"cache name must be a non-empty file-name-like string, got {name!r}")
    description = {
        "name": name,
        "config": config_to_dict(config),
        "seed": seed,
        "code": list(code) if code is not None else "all",
        "source": source_hash(code),
        "format": FORMAT_VERSION,
    }
    world_size = launched_world_size()
    if world_size > 1:  # data-parallel training on several processes computes another result
        description["world_size"] = world_size
    blob = json.dumps(description, sort_keys=True, allow_nan=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24], description


def _caller_code(depth: int) -> tuple[str, ...] | None:
    """The calling module as the code root, if it is one of ours (else None: all of the packages)."""
    frame = inspect.currentframe()
    for _ in range(depth + 1):
        frame = frame.f_back if frame is not None else None
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return (module,) if _module_path(module) is not None else None


def _is_json_value(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_value(v) for k, v in value.items())
    return False


STALE_SECONDS = 24 * 3600
"""A temporary file this old is a killed writer's, whichever process wrote it."""

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[^.]*\.tmp$")


def _writer_alive(name: str) -> bool:
    """Is the process that writes the temporary file ``name`` (``.<entry>.<host>-<pid>.<random>.tmp``)
    still running? Unknown (another machine, an unparsable name) counts as alive."""
    match = _TEMPORARY.search(name)
    if match is None or match["host"] != _HOST:
        return True
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or not a pid
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files in ``folder`` that a killed writer left behind (its process is gone, or
    the file is older than :data:`STALE_SECONDS`); returns those deleted. Never raises."""
    removed = []
    try:
        candidates = list(folder.glob(".*.tmp"))
    except OSError:
        return removed
    now = time.time()
    for path in candidates:
        try:
            if not _writer_alive(path.name) or now - path.stat().st_mtime > STALE_SECONDS:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{_HOST}-{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _entry_paths(name: str, key: str) -> dict[str, Path]:
    folder = cache_dir() / name
    return {"json": folder / f"{key}.json", "pt": folder / f"{key}.pt", "meta": folder / f"{key}.meta.json"}


class CorruptEntry(Exception):
    """An entry whose bytes are not what was stored (see :func:`_load`)."""


def _load(paths: dict[str, Path]) -> tuple[bool, Any]:
    """(found, value). Raises on an unreadable entry, and :class:`CorruptEntry` on one whose bytes do not
    match the checksum its meta file recorded (or that has no readable meta file)."""
    kind = "json" if paths["json"].is_file() else ("pt" if paths["pt"].is_file() else None)
    if kind is None:
        return False, None
    data = paths[kind].read_bytes()
    try:
        meta = json.loads(paths["meta"].read_text())
    except (OSError, ValueError) as err:
        raise CorruptEntry(f"its meta file is missing or unreadable ({type(err).__name__})") from None
    expected = meta.get("sha256", {}).get(kind) if isinstance(meta, dict) else None
    if expected != hashlib.sha256(data).hexdigest():
        raise CorruptEntry(f"its {kind} file does not match the checksum in its meta file")
    if kind == "json":
        return True, json.loads(data)["result"]
    return True, torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _warn(message: str) -> None:
    warnings.warn(f"paperlab cache: {message}", RuntimeWarning, stacklevel=3)


def has_keys(*keys: str) -> Callable[[Any], None]:
    """A ``check`` for :func:`cached`: the value is a dict holding ``keys`` (e.g. ``"state_dict"``)."""

    def check(value: Any) -> None:
        missing = [k for k in keys if not (isinstance(value, dict) and k in value)]
        if missing:
            raise CorruptEntry(f"the stored value lacks the key(s) {missing}")

    return check


def lookup(name: str, config: Any, seed: int | None = None, code: tuple[str, ...] | None = None,
           check: Callable[[Any], Any] | None = None) -> tuple[bool, Any]:
    """(found, value) for an entry, without computing; a corrupt entry, or one whose value ``check``
    rejects (raises on), counts as not found."""
    key, _ = cache_key(name, config, seed, code)
    paths = _entry_paths(name, key)
    try:
        found, value = _load(paths)
        if found and check is not None:
            check(value)
        return found, value
    except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed
        undeleted = []
        for path in paths.values():
            try:
                path.unlink(missing_ok=True)
            except OSError:
                undeleted.append(path.name)
        note = f"; could not delete {', '.join(undeleted)} (read-only cache?)" if undeleted else ""
        _warn(f"entry {name}/{key} is unreadable ({type(err).__name__}: {err}); it will be recomputed{note}")
        return False, None


def store(name: str, config: Any, value: Any, seed: int | None = None,
          code: tuple[str, ...] | None = None) -> Path:
    """Write ``value`` atomically as the entry for (name, config, seed, code); returns its path.

    The value is serialised in memory, its checksum written in the meta file, and only then the value
    file: a value file on disk always has the meta file it must match (a reader never sees a new value
    before its checksum). Raises OSError when the cache cannot be written (:func:`cached` warns instead).
    """
    key, description = cache_key(name, config, seed, code)
    paths = _entry_paths(name, key)
    remove_stale_temporaries(paths["meta"].parent)
    kind, other = ("json", "pt") if _is_json_value(value) else ("pt", "json")
    if kind == "json":
        data = json.dumps({"result": value}).encode()
    else:
        buffer = io.BytesIO()
        torch.save(value, buffer)
        data = buffer.getvalue()
    meta = {**description, "sha256": {kind: hashlib.sha256(data).hexdigest()}}
    _atomic_write(paths["meta"], lambda h: json.dump(meta, h, indent=1, sort_keys=True), "w")
    _atomic_write(paths[kind], lambda h: h.write(data), "wb")
    paths[other].unlink(missing_ok=True)
    return paths[kind]


def cached(name: str, config: Any, compute: Callable[[], R], *, seed: int | None = None,
           refresh: bool = False, code: str | tuple[str, ...] | None = None,
           check: Callable[[Any], Any] | None = None) -> R:
    """Return the stored result of ``compute()`` for (name, config, seed, code), computing it if needed.

    ``code``: the module(s) whose source, with everything of ours they import, the result depends on;
    by default the module that calls ``cached`` (all of both packages when that is not one of ours).
    ``refresh=True`` (or ``PAPERLAB_CACHE_DISABLE=1``) recomputes; the former also overwrites the entry.
    ``check``: called on a value read from the cache; if it raises, the entry is treated as corrupt
    (warned about, deleted, recomputed), e.g. ``check=has_keys("state_dict", "history")``.
    """
    code = (code,) if isinstance(code, str) else (tuple(code) if code is not None else _caller_code(1))
    off = disabled()
    if not (refresh or off):
        found, value = lookup(name, config, seed, code, check)
        if found:
            return value
    value = compute()
    if _is_json_value(value):
        value = json.loads(json.dumps(value))  # same types (lists, str keys) as a later cache hit
    if not off:
        try:
            store(name, config, value, seed, code)
        except OSError as err:  # never lose a finished computation to the cache
            _warn(f"could not store {name} in {cache_dir()} ({type(err).__name__}: {err}); the result is "
                  "returned but not cached (set PAPERLAB_CACHE to a writable folder to keep it)")
    return value


def clear(name: str | None = None) -> None:
    """Delete every entry (or those of one experiment ``name``)."""
    target = cache_dir() / name if name else cache_dir()
    shutil.rmtree(target, ignore_errors=True)
