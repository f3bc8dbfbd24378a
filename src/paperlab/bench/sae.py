"""TopK SAE sparse decoder: forward + backward (w.r.t. values and weight), dense reference vs kernels.

Shapes: batch 1024 tokens, n_latents 32768, d 512, k 32, fp32 (``--quick``: 256, 4096, 256, 16); the
chapter's training size (256, 1024, 64, 8) to show whether the kernel pays off there; on CUDA also
4096 tokens, 65536 latents, d 1024, k 32 (a 256 MiB decoder, past the L2 cache).

Memory bound (see :mod:`paperlab_kernels.sae`), so rows report effective bandwidth from the ideal
traffic of the sparse algorithm: values and indices (``batch k`` x 12 bytes), the ``batch k`` decoder rows
read twice (forward and ``dv``), the output and its gradient (``2 batch d``), and the dense ``dW`` written
once (``n_latents d``); 4 bytes per float. Flops: ``2 batch k d`` for each of the forward pass, ``dv`` and
``dW`` (the dense reference does ``n_latents / k`` times more, mostly multiplications by zero). A small
shape that fits in cache can beat the copy "limit".
"""

from __future__ import annotations

import torch

from paperlab.bench import Context, Row, register
from paperlab_kernels import sae as kernels


def _cases(ctx: Context) -> list[tuple[int, int, int, int]]:
    if ctx.quick:
        return [(256, 4096, 256, 16), (256, 1024, 64, 8)]
    cases = [(1024, 32768, 512, 32), (256, 1024, 64, 8)]
    return cases + [(4096, 65536, 1024, 32)] if ctx.gpu else cases


def _bytes(batch: int, n_latents: int, d: int, k: int) -> float:
    return 4.0 * (3 * batch * k + 2 * batch * k * d + 2 * batch * d + n_latents * d)


def _bench_case(ctx: Context, batch: int, n_latents: int, d: int, k: int) -> list[Row]:
    g = torch.Generator(device=ctx.device).manual_seed(0)
    scores = torch.randn(batch, n_latents, device=ctx.device, generator=g)
    indices = scores.topk(k, dim=1).indices
    values = torch.randn(batch, k, device=ctx.device, generator=g).requires_grad_()
    weight = torch.randn(n_latents, d, device=ctx.device, generator=g).requires_grad_()
    grad = torch.randn(batch, d, device=ctx.device, generator=g)
    del scores

    def fwd_bwd(impl):
        out = kernels.sparse_decode(values, indices, weight, impl=impl)
        return torch.autograd.grad(out, (values, weight), grad)

    times = ctx.time({impl: (lambda impl=impl: fwd_bwd(impl)) for impl in ctx.impls})
    shape = f"b{batch} n{n_latents} d{d} k{k} fp32"
    return ctx.rows("sae", "decode fwd+bwd", shape, times, bytes_moved=_bytes(batch, n_latents, d, k),
                    flops=6.0 * batch * k * d)


@register("sae", "TopK SAE sparse decoder (forward + backward): dense reference vs Numba / Triton")
def bench_sae(ctx: Context) -> list[Row]:
    return [row for case in _cases(ctx) for row in _bench_case(ctx, *case)]
