"""Kernel benchmarks, measured against this machine's own limits.

    python -m paperlab.bench                       # every benchmark, full shapes
    python -m paperlab.bench rmsnorm --quick       # one benchmark, small shapes (seconds)
    python -m paperlab.bench --json --device cpu   # JSON lines: the machine first, then one row per line
    python -m paperlab.bench --device cuda --out data/bench/gpu.json   # the whole run as one JSON file

Each run first measures two machine limits in the same process, as rows of bench ``machine``: copy
bandwidth (``memcpy``: a large tensor copy, bytes read + written, in GB/s) and float32 matmul throughput
(``matmul``: a square matmul, 2 n^3 flops, in GFLOP/s). Every kernel row then reports its time, its
speedup over the PyTorch reference, the work of one call (``flops``: arithmetic operations, integer
ones for the ternary product; ``bytes``: the ideal memory traffic, each input read and each output
written once), and what it achieved: GB/s, GFLOP/s, and the fraction of the **roofline**
``min(peak, intensity x bandwidth)`` at its arithmetic intensity ``flops / bytes`` (for a memory-bound
kernel, the fraction of the copy bandwidth; for a compute-bound one, of the matmul rate).
Implementations are timed interleaved: each repeat runs every implementation once, in rotating order, so
that clock and thermal drift hit all of them alike; warm-up calls (compilation included) are not timed;
the reported time is the median over repeats; CUDA is synchronised around every measurement.

On CUDA every benchmark adds GPU-sized shapes, large enough that one call moves well over the L2 cache
(tens of MB on current GPUs), to the CPU ones. :func:`machine_info` describes the machine, the date and
the library versions; ``--json`` and ``--out`` put it first, so that a results file says where it came
from.

Adding a benchmark (about 20 lines): create ``src/paperlab/bench/<name>.py``. Every module in this
package whose name does not start with ``_`` is imported on first use, and :func:`register` adds it::

    import torch

    from paperlab.bench import Context, Row, register
    from paperlab_kernels import sae  # your kernel module

    @register("sae", "TopK SAE encoder: reference vs kernels")
    def bench_sae(ctx: Context) -> list[Row]:
        n, d, k = (256, 512, 32) if ctx.quick else (4096, 2048, 64)
        x = torch.randn(n, d, device=ctx.device)
        fns = {impl: (lambda impl=impl: sae.topk_encode(x, k, impl=impl)) for impl in ctx.impls}
        times = ctx.time(fns)  # {impl: ms}, interleaved, median
        return ctx.rows("sae", "encode", f"{n}x{d}", times, bytes_moved=x.numel() * 4 * 2)

``ctx.impls`` lists the implementations that make sense on ``ctx.device`` (``reference`` first, then
``numba`` on CPU or ``triton`` on CUDA; the Triton interpreter is never timed). Give ``bytes_moved`` for a
memory-bound kernel or ``flops`` for a compute-bound one; ``ctx.rows`` fills in speedup and fractions.
"""

from __future__ import annotations

import datetime
import importlib
import os
import pkgutil
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from paperlab.timing import Times, time_interleaved
from paperlab_kernels._dispatch import available_impls

__all__ = ["Benchmark", "Context", "Row", "Times", "register", "registry", "measure_machine",
           "machine_info", "time_interleaved", "roofline"]


@dataclass
class Row:
    """One line of the results table (and one JSON object with ``--json``)."""

    bench: str
    op: str
    shape: str
    impl: str
    ms: float
    speedup: float | None = None  # reference ms / this ms
    gbps: float | None = None  # bytes / time
    gflops: float | None = None  # flops / time
    fraction: float | None = None  # of the roofline at this intensity (or of the machine limit itself)
    device: str = ""
    flops: float | None = None  # arithmetic operations of one call
    bytes: float | None = None  # ideal memory traffic of one call
    bound: str | None = None  # "memory" or "compute": which roof the fraction is of
    samples: list[float] | None = None  # ms per timed round (rounds are interleaved across impls)

    @property
    def intensity(self) -> float | None:
        """Arithmetic intensity, flops per byte of ideal traffic."""
        return self.flops / self.bytes if self.flops and self.bytes else None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Benchmark:
    name: str
    description: str
    fn: Callable[[Context], list[Row]]


_REGISTRY: dict[str, Benchmark] = {}
_LOADED = False


def register(name: str, description: str) -> Callable:
    """Decorator: register ``fn(ctx) -> list[Row]`` as benchmark ``name``."""

    def deco(fn: Callable[[Context], list[Row]]) -> Callable[[Context], list[Row]]:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"benchmark {name!r} is registered twice")
        _REGISTRY[name] = Benchmark(name, description, fn)
        return fn

    return deco


def registry() -> dict[str, Benchmark]:
    """All benchmarks, by name (imports every module of this package once)."""
    global _LOADED
    if not _LOADED:
        for module in pkgutil.iter_modules(__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
        _LOADED = True
    return dict(sorted(_REGISTRY.items()))


def roofline(intensity: float, gbps: float, gflops: float) -> float:
    """The attainable GFLOP/s at ``intensity`` flops per byte: ``min(peak, intensity x bandwidth)``."""
    return min(gflops, intensity * gbps)


@dataclass
class Context:
    """What a benchmark needs: where to run, how big, the machine limits, and timing helpers."""

    device: torch.device
    quick: bool = False
    repeats: int = 20
    limits: dict[str, float] = field(default_factory=dict)  # {"gbps": copy GB/s, "gflops": matmul GFLOP/s}

    @property
    def impls(self) -> list[str]:
        """Implementations worth timing on this device, ``"reference"`` first."""
        return available_impls(self.device)

    @property
    def gpu(self) -> bool:
        """True on CUDA: benchmarks add their GPU-sized shapes."""
        return self.device.type == "cuda"

    def time(self, fns: dict[str, Callable[[], object]], **kwargs) -> dict[str, float]:
        kwargs.setdefault("repeats", self.repeats)
        kwargs.setdefault("min_sample_s", 0.005 if self.quick else 0.02)
        return time_interleaved(fns, self.device, **kwargs)

    def rows(
        self,
        bench: str,
        op: str,
        shape: str,
        times: dict[str, float],
        *,
        bytes_moved: float | None = None,
        flops: float | None = None,
        baseline: str = "reference",
    ) -> list[Row]:
        """Rows for ``times`` ({impl: ms}), with speedup over ``baseline``, the work of one call
        (``bytes_moved``: ideal traffic; ``flops``: operations) and the achieved rates. The fraction is of
        the roofline at the call's intensity, ``max(GB/s / bandwidth, GFLOP/s / peak)`` (with only one of
        the two counts, of that one limit)."""
        out = []
        samples = getattr(times, "samples", {})
        for impl, ms in times.items():
            row = Row(bench, op, shape, impl, ms, device=str(self.device), flops=flops, bytes=bytes_moved,
                      samples=samples.get(impl))
            if baseline in times:
                row.speedup = times[baseline] / ms
            fractions = {}
            if bytes_moved is not None:
                row.gbps = bytes_moved / (ms * 1e-3) / 1e9
                if self.limits.get("gbps"):
                    fractions["memory"] = row.gbps / self.limits["gbps"]
            if flops is not None:
                row.gflops = flops / (ms * 1e-3) / 1e9
                if self.limits.get("gflops"):
                    fractions["compute"] = row.gflops / self.limits["gflops"]
            if fractions:
                row.bound = max(fractions, key=fractions.get)
                row.fraction = fractions[row.bound]
            out.append(row)
        return out


def measure_machine(ctx: Context) -> list[Row]:
    """Copy bandwidth and fp32 matmul throughput of ``ctx.device``; fills ``ctx.limits``; returns 2 rows."""
    dev = ctx.device
    cuda = dev.type == "cuda"
    mib = (256 if ctx.quick else 1024) if cuda else (64 if ctx.quick else 256)
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    copy_ms = ctx.time({"memcpy": lambda: dst.copy_(src)})["memcpy"]
    n = (2048 if ctx.quick else 8192) if cuda else (1024 if ctx.quick else 2048)
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    c = torch.empty(n, n, device=dev)
    mm_ms = ctx.time({"matmul": lambda: torch.mm(a, b, out=c)})["matmul"]
    copy_bytes = 2 * mib * 2**20  # read + write
    gbps = copy_bytes / (copy_ms * 1e-3) / 1e9
    gflops = 2 * n**3 / (mm_ms * 1e-3) / 1e9
    ctx.limits.update(gbps=gbps, gflops=gflops)
    tf32 = " tf32" if cuda and torch.backends.cuda.matmul.allow_tf32 else ""
    return [
        Row("machine", "copy", f"{mib} MiB", "memcpy", copy_ms, gbps=gbps, fraction=1.0, device=str(dev),
            bytes=copy_bytes),
        Row("machine", "matmul", f"{n}x{n}x{n} fp32{tf32}", "matmul", mm_ms, gflops=gflops, fraction=1.0,
            device=str(dev), flops=2.0 * n**3),
    ]


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # noqa: BLE001 - an optional or broken package is simply not reported
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def machine_info(device: torch.device) -> dict:
    """Where and when a run happened: the device's name, CPU and thread count, the date (UTC), the
    library versions and the repository commit. Written first by ``--json`` and ``--out``."""
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in ("torch", "triton", "numba", "numpy", "scipy")},
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "commit": _git_commit(),
        "argv": sys.argv[1:],
    }
    if device.type == "cpu":
        try:
            info["load_average"] = list(os.getloadavg())  # other processes' load inflates CPU timings
        except OSError:
            pass
    return info
