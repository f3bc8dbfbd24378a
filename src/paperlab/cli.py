"""What the command lines (``python -m paperlab``, ``python -m paperlab.bench``) check before they work,
and how ``run --out`` writes its results.

Every check here raises :class:`UsageError` with a one-line message; the command prints it as
``error: <message>`` and exits with status 2 before any experiment or benchmark starts.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

DEVICE_TYPES = ("cpu", "cuda")


class UsageError(ValueError):
    """A bad command-line argument, found before any work."""


def check_device(name: str | None) -> str | None:
    """``name`` if it names a device this machine has (``cpu``, ``cuda``, ``cuda:1``...), None for the
    default; else a :class:`UsageError` saying what exists."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device; use cpu or cuda (cuda:N for GPU N)") from None
    if device.type not in DEVICE_TYPES:
        raise UsageError(f"--device {name!r}: only cpu and cuda are supported, not {device.type!r}")
    if device.type == "cpu" and device.index not in (None, 0):  # torch would quietly use the one CPU device
        raise UsageError(f"--device {name!r}: the CPU is one device (cpu); its cores are used by threads")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name!r}: CUDA is not available on this machine (no GPU, or a "
                             "CPU-only build of PyTorch); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name!r}: this machine has {count} CUDA device(s), cuda:0 to "
                             f"cuda:{count - 1}")
    return name


def prepare_output(folder: str | Path, filename: str) -> Path:
    """The path ``folder/filename`` for a results file, after making ``folder`` and checking that a file can
    be written there (so that a finished run is never lost to a bad ``--out``); a :class:`UsageError`
    otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {str(folder)!r} is a file, not a folder; give a folder for the results")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".paperlab-write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"--out {str(folder)!r} is not a writable folder ({err.strerror or err})") from None
    path = folder / filename
    if path.is_dir():
        raise UsageError(f"--out: {str(path)!r} is a folder; the results file cannot be written there")
    return path


def write_json(path: Path, record: Any) -> Path:
    """Write ``record`` as JSON to ``path`` atomically (a temporary file renamed over it). If that fails
    (the disk filled up during the run, the folder went away), write it to the system's temporary folder
    instead and return that path, so the results are not lost; the caller reports where they went."""
    text = json.dumps(record, indent=1, default=str)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
    except OSError:
        fd, fallback = tempfile.mkstemp(prefix=f"{path.stem}-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return Path(fallback)


def is_timing_key(key: str) -> bool:
    """Wall-clock fields follow one naming rule across the experiments: ``seconds`` or ``*_seconds``."""
    return key == "seconds" or key.endswith("_seconds")


def split_timings(results: Any, subtrees: Iterable[str] = (), _path: str = "") -> tuple[Any, Any]:
    """``(results without wall-clock fields, the wall-clock fields)``, so that two runs' ``results`` can be
    compared bit for bit while their timings differ.

    A wall-clock field is a key for which :func:`is_timing_key` holds, or a subtree whose dotted path
    (list indices left out) is in ``subtrees``, such as a cost sweep that only holds timings. The timings
    mirror the nesting of the results: a dict keeps the keys that hold timings, a list keeps its length
    (``None`` for an item without any); ``None`` when there are none at all.
    """
    subtrees = frozenset(subtrees)
    if isinstance(results, dict):
        kept, timed = {}, {}
        for key, value in results.items():
            path = f"{_path}.{key}" if _path else str(key)
            if is_timing_key(str(key)) or path in subtrees:
                timed[key] = value
                continue
            kept[key], inner = split_timings(value, subtrees, path)
            if inner is not None:
                timed[key] = inner
        return kept, (timed or None)
    if isinstance(results, (list, tuple)):
        pairs = [split_timings(value, subtrees, _path) for value in results]
        timed = [inner for _, inner in pairs]
        return [kept for kept, _ in pairs], (timed if any(t is not None for t in timed) else None)
    return results, None
