"""Profiles: one switch that scales every experiment in the book.

``PAPERLAB_PROFILE`` chooses the profile:

- ``fast``: what CI executes; each chapter runs in at most 60 s on 2 CPU cores. Small models, few steps.
  Numbers from this profile check that the code runs end to end, not that a claim holds.
- ``full`` (the default): what the rendered book shows; each chapter runs in at most 8 minutes cold on
  2 CPU cores, and in seconds once its expensive runs are in the cache (:mod:`paperlab.cache`).

Each experiment has one config dataclass and one instance per profile; its ``EXPERIMENT.config()``
(:meth:`paperlab.experiments.Experiment.config`) chooses, through :func:`pick`.

Every config dataclass checks its fields in ``__post_init__`` with the ``check_*`` helpers below, so a bad
value (from a constructor call or a ``--set field=value`` override) is one ``ValueError`` naming the class,
the field, what was expected and what was given, before any work starts::

    def __post_init__(self):
        check_ints(self, "d_model", "n_layers")                     # positive integers
        check_numbers(self, "val_fraction", low=0, high=1, open_low=True, open_high=True)
        check_that(self, self.d_model % self.n_heads == 0, "n_heads", "a divisor of d_model")
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable
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


# ------------------------------------------------------------------------------------------- validation
def is_int(value: Any) -> bool:
    """A Python int that is not a bool (``True`` is an int to Python, never a size to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)  # (a huge int is finite, but not a float)


def invalid(config: Any, name: str, expected: str) -> ValueError:
    """``ValueError("<Class>.<name> must be <expected>, got <value>")`` for field ``name`` of ``config``."""
    value = getattr(config, name)
    return ValueError(f"{type(config).__name__}.{name} must be {expected}, got {value!r}")


def check_that(config: Any, ok: bool, name: str, expected: str) -> None:
    """Raise :func:`invalid` for ``name`` unless ``ok`` (for checks that involve several fields)."""
    if not ok:
        raise invalid(config, name, expected)


def _int_text(low: int | None, high: int | None, plural: bool = False) -> str:
    """"a positive integer", "an integer in [0, 5]", ... (or the plural, for the items of a tuple)."""
    if high is None and low in (0, 1):
        kind = "positive" if low == 1 else "non-negative"
        return f"{kind} integers" if plural else f"a {kind} integer"
    noun = "integers" if plural else "an integer"
    if low is not None and high is not None:
        return f"{noun} in [{low}, {high}]"
    if low is not None:
        return f"{noun} >= {low}"
    return f"{noun} <= {high}" if high is not None else noun


def _number_text(low: float | None, high: float | None, open_low: bool, open_high: bool,
                 plural: bool = False) -> str:
    """"a finite number in (0, 1]", "finite numbers > 0", ..."""
    noun = "finite numbers" if plural else "a finite number"
    if low is not None and high is not None:
        return f"{noun} in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    if low is not None:
        return f"{noun} {'>' if open_low else '>='} {low}"
    if high is not None:
        return f"{noun} {'<' if open_high else '<='} {high}"
    return noun


def _int_ok(value: Any, low: int | None, high: int | None) -> bool:
    return is_int(value) and (low is None or value >= low) and (high is None or value <= high)


def _number_ok(value: Any, low: float | None, high: float | None, open_low: bool, open_high: bool) -> bool:
    if not is_number(value):
        return False
    if low is not None and (value <= low if open_low else value < low):
        return False
    return high is None or (value < high if open_high else value <= high)


def check_ints(config: Any, *names: str, low: int | None = 1, high: int | None = None,
               optional: bool = False) -> None:
    """Each field of ``names`` is an int in ``[low, high]`` (default: >= 1); ``optional``: or None."""
    expected = _int_text(low, high) + (", or None" if optional else "")
    for name in names:
        value = getattr(config, name)
        if not (_int_ok(value, low, high) or (optional and value is None)):
            raise invalid(config, name, expected)


def check_numbers(config: Any, *names: str, low: float | None = None, high: float | None = None,
                  open_low: bool = False, open_high: bool = False, optional: bool = False) -> None:
    """Each field of ``names`` is a finite number in the interval from ``low`` to ``high`` (closed unless
    ``open_low`` / ``open_high``); ``optional``: or None."""
    expected = _number_text(low, high, open_low, open_high) + (", or None" if optional else "")
    for name in names:
        value = getattr(config, name)
        if not (_number_ok(value, low, high, open_low, open_high) or (optional and value is None)):
            raise invalid(config, name, expected)


def check_flags(config: Any, *names: str) -> None:
    """Each field of ``names`` is a bool."""
    for name in names:
        if not isinstance(getattr(config, name), bool):
            raise invalid(config, name, "True or False")


def check_choice(config: Any, name: str, choices: Iterable[Any]) -> None:
    """Field ``name`` is one of ``choices``."""
    choices = tuple(choices)
    if getattr(config, name) not in choices:
        raise invalid(config, name, "one of " + ", ".join(map(repr, choices)))


def check_type(config: Any, name: str, cls: type) -> None:
    """Field ``name`` is an instance of ``cls`` (a nested config)."""
    if not isinstance(getattr(config, name), cls):
        raise invalid(config, name, f"a {cls.__name__}")


def _check_tuple(config: Any, name: str, ok, what: str, min_len: int) -> tuple:
    value = getattr(config, name)
    size = {0: "a tuple of", 1: "a non-empty tuple of"}.get(min_len, f"a tuple of at least {min_len}")
    if not isinstance(value, tuple) or len(value) < min_len or not all(ok(v) for v in value):
        raise invalid(config, name, f"{size} {what}")
    return value


def check_int_tuple(config: Any, name: str, *, low: int | None = 1, high: int | None = None,
                    min_len: int = 1) -> None:
    """Field ``name`` is a tuple of at least ``min_len`` ints in ``[low, high]``."""
    _check_tuple(config, name, lambda v: _int_ok(v, low, high), _int_text(low, high, plural=True), min_len)


def check_number_tuple(config: Any, name: str, *, low: float | None = None, high: float | None = None,
                       open_low: bool = False, open_high: bool = False, min_len: int = 1) -> None:
    """Field ``name`` is a tuple of at least ``min_len`` finite numbers in the given interval."""
    what = _number_text(low, high, open_low, open_high, plural=True)
    _check_tuple(config, name, lambda v: _number_ok(v, low, high, open_low, open_high), what, min_len)


def check_seeds(config: Any, name: str = "seeds", *, min_len: int = 1) -> None:
    """Field ``name`` is a tuple of at least ``min_len`` distinct seeds (ints in ``[0, 2**32)``): a repeated
    seed would count one run twice as if it were two independent ones."""
    value = _check_tuple(config, name, lambda v: _int_ok(v, 0, 2**32 - 1), "seeds (integers in [0, 2**32))",
                         min_len)
    check_that(config, len(set(value)) == len(value), name,
               "distinct seeds (a repeated seed counts one run twice)")


def check_str_tuple(config: Any, name: str, *, min_len: int = 1, length: int | None = None) -> None:
    """Field ``name`` is a tuple of at least ``min_len`` (or exactly ``length``) non-empty strings."""
    ok = lambda v: isinstance(v, str) and v != ""  # noqa: E731
    if length is None:
        _check_tuple(config, name, ok, "non-empty strings", min_len)
        return
    value = getattr(config, name)
    if not (isinstance(value, tuple) and len(value) == length and all(map(ok, value))):
        raise invalid(config, name, f"a tuple of {length} non-empty strings")
