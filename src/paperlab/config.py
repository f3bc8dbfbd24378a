"""Profiles: one switch that scales every experiment in the book.

``PAPERLAB_PROFILE`` chooses the profile:

- ``fast``: what CI executes; each chapter runs in at most 60 s on 2 CPU cores. Small models, few steps.
  Numbers from this profile check that the code runs end to end, not that a claim holds.
- ``full`` (the default): what the rendered book shows; each chapter runs in at most 4 minutes cold on
  2 CPU cores, and in seconds once its expensive runs are in the cache (:mod:`paperlab.cache`).

Each experiment has one config dataclass and one instance per profile; its ``EXPERIMENT.config()``
(:meth:`paperlab.experiments.Experiment.config`) chooses, through :func:`pick`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, TypeVar

PROFILES: tuple[str, ...] = ("fast", "full")
DEFAULT_PROFILE = "full"
T = TypeVar("T")


def check_profile(name: str) -> str:
    """Return ``name`` if it is a valid profile, else raise a ValueError listing the valid ones."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid profiles are: {', '.join(PROFILES)}")
    return name


def current_profile() -> str:
    """The profile named by ``PAPERLAB_PROFILE`` (default ``full``), validated."""
    return check_profile(os.environ.get("PAPERLAB_PROFILE", DEFAULT_PROFILE).strip() or DEFAULT_PROFILE)


def pick(configs: dict[str, T], profile: str | None = None) -> T:
    """Choose the entry of ``configs`` (keyed by profile) for ``profile`` (default: the current one)."""
    profile = check_profile(profile) if profile is not None else current_profile()
    missing = [p for p in PROFILES if p not in configs]
    if missing:
        raise ValueError(f"configs lack the profile(s) {missing}; give one config per profile in {PROFILES}")
    return configs[profile]


def config_to_dict(config: Any) -> Any:
    """A JSON-able view of a config: dataclasses become dicts, tuples lists; used for cache keys."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        out = {"__class__": type(config).__qualname__}
        for field in dataclasses.fields(config):
            out[field.name] = config_to_dict(getattr(config, field.name))
        return out
    if isinstance(config, dict):
        return {str(k): config_to_dict(v) for k, v in sorted(config.items(), key=lambda kv: str(kv[0]))}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, (str, int, float, bool)) or config is None:
        return config
    raise TypeError(
        f"cannot use a {type(config).__name__} in an experiment config; use dataclasses, dicts, lists, "
        "str, int, float, bool or None"
    )
