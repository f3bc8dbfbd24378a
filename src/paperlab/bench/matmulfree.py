"""MatMul-free LM kernels: packed ternary GEMV/GEMM (int8 activations) vs torch fp32 ``F.linear``, and
the MLGRU recurrence.

Ternary product rows: ``baseline`` is ``torch`` (fp32 ``F.linear`` with a dense fp32 weight, the thing the
paper's kernel replaces); ``reference`` (unpack + float64 matmul) is not timed at 4096x4096. GB/s counts
the bytes each implementation must read: the weights (fp32: ``4 n k``; packed: ``n k / 4``) plus the
activations and the output, so the fraction of the copy bandwidth is comparable across rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from paperlab.bench import Context, Row, register
from paperlab_kernels import mlgru as mlgru_kernels
from paperlab_kernels import ternary as T


def _ternary_rows(ctx: Context, n: int, k: int, m: int) -> list[Row]:
    g = torch.Generator().manual_seed(0)
    w_t = torch.randint(-1, 2, (n, k), generator=g).to(torch.int8)
    q = torch.randint(-128, 128, (m, k), generator=g).to(torch.int8)
    s_x = torch.rand(m, 1, generator=g) + 1
    packed = T.pack_ternary(w_t).to(ctx.device)
    q, s_x = q.to(ctx.device), s_x.to(ctx.device)
    w_fp32 = (w_t.float() / 2.0).to(ctx.device)
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
        rows += ctx.rows("matmulfree", "ternary linear", shape, {impl: ms},
                         bytes_moved=weight_bytes + activation_bytes)
    for row in rows:
        row.speedup = times["torch"] / row.ms
    return rows


@register("matmulfree", "packed ternary GEMV/GEMM (add-only) vs fp32 F.linear; MLGRU recurrence")
def bench_matmulfree(ctx: Context) -> list[Row]:
    n = k = 1024 if ctx.quick else 4096
    rows = [row for m in (1, 16) for row in _ternary_rows(ctx, n, k, m)]
    batch, seq, d = (4, 64, 256) if ctx.quick else (8, 256, 1024)
    f = torch.rand(batch, seq, d, device=ctx.device)
    c = torch.randn(batch, seq, d, device=ctx.device)
    fns = {impl: (lambda impl=impl: mlgru_kernels.mlgru_scan(f, c, impl=impl)) for impl in ctx.impls}
    times = ctx.time(fns, repeats=min(ctx.repeats, 5))
    rows += ctx.rows("matmulfree", "mlgru fwd", f"{batch}x{seq}x{d} fp32", times,
                     bytes_moved=3 * f.numel() * 4)
    return rows
