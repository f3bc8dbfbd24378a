"""What the appendix "Kernels and speed" (``book/A1-kernels.md``) shows, computed here once.

* :data:`KERNELS`: the book's kernels, what each computes, its PyTorch reference twin and its benchmark.
* :func:`run_cpu`: every benchmark on this machine's CPU, when the book is built, through the artifact
  cache (the key holds the machine's CPU and thread count, the profile and the kernels' code, so another
  machine or changed code measures again).
* :func:`load_gpu`: the rows of the committed GPU results file (``data/bench/gpu.json``, made by
  ``tools/gpu-check.sh``), or ``None`` when no GPU session has made one.
* :func:`speed_rows`: issue 19's speed targets as claims, declared before the numbers, judged on a run:
  each speedup with a 95% percentile-bootstrap interval over the interleaved timing rounds (round ``r`` of
  the kernel and of its baseline ran back to back, so the rounds are resampled in pairs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from paperlab import cache
from paperlab.bench import Context, _cpu_name, machine_info, measure_machine, registry
from paperlab.bench._alloc import measure_allocation
from paperlab.config import pick
from paperlab.report import Claim, Row
from paperlab.stats import bootstrap
from paperlab.utils import reuse_freed_memory

__all__ = ["KERNELS", "BookBenchConfig", "CONFIGS", "config_for", "run_cpu", "load_gpu", "GPU_RESULTS",
           "find", "speedup", "speed_rows", "SPEED_TARGETS"]

GPU_RESULTS = Path(__file__).resolve().parents[3] / "data" / "bench" / "gpu.json"
"""The committed GPU results file (absent until a GPU session has run ``tools/gpu-check.sh``)."""


@dataclass(frozen=True)
class Kernel:
    name: str  # the public function of paperlab_kernels
    computes: str
    reference: str  # its PyTorch twin
    bench: str  # the benchmark (python -m paperlab.bench NAME) and the op of its rows
    op: str


KERNELS = [
    Kernel("rmsnorm.rms_norm", "RMSNorm of each row, forward and backward", "rms_norm_reference",
           "rmsnorm", "fwd"),
    Kernel("rmsnorm.rms_norm_quant", "RMSNorm, then per-row absmax int8 quantisation",
           "rms_norm_quant_reference", "rmsnorm", "quant"),
    Kernel("ternary.ternary_linear", "int8 activations times packed 2-bit ternary weights, rescaled",
           "torch F.linear on fp32 weights", "matmulfree", "ternary linear"),
    Kernel("mlgru.mlgru_scan", "the MLGRU gated recurrence h_t = f_t h_{t-1} + (1 - f_t) c_t",
           "mlgru_scan_reference (a loop over time)", "matmulfree", "mlgru fwd"),
    Kernel("moe.dispatch / moe.combine", "group tokens by expert within capacity; scatter the outputs back",
           "dispatch_reference / combine_reference", "moe", "dispatch+combine"),
    Kernel("sae.sparse_decode", "sum of k decoder rows weighted by the TopK values, forward and backward",
           "sparse_decode_reference (dense matmul)", "sae", "decode fwd+bwd"),
    Kernel("ssd.ssd_chunked", "the chunked SSD scan of Mamba-2 (forward)", "ssd_chunked_reference",
           "ssd", "chunked fwd"),
]


@dataclass(frozen=True)
class BookBenchConfig:
    """One CPU benchmark run for the book. ``machine`` and ``threads`` are part of the cache key, so a
    result is only reused on the machine that measured it."""

    quick: bool = False
    repeats: int = 10
    machine: str = ""
    threads: int = 0


CONFIGS = {"fast": BookBenchConfig(quick=True, repeats=3), "full": BookBenchConfig(quick=False, repeats=10)}


def config_for(profile: str | None = None) -> BookBenchConfig:
    """The profile's config, filled in with this machine's CPU and thread count."""
    base = pick(CONFIGS, profile)
    return BookBenchConfig(quick=base.quick, repeats=base.repeats, machine=_cpu_name(),
                           threads=torch.get_num_threads())


def run_cpu(config: BookBenchConfig) -> dict:
    """Every benchmark on the CPU (``{"machine": ..., "rows": [...]}``, as ``--out`` writes it), cached;
    measured, as by ``python -m paperlab.bench``, with freed memory kept for reuse
    (:func:`paperlab.utils.reuse_freed_memory`)."""

    benches = registry()

    def compute() -> dict:
        reused = reuse_freed_memory()
        ctx = Context(device=torch.device("cpu"), quick=config.quick, repeats=config.repeats)
        machine = {**machine_info(ctx.device), "quick": config.quick, "repeats": config.repeats,
                   "freed_memory_reused": reused}
        rows = measure_machine(ctx) + measure_allocation(ctx)
        for bench in benches.values():
            rows += bench.fn(ctx)
        return {"machine": machine, "rows": [row.to_dict() for row in rows]}

    # The benchmark modules are imported by name (registry), so name them: the key then covers them and
    # the kernels they import.
    code = (__name__, *sorted(bench.fn.__module__ for bench in benches.values()))
    return cache.cached("bench-cpu", config, compute, code=code)


def load_gpu(path: Path | str = GPU_RESULTS) -> dict | None:
    """The GPU results file as ``{"machine": ..., "rows": [...]}``, or None if there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    document = json.loads(path.read_text())
    if not {"machine", "rows"} <= set(document):
        raise ValueError(f"{path} is not a benchmark results file (needs 'machine' and 'rows')")
    return document


def find(results: dict, bench: str, op: str, shape: str, impl: str) -> dict | None:
    """The row of ``results`` for (bench, op, shape prefix, impl), or None."""
    for row in results["rows"]:
        if (row["bench"], row["op"], row["impl"]) == (bench, op, impl) and row["shape"].startswith(shape):
            return row
    return None


def _rounds(row: dict) -> np.ndarray:
    samples = row.get("samples")
    if not samples:
        raise ValueError(f"row {row['bench']} {row['op']} {row['impl']} has no per-round samples")
    return np.asarray(samples, dtype=float)


def speedup(baseline: dict, kernel: dict):
    """``median(baseline ms) / median(kernel ms)`` with a paired percentile bootstrap over the rounds."""
    a, b = _rounds(baseline), _rounds(kernel)
    n = min(a.size, b.size)
    return bootstrap((a[:n], b[:n]), lambda x, y: float(np.median(x) / np.median(y)), unit="timing rounds")


def bandwidth_fraction(kernel: dict, limit_gbps: float):
    """Fraction of the measured copy bandwidth, ``bytes / median(ms) / limit``, bootstrapped over rounds."""
    a = _rounds(kernel)
    return bootstrap(a, lambda x: float(kernel["bytes"] / (np.median(x) * 1e-3) / 1e9 / limit_gbps),
                     unit="timing rounds")


@dataclass(frozen=True)
class SpeedTarget:
    """One of issue 19's targets: a kernel against a baseline at a shape, on a CPU or a GPU."""

    claim: Claim
    device: str  # "cpu" or "cuda"
    bench: str
    op: str
    shape: str  # full-profile shape (a prefix of the row's shape)
    quick_shape: str | None  # the --quick shape that stands in for it in the fast profile (CPU only)
    kernel: str
    baseline: str | None  # None: the metric is the fraction of copy bandwidth


def _speedup_claim(what: str, baseline: str, times: float) -> Claim:
    return Claim(f"{what} is at least {times:g}x {baseline}",
                 metric=f"time per call (ms), {baseline} / kernel",
                 effect="speedup = median baseline time / median kernel time", smallest_effect=times,
                 fmt=".2f")


def _target(what, baseline, times, device, bench, op, shape, quick_shape, kernel, base_impl) -> SpeedTarget:
    return SpeedTarget(_speedup_claim(what, baseline, times), device, bench, op, shape, quick_shape, kernel,
                       base_impl)


F_LINEAR, REFERENCE = "torch fp32 F.linear", "the PyTorch reference"
SPEED_TARGETS = [
    _target("packed ternary linear, batch 1 (Numba)", F_LINEAR, 6.0, "cpu", "matmulfree", "ternary linear",
            "4096x4096 batch 1", "4096x4096 batch 1", "numba", "torch"),
    _target("packed ternary linear, batch 16 (Numba)", F_LINEAR, 1.0, "cpu", "matmulfree", "ternary linear",
            "4096x4096 batch 16", "4096x4096 batch 16", "numba", "torch"),
    _target("the chunked SSD scan (Numba)", "the PyTorch chunked reference", 3.0, "cpu", "ssd", "chunked fwd",
            "b2 T4096", "b2 T1024", "numba", "reference"),
    _target("packed ternary linear, batch 1, 16384 x 16384 (Triton)", F_LINEAR, 4.0, "cuda", "matmulfree",
            "ternary linear", "16384x16384 batch 1", None, "triton", "torch"),
    _target("packed ternary linear, batch 1, 4096 x 4096 (Triton)", F_LINEAR, 1.0, "cuda", "matmulfree",
            "ternary linear", "4096x4096 batch 1", None, "triton", "torch"),
    _target("packed ternary linear, batch 16, 16384 x 16384 (Triton)", F_LINEAR, 1.0, "cuda", "matmulfree",
            "ternary linear", "16384x16384 batch 16", None, "triton", "torch"),
    _target("MoE dispatch + combine, 65536 tokens, d 1024 (Triton)", REFERENCE, 1.5, "cuda", "moe",
            "dispatch+combine", "T65536", None, "triton", "reference"),
    _target("RMSNorm forward, 16384 x 8192 fp32 (Triton)", "torch's fused F.rms_norm", 1.0, "cuda", "rmsnorm",
            "fwd", "16384x8192 fp32", None, "triton", "torch"),
    SpeedTarget(Claim("RMSNorm forward, 16384 x 4096 bf16 (Triton), runs at >= 70% of copy bandwidth",
                      metric="achieved GB/s of the ideal traffic / measured copy GB/s",
                      effect="fraction of copy bandwidth", smallest_effect=0.7, fmt=".2f"),
                "cuda", "rmsnorm", "fwd", "16384x4096 bf16", None, "triton", None),
    _target("the sparse SAE decoder, forward + backward, 65536 latents (Triton)", "the dense reference", 1.0,
            "cuda", "sae", "decode fwd+bwd", "b4096 n65536", None, "triton", "reference"),
    _target("the chunked SSD scan, b16 T8192 h16 (Triton)", "the PyTorch chunked reference", 1.0, "cuda",
            "ssd", "chunked fwd", "b16 T8192", None, "triton", "reference"),
]
"""Issue 19's targets, declared before any number is read. The CPU ones are judged on the run made when
the book is built; the GPU ones on the committed GPU results file, or are not testable here without one."""


def _judge(target: SpeedTarget, results: dict, shape: str) -> Row:
    kernel = find(results, target.bench, target.op, shape, target.kernel)
    setting = f"{results['machine']['device_name']}, {target.bench} {shape}"
    if kernel is None:
        return target.claim.untestable(f"no {target.kernel} row for {target.bench} {shape} in the run",
                                       setting=setting)
    if target.baseline is None:
        limit = find(results, "machine", "copy", "", "memcpy")["gbps"]
        return target.claim.judge(bandwidth_fraction(kernel, limit), setting=setting)
    baseline = find(results, target.bench, target.op, shape, target.baseline)
    return target.claim.judge(speedup(baseline, kernel), setting=setting)


def speed_rows(cpu: dict, gpu: dict | None) -> list[Row]:
    """Every target judged: the CPU ones on ``cpu`` (at the quick stand-in shape if that run was quick,
    which its setting says), the GPU ones on ``gpu`` or not testable here without it."""
    rows = []
    for target in SPEED_TARGETS:
        if target.device == "cpu":
            quick = cpu["machine"].get("quick", False)
            rows.append(_judge(target, cpu, target.quick_shape if quick else target.shape))
        elif gpu is None:
            rows.append(target.claim.untestable(
                "no GPU results file yet: tools/gpu-check.sh on a GPU writes bench-gpu.json, to commit as "
                "data/bench/gpu.json",
                setting=f"{target.bench} {target.shape}"))
        else:
            rows.append(_judge(target, gpu, target.shape))
    return rows
