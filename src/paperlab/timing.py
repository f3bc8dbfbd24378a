"""Timing functions against each other: :func:`time_interleaved`, the one timer of the benchmarks
(:mod:`paperlab.bench`) and of the chapters' own timings (the SSD chapter's cost sweep).

A module of its own, outside :mod:`paperlab.bench`, so that a chapter which times something depends on
this file alone: its cached runs do not recompute when a benchmark changes.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["Times", "time_interleaved"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Times(dict):
    """``{name: median ms}`` from :func:`time_interleaved`, with ``samples``: ``{name: [ms per round]}``.
    Round ``r`` of every function ran back to back, so rounds pair up across functions."""

    def __init__(self, medians: dict[str, float], samples: dict[str, list[float]]):
        super().__init__(medians)
        self.samples = samples


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    repeats: int = 20,
    warmup: int = 2,
    min_sample_s: float = 0.02,
) -> Times:
    """Median milliseconds per call of each function, timed round-robin (a :class:`Times`: the per-round
    samples come with it).

    After ``warmup`` untimed calls of each, every function gets an inner loop count such that one timed
    sample lasts about ``min_sample_s`` (so that fast GPU kernels are not lost in launch and timer noise);
    then ``repeats`` rounds each time every function once, in an order that rotates from round to round.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
        _synchronize(device)
    inner = {}
    for name in names:
        _synchronize(device)
        t0 = time.perf_counter()
        fns[name]()
        _synchronize(device)
        inner[name] = max(1, min(10_000, math.ceil(min_sample_s / max(time.perf_counter() - t0, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, n = fns[name], inner[name]
            _synchronize(device)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            _synchronize(device)
            samples[name].append((time.perf_counter() - t0) / n)
    ms = {name: [1e3 * t for t in s] for name, s in samples.items()}
    return Times({name: statistics.median(s) for name, s in ms.items()}, ms)
