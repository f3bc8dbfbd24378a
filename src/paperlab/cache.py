"""The artifact cache: expensive runs are computed once per (experiment, config, seed, code).

A chapter calls ``cached(name, config, compute)``; the first call runs ``compute()`` and stores what it
returns, later calls load it. The key hashes

- the experiment ``name`` and its ``config`` (a dataclass, via :func:`paperlab.config.config_to_dict`),
- the ``seed``,
- the source of the whole package (every ``.py`` file of ``paperlab`` and ``paperlab_kernels``),

so editing any of the package's code recomputes every entry: stale results can never be shown.

Storage: ``$PAPERLAB_CACHE`` if set, else ``.cache/paperlab`` at the repository root (next to
``pyproject.toml``; ``~/.cache/paperlab`` for a non-editable install). Results made only of JSON types
(metrics, histories) are stored as ``<key>.json``; results holding tensors (trained weights, activations)
as ``<key>.pt`` written by ``torch.save`` and read back with ``weights_only=True`` (so a result must be
plain containers of tensors, numbers and strings). Every write goes to a temporary file in the same
folder and is then renamed over the target, so a crash never leaves half an entry; an entry that cannot
be read is reported with a warning, deleted and recomputed, never a crash. ``make clean-cache`` empties
the folder. ``PAPERLAB_CACHE_DISABLE=1`` bypasses the cache (always recompute, never store).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from paperlab.config import config_to_dict

R = TypeVar("R")
FORMAT_VERSION = 1


def repository_root() -> Path | None:
    """The checkout this package was imported from (a folder with ``pyproject.toml``), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def cache_dir() -> Path:
    """Where entries live: ``$PAPERLAB_CACHE``, else ``<repo>/.cache/paperlab``."""
    env = os.environ.get("PAPERLAB_CACHE")
    if env:
        return Path(env).expanduser()
    root = repository_root()
    return (root / ".cache" / "paperlab") if root else Path.home() / ".cache" / "paperlab"


def _package_dirs() -> list[Path]:
    import paperlab
    import paperlab_kernels

    return [Path(paperlab.__file__).parent, Path(paperlab_kernels.__file__).parent]


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """SHA-256 over the path and bytes of every ``.py`` file of both packages (sorted)."""
    digest = hashlib.sha256()
    for package in _package_dirs():
        for path in sorted(package.rglob("*.py")):
            digest.update(str(path.relative_to(package.parent)).encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def cache_key(name: str, config: Any, seed: int | None = None) -> tuple[str, dict]:
    """The entry's key (24 hex digits) and the description it hashes."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"cache name must be a non-empty file-name-like string, got {name!r}")
    description = {
        "name": name,
        "config": config_to_dict(config),
        "seed": seed,
        "source": source_hash(),
        "format": FORMAT_VERSION,
    }
    blob = json.dumps(description, sort_keys=True, allow_nan=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24], description


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


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def _load(paths: dict[str, Path]) -> tuple[bool, Any]:
    """(found, value). Raises on an unreadable entry."""
    if paths["json"].is_file():
        with open(paths["json"]) as handle:
            return True, json.load(handle)["result"]
    if paths["pt"].is_file():
        return True, torch.load(paths["pt"], map_location="cpu", weights_only=True)
    return False, None


def lookup(name: str, config: Any, seed: int | None = None) -> tuple[bool, Any]:
    """(found, value) for an entry, without computing; a corrupt entry counts as not found."""
    key, _ = cache_key(name, config, seed)
    paths = _entry_paths(name, key)
    try:
        return _load(paths)
    except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed
        warnings.warn(
            f"paperlab cache: entry {name}/{key} is unreadable ({type(err).__name__}: {err}); "
            "it will be recomputed",
            RuntimeWarning,
            stacklevel=2,
        )
        for path in paths.values():
            path.unlink(missing_ok=True)
        return False, None


def store(name: str, config: Any, value: Any, seed: int | None = None) -> Path:
    """Write ``value`` atomically as the entry for (name, config, seed); returns its path."""
    key, description = cache_key(name, config, seed)
    paths = _entry_paths(name, key)
    _atomic_write(paths["meta"], lambda h: json.dump(description, h, indent=1, sort_keys=True), "w")
    if _is_json_value(value):
        _atomic_write(paths["json"], lambda h: json.dump({"result": value}, h), "w")
        paths["pt"].unlink(missing_ok=True)
        return paths["json"]
    _atomic_write(paths["pt"], lambda h: torch.save(value, h), "wb")
    paths["json"].unlink(missing_ok=True)
    return paths["pt"]


def cached(name: str, config: Any, compute: Callable[[], R], *, seed: int | None = None,
           refresh: bool = False) -> R:
    """Return the stored result of ``compute()`` for (name, config, seed, code), computing it if needed.

    ``refresh=True`` (or ``PAPERLAB_CACHE_DISABLE=1``) recomputes; the former also overwrites the entry.
    """
    disabled = os.environ.get("PAPERLAB_CACHE_DISABLE", "").strip() not in ("", "0")
    if not (refresh or disabled):
        found, value = lookup(name, config, seed)
        if found:
            return value
    value = compute()
    if _is_json_value(value):
        value = json.loads(json.dumps(value))  # same types (lists, str keys) as a later cache hit
    if not disabled:
        store(name, config, value, seed)
    return value


def clear(name: str | None = None) -> None:
    """Delete every entry (or those of one experiment ``name``)."""
    target = cache_dir() / name if name else cache_dir()
    shutil.rmtree(target, ignore_errors=True)
