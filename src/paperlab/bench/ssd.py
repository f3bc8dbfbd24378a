"""SSD chunked scan benchmark: PyTorch chunked reference, Numba chunked kernel (CPU) or Triton (CUDA), and
the compiled sequential scan (CPU).

Compute bound: rows report GFLOP/s as a fraction of the measured fp32 matmul rate. The chunked rows
count the flops of the chunked algorithm on dense blocks (:func:`paperlab_kernels.ssd.chunked_flops`;
the kernels skip part of the upper triangle of each chunk, so they do somewhat less than they are
credited with); the scan row counts the recurrence's own ``6 T P N`` flops per (batch, head)
(:func:`paperlab_kernels.ssd.scan_flops`), which is fewer: its speed-up is against the same reference.
Bytes: the inputs and the output once (``x``, ``dt``, ``B``, ``C``, ``y``), for the roofline's intensity.
Shapes: batch 2, 8 heads, T 4096, P = N = Q = 64 on the CPU; on CUDA batch 16 at T 4096 and batch 16,
16 heads at T 8192 (512 MiB of ``x``), so that a call is far past the L2 cache.
"""

from __future__ import annotations

import torch

from paperlab.bench import Context, Row, Times, register
from paperlab_kernels import ssd as kernels


def _inputs(ctx: Context, batch, seqlen, nheads, headdim, d_state):
    g = torch.Generator(device=ctx.device).manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, device=ctx.device, generator=g)

    x = rand(batch, seqlen, nheads, headdim)
    dt = torch.nn.functional.softplus(rand(batch, seqlen, nheads) - 1.0)
    A = -torch.linspace(0.1, 1.0, nheads, device=ctx.device)
    B, C = rand(batch, seqlen, 1, d_state), rand(batch, seqlen, 1, d_state)
    return x, dt, A, B, C, torch.ones(nheads, device=ctx.device)


def _cases(ctx: Context) -> list[tuple[int, int, int]]:
    """(batch, seqlen, nheads) with P = N = Q = 64."""
    if ctx.quick:
        return [(2, 1024, 8)]
    return [(16, 4096, 8), (16, 8192, 16)] if ctx.gpu else [(2, 4096, 8)]


def _bench_case(ctx: Context, batch: int, seqlen: int, nheads: int) -> list[Row]:
    headdim = d_state = chunk = 64
    inputs = _inputs(ctx, batch, seqlen, nheads, headdim, d_state)
    shape = f"b{batch} T{seqlen} h{nheads} P{headdim} N{d_state} Q{chunk} fp32"
    fns = {impl: (lambda impl=impl: kernels.ssd_chunked(*inputs, chunk_size=chunk, impl=impl))
           for impl in ctx.impls}
    if ctx.device.type == "cpu" and "numba" in ctx.impls:
        fns["scan-numba"] = lambda: kernels.ssd_scan_numba(*inputs)
    with torch.no_grad():
        times = ctx.time(fns)
    flops = kernels.chunked_flops(batch, seqlen, nheads, headdim, 1, d_state, chunk)
    io_bytes = 4.0 * batch * seqlen * (2 * nheads * headdim + nheads + 2 * d_state)
    chunked_times = Times({k: v for k, v in times.items() if k != "scan-numba"}, times.samples)
    rows = ctx.rows("ssd", "chunked fwd", shape, chunked_times, flops=flops, bytes_moved=io_bytes)
    if "scan-numba" in times:
        pair = Times({"reference": times["reference"], "scan-numba": times["scan-numba"]}, times.samples)
        scan = ctx.rows("ssd", "scan fwd", shape, pair, bytes_moved=io_bytes,
                        flops=kernels.scan_flops(batch, seqlen, nheads, headdim, d_state))
        rows.append(scan[1])
    return rows


@register("ssd", "SSD chunked scan forward (P = N = Q = 64): reference vs kernels vs scan")
def bench_ssd(ctx: Context) -> list[Row]:
    return [row for case in _cases(ctx) for row in _bench_case(ctx, *case)]
