"""RMSNorm benchmark: reference, ``torch.nn.functional.rms_norm`` and the fused kernels.

Memory bound, so rows report effective bandwidth from the ideal traffic (each element read and written
once): forward ``2 n d`` elements, forward + backward ``5 n d`` (forward, then read ``x`` and ``dy``,
write ``dx``), quantised forward ``n d`` elements in plus ``n d`` int8 bytes out. Flops, for the
roofline: about 4 per element forward (square, sum, two scalings), 13 forward + backward, 9 quantised.
A tensor that fits in the CPU's caches can beat the copy "limit", which is measured on a much larger
buffer. On CUDA the shapes go up to 16384 x 8192 fp32 (1 GiB moved per forward call), well past the L2
cache, and the forward pass is held against torch's own fused ``F.rms_norm``.
"""

from __future__ import annotations

import torch

from paperlab.bench import Context, Row, register
from paperlab_kernels import rmsnorm as kernels

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _cases(ctx: Context) -> list[tuple[int, int, torch.dtype]]:
    if ctx.gpu:
        if ctx.quick:
            return [(4096, 2048, torch.bfloat16)]
        return [(4096, 2048, torch.float32), (4096, 2048, torch.bfloat16), (16384, 4096, torch.bfloat16),
                (16384, 8192, torch.float32)]
    return [(4096, 1024, torch.float32)] if ctx.quick else [(4096, 2048, torch.float32)]


def _norm(impl: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if impl == "torch":  # PyTorch's own RMSNorm, for comparison
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps=1e-6)
    return kernels.rms_norm(x, w, 1e-6, impl=impl)


def _bench_case(ctx: Context, n: int, d: int, dtype: torch.dtype) -> list[Row]:
    g = torch.Generator(device=ctx.device).manual_seed(0)
    x = torch.randn(n, d, device=ctx.device, generator=g).to(dtype)
    w = (1 + 0.1 * torch.randn(d, device=ctx.device, generator=g)).to(dtype)
    dy = torch.randn(n, d, device=ctx.device, generator=g).to(dtype)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    shape = f"{n}x{d} {_DTYPE_NAMES.get(dtype, str(dtype))}"
    b = x.element_size()
    nd = n * d
    impls = [*ctx.impls[:1], "torch", *ctx.impls[1:]]

    def fwd(impl):
        with torch.no_grad():
            return _norm(impl, x, w)

    def fwd_bwd(impl):
        return torch.autograd.grad(_norm(impl, xg, wg), (xg, wg), dy)

    def quant(impl):
        return kernels.rms_norm_quant(x, w, impl=impl)

    time = lambda fn, names: ctx.time({impl: (lambda impl=impl: fn(impl)) for impl in names})
    return [
        *ctx.rows("rmsnorm", "fwd", shape, time(fwd, impls), bytes_moved=2 * nd * b + d * b, flops=4.0 * nd),
        *ctx.rows("rmsnorm", "fwd+bwd", shape, time(fwd_bwd, impls), bytes_moved=5 * nd * b + 2 * d * b,
                  flops=13.0 * nd),
        *ctx.rows("rmsnorm", "quant", shape, time(quant, ctx.impls), bytes_moved=nd * (b + 1) + 4 * n,
                  flops=9.0 * nd),
    ]


@register("rmsnorm", "fused RMSNorm (+ int8 absmax quantisation): forward, forward+backward, quant")
def bench_rmsnorm(ctx: Context) -> list[Row]:
    rows = []
    for n, d, dtype in _cases(ctx):
        rows += _bench_case(ctx, n, d, dtype)
        if ctx.gpu:
            torch.cuda.empty_cache()
    return rows
