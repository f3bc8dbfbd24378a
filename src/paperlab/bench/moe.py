"""MoE dispatch + combine (NLLB / GShard top-2 routing): PyTorch reference vs kernels vs the per-token loop.

Shapes: 8192 tokens, d 512, 8 experts, top-2, capacity factor 1.25, so
``C = ceil(1.25 * 2 * 8192 / 8) = 2560`` slots per expert; fp32 (``--quick``: 1024 tokens, d 128); on CUDA
also 65536 tokens, d 1024 (256 MiB of tokens, 640 MiB of expert buffers: far past the L2 cache). Routing
is the top-2 of random logits (about uniform load, so few tokens are dropped), and the expert is the
identity, so that the rows measure only the data movement: ``y = combine(dispatch(x))``.

Memory bound (see :mod:`paperlab_kernels.moe`), so rows report effective bandwidth from the ideal traffic,
``n_kept`` kept (token, choice) pairs, ``d``-float rows of 4 bytes:

* forward: dispatch reads ``n_kept`` token rows and writes all ``E C`` buffer rows; combine reads ``n_kept``
  buffer rows and writes ``T`` output rows;
* backward: combine's backward writes ``E C`` gradient rows from ``n_kept`` rows of ``dL/dy`` and reads
  ``2 n_kept`` rows for the gate gradients; dispatch's backward reads ``n_kept`` rows, writes ``T``.

Flops: the gate's multiply-add in combine, ``2 n_kept d`` forward; ``6 n_kept d`` forward + backward.
No call synchronises the GPU (the routing's value checks run on CPU tensors or in debug mode).

The naive per-token loop (:func:`paperlab_kernels.moe.dispatch_combine_loop`) runs Python per token, so it
is timed with 3 repeats only (its row says so), at the CPU shapes only; its speedup column shows how much
slower it is.
"""

from __future__ import annotations

import torch

from paperlab.bench import Context, Row, Times, register
from paperlab_kernels import moe as kernels


def _cases(ctx: Context) -> list[tuple[int, int, int, int, float]]:
    if ctx.quick:
        return [(1024, 128, 8, 2, 1.25)]
    cases = [(8192, 512, 8, 2, 1.25)]
    return cases + [(65536, 1024, 8, 2, 1.25)] if ctx.gpu else cases


def _bench_case(ctx: Context, n_tokens: int, d: int, n_experts: int, k: int, factor: float,
                with_loop: bool) -> list[Row]:
    capacity = kernels.capacity_for(n_tokens, n_experts, k, factor)
    dev = ctx.device
    g = torch.Generator(device=dev).manual_seed(0)
    logits = torch.randn(n_tokens, n_experts, device=dev, generator=g)
    gate, expert_index = logits.softmax(-1).topk(k, dim=1)
    slot = kernels.assign_slots(expert_index, n_experts, capacity)
    x = torch.randn(n_tokens, d, device=dev, generator=g).requires_grad_()
    gate = gate.contiguous().requires_grad_()
    grad_y = torch.randn(n_tokens, d, device=dev, generator=g)
    n_kept = int((slot >= 0).sum())
    rows_c = n_experts * capacity
    row_bytes = 4.0 * d
    fwd_bytes = row_bytes * (2 * n_kept + rows_c + n_tokens)
    bwd_bytes = row_bytes * (4 * n_kept + rows_c + n_tokens)
    dropped = 100.0 * (1 - n_kept / (n_tokens * k))
    shape = f"T{n_tokens} d{d} E{n_experts} k{k} C{capacity} ({dropped:.1f}% dropped) fp32"

    def forward(impl):
        with torch.no_grad():
            buffer = kernels.dispatch(x, expert_index, slot, n_experts, capacity, impl=impl)
            return kernels.combine(buffer, expert_index, slot, gate, impl=impl)

    def fwd_bwd(impl):
        buffer = kernels.dispatch(x, expert_index, slot, n_experts, capacity, impl=impl)
        y = kernels.combine(buffer, expert_index, slot, gate, impl=impl)
        return torch.autograd.grad(y, (x, gate), grad_y)

    def loop():
        with torch.no_grad():
            return kernels.dispatch_combine_loop(x, expert_index, slot, gate, lambda e, row: row)

    impls = ctx.impls
    times = ctx.time({impl: (lambda impl=impl: forward(impl)) for impl in impls})
    rows = ctx.rows("moe", "dispatch+combine", shape, times, bytes_moved=fwd_bytes, flops=2.0 * n_kept * d)
    if with_loop:
        loop_times = ctx.time({"loop": loop}, repeats=3, warmup=1, min_sample_s=0.0)
        loop_row = ctx.rows("moe", "dispatch+combine (loop: 3 repeats)", shape,
                            Times({"reference": times["reference"], **loop_times}, loop_times.samples),
                            bytes_moved=fwd_bytes, flops=2.0 * n_kept * d)[1]
        rows.append(loop_row)
    times = ctx.time({impl: (lambda impl=impl: fwd_bwd(impl)) for impl in impls})
    rows += ctx.rows("moe", "dispatch+combine fwd+bwd", shape, times, bytes_moved=fwd_bytes + bwd_bytes,
                     flops=6.0 * n_kept * d)
    return rows


@register("moe", "MoE dispatch + combine (top-2, capacity 1.25): reference vs Numba / Triton vs token loop")
def bench_moe(ctx: Context) -> list[Row]:
    rows = []
    for i, case in enumerate(_cases(ctx)):
        rows += _bench_case(ctx, *case, with_loop=i == 0)
    return rows
