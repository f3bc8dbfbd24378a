"""What an experiment is: each chapter's package module defines one :class:`Experiment` (a name, a config
per profile, and a ``run(config, device=None) -> dict`` returning JSON-able results) and lists it in
:data:`paperlab.registry.REGISTRY`. Chapters, tests and the command line get an experiment's config the
one way, ``EXPERIMENT.config()`` (the current profile) or ``EXPERIMENT.config("fast")``. :func:`override`
applies command-line ``--set field=value`` edits.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from paperlab.config import PROFILES, pick
from paperlab.utils import parallel_map


@dataclass(frozen=True)
class Experiment:
    """One chapter's headline run: ``run(configs[profile], device=...)`` returns JSON-able results.

    ``timings``: dotted paths of result subtrees that are wall-clock measurements (beyond the keys named
    ``seconds`` or ``*_seconds``, which always are); ``python -m paperlab run`` writes them apart from the
    results (see :func:`paperlab.cli.split_timings`). ``check``: what ``run`` needs of a config beyond the
    config's own validation, raising ValueError; ``python -m paperlab run`` calls it before running.
    """

    name: str
    chapter: str
    configs: dict[str, Any]
    run: Callable[..., dict]
    timings: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None

    def __post_init__(self) -> None:
        missing = [p for p in PROFILES if p not in self.configs]
        if missing:
            raise ValueError(f"experiment {self.name!r} has no config for profile(s) {missing}")

    def config(self, profile: str | None = None) -> Any:
        """The config of ``profile``, by default the current one (``PAPERLAB_PROFILE``, see
        :func:`paperlab.config.current_profile`)."""
        return pick(self.configs, profile)


def override(config: Any, assignments: list[str]) -> Any:
    """Apply ``field=value`` (or ``outer.inner=value``) assignments to a (nested) dataclass config.

    Values are parsed as JSON when possible (``3``, ``1e-3``, ``true``, ``[1, 2]``), else as a Python
    literal (``(1, 2)``, ``True``: the spelling the config prints), else kept as strings; a value must have
    the type of the field's current value (ints are accepted for floats, lists for tuples).
    """
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"override {assignment!r} is not of the form field=value")
        path, raw = assignment.split("=", 1)
        config = _replace_path(config, path.strip().split("."), _parse(raw), path)
    return config


def _parse(raw: str) -> Any:
    """An override's value: JSON, else a Python literal, else the string itself."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


def _replace_path(config: Any, parts: list[str], value: Any, full: str) -> Any:
    if not (dataclasses.is_dataclass(config) and not isinstance(config, type)):
        raise ValueError(f"cannot set {full!r}: {type(config).__name__} is not a config dataclass")
    fields = {f.name for f in dataclasses.fields(config)}
    head = parts[0]
    if head not in fields:
        raise ValueError(f"unknown config field {head!r} in {full!r}; fields: {', '.join(sorted(fields))}")
    current = getattr(config, head)
    if len(parts) > 1:
        return dataclasses.replace(config, **{head: _replace_path(current, parts[1:], value, full)})
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if current is not None and type(value) is not type(current):
        kind = type(current).__name__
        article = "an" if kind[0] in "aeiou" else "a"
        form = f", written like {list(current)!r}" if isinstance(current, tuple) and current else ""
        raise ValueError(f"{full} must be {article} {kind}{form} (current value {current!r}), got {value!r}")
    return dataclasses.replace(config, **{head: value})


def over_seeds(fn: Callable[..., Any], seeds: tuple[int, ...] | list[int], *args: Any,
               workers: int | None = None, desc: str = "seeds") -> list[Any]:
    """``[fn(seed, *args) for seed in seeds]``, one process per core (:func:`paperlab.utils.parallel_map`).

    The evidence standard asks for >= 3 independent runs per claim; this runs them side by side on both
    cores. ``fn`` must be a module-level function (the workers are spawned) that goes through the
    artifact cache itself (``cache.cached(name, config, compute, seed=seed)``), so a rerun loads every
    seed's result in seconds. Results come back in the order of ``seeds``; summarise them with
    :func:`paperlab.stats.over_seeds`.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("over_seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return parallel_map(fn, [(seed, *args) for seed in seeds], workers=workers, desc=desc)
