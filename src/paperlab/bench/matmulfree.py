"""MatMul-free LM kernels: packed ternary GEMV/GEMM (int8 activations) vs torch fp32 ``F.linear``, and
the MLGRU recurrence.

Ternary product rows: ``baseline`` is ``torch`` (fp32 ``F.linear`` with a dense fp32 weight, the thing the
paper's kernel replaces); ``reference`` (unpack + float64 matmul) is not timed. GB/s counts the bytes each
implementation must read: the weights (fp32: ``4 n k``; packed: ``n k / 4``) plus the activations and the
output, so the fraction of the copy bandwidth is comparable across rows; ``flops`` counts ``2 m n k``
operations (multiply-adds for fp32, additions for the ternary kernels). Shapes: 4096 x 4096 at batch 1
(a GEMV, where the packed weights' 16x smaller size should show) and 16, with ``--quick`` too; on CUDA
also 16384 x 16384 (1 GiB of fp32 weights against 64 MiB packed, far past the L2 cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from paperlab.bench import Context, Row, Times, register
from paperlab_kernels import mlgru as mlgru_kernels
from paperlab_kernels import ternary as T


def _ternary_rows(ctx: Context, n: int, k: int, m: int) -> list[Row]:
    g = torch.Generator(device=ctx.device).manual_seed(0)
    w_t = torch.randint(-1, 2, (n, k), generator=g, device=ctx.device, dtype=torch.int8)
    q = torch.randint(-128, 128, (m, k), generator=g, device=ctx.device, dtype=torch.int8)
    s_x = torch.rand(m, 1, generator=g, device=ctx.device) + 1
    packed = T.pack_ternary(w_t)
    w_fp32 = w_t.float() / 2.0
    del w_t
    x_fp32 = q.float() / s_x
    fns = {"torch": lambda: F.linear(x_fp32, w_fp32)}
    for impl in ctx.impls[1:]:  # numba on CPU, triton on CUDA
        fns[impl] = lambda impl=impl: T.ternary_linear(q, s_x, packed, 2.0, k, impl=impl)
    times = ctx.time(fns)
    shape = f"{n}x{k} batch {m}"
    rows = []
    for impl, ms in times.items():
        weight_bytes = 4 * n * k if impl == "torch" else packed.numel()
        activation_bytes = m * k * (4 if impl == "torch" else 1) + 4 * m * n
        one = Times({impl: ms}, {impl: times.samples[impl]})
        rows += ctx.rows("matmulfree", "ternary linear", shape, one,
                         bytes_moved=weight_bytes + activation_bytes, flops=2.0 * m * n * k)
    for row in rows:
        row.speedup = times["torch"] / row.ms
    return rows


def _sizes(ctx: Context) -> list[int]:
    """4096 x 4096 always (its fp32 weights, 64 MiB, are past a CPU's caches: a smaller matrix would sit
    in cache and measure something else; the product takes milliseconds, so --quick keeps it)."""
    return [4096, 16384] if ctx.gpu and not ctx.quick else [4096]


@register("matmulfree", "packed ternary GEMV/GEMM (add-only) vs fp32 F.linear; MLGRU recurrence")
def bench_matmulfree(ctx: Context) -> list[Row]:
    rows = [row for n in _sizes(ctx) for m in (1, 16) for row in _ternary_rows(ctx, n, n, m)]
    if ctx.quick:
        batch, seq, d = 4, 64, 256
    else:
        batch, seq, d = (16, 1024, 4096) if ctx.gpu else (8, 256, 1024)
    f = torch.rand(batch, seq, d, device=ctx.device)
    c = torch.randn(batch, seq, d, device=ctx.device)
    fns = {impl: (lambda impl=impl: mlgru_kernels.mlgru_scan(f, c, impl=impl)) for impl in ctx.impls}
    times = ctx.time(fns, repeats=min(ctx.repeats, 5))
    rows += ctx.rows("matmulfree", "mlgru fwd", f"{batch}x{seq}x{d} fp32", times,
                     bytes_moved=3 * f.numel() * 4, flops=4.0 * f.numel())
    return rows
