r"""The MLGRU recurrence of the MatMul-free LM (Zhu et al., 2024): an element-wise gated linear scan.

For forget gates ``f: (batch, seq, d)`` in (0, 1) and candidates ``c: (batch, seq, d)``, with ``h_0 = 0``,

.. math::

    h_t = f_t \odot h_{t-1} + (1 - f_t) \odot c_t .

There is no hidden-to-hidden matrix: each of the ``batch * d`` channels is an independent scalar
recurrence. The backward pass runs the same recurrence in reverse. With ``g_t = \partial L / \partial h_t``
from above and ``\delta_t`` the total gradient reaching ``h_t``,

.. math::

    \delta_t = g_t + f_{t+1} \odot \delta_{t+1}, \qquad
    \partial L/\partial f_t = \delta_t \odot (h_{t-1} - c_t), \qquad
    \partial L/\partial c_t = \delta_t \odot (1 - f_t).

Operations: :func:`mlgru_scan` (dispatcher), :func:`mlgru_scan_reference` (a PyTorch loop over time,
differentiated by autograd), :func:`mlgru_scan_numba` and :func:`mlgru_scan_triton` (forward and backward
kernels inside a ``torch.autograd.Function``; the backward reads the saved ``h`` and recomputes nothing else).

What bounds the speed: **memory traffic**. Per element the forward reads ``f`` and ``c`` and writes ``h``
(3 flops against 12 bytes in float32); the backward reads ``f, c, h, g`` and writes two gradients. The
sequential dependence is only along ``seq``; the ``batch * d`` channels run in parallel (prange jobs of
channel blocks on the CPU, one program per block of channels on the GPU, in the (batch, seq, d) layout
as given), each walking its sequence once.
"""

from __future__ import annotations

import numpy as np
import torch

from ._dispatch import (
    HAS_NUMBA,
    HAS_TRITON,
    check_floating,
    cpu_numpy,
    numba_parallel,
    require_numba,
    require_triton,
    select_impl,
)

__all__ = ["mlgru_scan", "mlgru_scan_reference", "mlgru_scan_numba", "mlgru_scan_triton"]


def _check(f: torch.Tensor, c: torch.Tensor) -> None:
    check_floating("f", f)
    check_floating("c", c)
    if f.dim() != 3:
        raise ValueError(f"f must have shape (batch, seq, d), got {tuple(f.shape)}")
    if f.shape != c.shape:
        raise ValueError(f"c must have the shape of f {tuple(f.shape)}, got {tuple(c.shape)}")
    if f.device != c.device:
        raise ValueError(f"c must be on the device of f ({f.device}), got {c.device}")


def mlgru_scan_reference(f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``h_t = f_t h_{t-1} + (1 - f_t) c_t`` by a Python loop over time (autograd differentiates it).

    f, c: (batch, seq, d) -> h: (batch, seq, d).
    """
    _check(f, c)
    if f.shape[1] == 0:  # an empty sequence: an empty result (kept in the graph of f and c)
        return f * c
    h = torch.zeros_like(f[:, 0])
    out = []
    for t in range(f.shape[1]):
        h = f[:, t] * h + (1 - f[:, t]) * c[:, t]
        out.append(h)
    return torch.stack(out, dim=1) if out else torch.zeros_like(f)


# ======================================================================================= numba
NUMBA_BLOCK = 256
"""Channels per prange job of the Numba kernels: each job walks the sequence for one block of channels."""

if HAS_NUMBA:
    from numba import njit, prange

    def _forward_numba_kernel_py(f, c, h, block):  # pragma: no cover - jitted
        """f, c, h: (batch, seq, d) float32, channels last. One (batch, block of channels) per prange job,
        walking t = 0..seq-1 with the block's states in a small array. Each step reads the block as 1-D
        contiguous slices, so that the loop over channels is a unit-stride loop that LLVM vectorises
        (indexing the 3-D arrays element by element inside it does not vectorise: about 10x slower)."""
        batch, seq, d = f.shape
        n_blocks = (d + block - 1) // block
        for job in prange(batch * n_blocks):
            b = job // n_blocks
            j0 = (job % n_blocks) * block
            j1 = min(d, j0 + block)
            state = np.zeros(j1 - j0, dtype=np.float32)
            for t in range(seq):
                ft, ct, ht = f[b, t, j0:j1], c[b, t, j0:j1], h[b, t, j0:j1]
                for j in range(j1 - j0):
                    # h_t = f_t h_{t-1} + (1 - f_t) c_t
                    s = ft[j] * state[j] + (np.float32(1.0) - ft[j]) * ct[j]
                    state[j] = s
                    ht[j] = s

    _forward_numba_kernel = njit(parallel=True, cache=True)(_forward_numba_kernel_py)
    _forward_numba_kernel_serial = njit(cache=True)(_forward_numba_kernel_py)  # small calls: one thread

    def _backward_numba_kernel_py(f, c, h, g, df, dc, block):  # pragma: no cover - jitted
        """The recurrence in reverse (see the module docstring), same layout, jobs and 1-D slices as the
        forward."""
        batch, seq, d = f.shape
        n_blocks = (d + block - 1) // block
        for job in prange(batch * n_blocks):
            b = job // n_blocks
            j0 = (job % n_blocks) * block
            j1 = min(d, j0 + block)
            delta = np.zeros(j1 - j0, dtype=np.float32)  # carries f_{t+1} * delta_{t+1}
            h_0 = np.zeros(j1 - j0, dtype=np.float32)
            for t in range(seq - 1, -1, -1):
                ft, ct, gt = f[b, t, j0:j1], c[b, t, j0:j1], g[b, t, j0:j1]
                dft, dct = df[b, t, j0:j1], dc[b, t, j0:j1]
                previous = h[b, t - 1, j0:j1] if t > 0 else h_0
                for j in range(j1 - j0):
                    dl = gt[j] + delta[j]  # delta_t = g_t + f_{t+1} delta_{t+1}
                    dft[j] = dl * (previous[j] - ct[j])  # dL/df_t = delta_t (h_{t-1} - c_t)
                    dct[j] = dl * (np.float32(1.0) - ft[j])  # dL/dc_t = delta_t (1 - f_t)
                    delta[j] = dl * ft[j]

    _backward_numba_kernel = njit(parallel=True, cache=True)(_backward_numba_kernel_py)
    _backward_numba_kernel_serial = njit(cache=True)(_backward_numba_kernel_py)  # small calls: one thread


def _numba_forward(f, c):
    fc, cc = f.float().contiguous(), c.float().contiguous()
    h = torch.empty_like(fc)
    if fc.numel():
        kernel = _forward_numba_kernel if numba_parallel(4 * fc.numel()) else _forward_numba_kernel_serial
        kernel(fc.numpy(), cc.numpy(), h.numpy(), NUMBA_BLOCK)
    return h, (fc, cc, h)


def _numba_backward(saved, g):
    fc, cc, h = saved
    gc = g.float().contiguous()
    df, dc = torch.empty_like(fc), torch.empty_like(fc)
    if fc.numel():
        kernel = _backward_numba_kernel if numba_parallel(8 * fc.numel()) else _backward_numba_kernel_serial
        kernel(fc.numpy(), cc.numpy(), h.numpy(), cpu_numpy(gc, torch.float32),
                               df.numpy(), dc.numpy(), NUMBA_BLOCK)
    return df, dc


# ====================================================================================== triton
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _forward_triton_kernel(F, C, H, seq, d, BLOCK: tl.constexpr):
        """Program (batch b, channel block): walks t = 0..seq-1 keeping h in registers.
        Layout (batch, seq, d)."""
        b = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < d
        state = tl.zeros([BLOCK], dtype=tl.float32)
        base = b * seq * d
        for t in range(seq):
            offset = base + t * d + cols
            f = tl.load(F + offset, mask=mask, other=0.0).to(tl.float32)
            c = tl.load(C + offset, mask=mask, other=0.0).to(tl.float32)
            state = f * state + (1.0 - f) * c
            tl.store(H + offset, state, mask=mask)

    @triton.jit
    def _backward_triton_kernel(F, C, H, G, DF, DC, seq, d, BLOCK: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < d
        delta = tl.zeros([BLOCK], dtype=tl.float32)
        base = b * seq * d
        for step in range(seq):
            t = seq - 1 - step
            offset = base + t * d + cols
            f = tl.load(F + offset, mask=mask, other=0.0).to(tl.float32)
            c = tl.load(C + offset, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(G + offset, mask=mask, other=0.0).to(tl.float32)
            has_previous = (cols * 0 + t) > 0  # a block-shaped mask: h_0 = 0 before the first step
            previous = tl.load(H + offset - d, mask=mask & has_previous, other=0.0).to(tl.float32)
            delta = g + delta
            tl.store(DF + offset, delta * (previous - c), mask=mask)
            tl.store(DC + offset, delta * (1.0 - f), mask=mask)
            delta = delta * f


def _triton_block(d: int) -> int:
    return min(256, triton.next_power_of_2(max(d, 1)))


def _triton_forward(f, c):
    fc, cc = f.float().contiguous(), c.float().contiguous()
    batch, seq, d = fc.shape
    h = torch.empty_like(fc)
    if fc.numel():
        block = _triton_block(d)
        _forward_triton_kernel[(batch, triton.cdiv(d, block))](fc, cc, h, seq, d, BLOCK=block)
    return h, (fc, cc, h)


def _triton_backward(saved, g):
    fc, cc, h = saved
    batch, seq, d = fc.shape
    gc = g.float().contiguous()
    df, dc = torch.empty_like(fc), torch.empty_like(fc)
    if fc.numel():
        block = _triton_block(d)
        _backward_triton_kernel[(batch, triton.cdiv(d, block))](fc, cc, h, gc, df, dc, seq, d, BLOCK=block)
    return df, dc


class _ScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, c, backend):
        forward, backward = backend
        h, saved = forward(f, c)
        ctx.save_for_backward(*saved)
        ctx.backward_fn, ctx.shape, ctx.dtype = backward, f.shape, f.dtype
        return h.to(f.dtype)

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        df, dc = ctx.backward_fn(saved, g)
        return df.to(ctx.dtype), dc.to(ctx.dtype), None


def mlgru_scan_numba(f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Numba forward and backward kernels (CPU tensors), float32 inside. Shapes as the reference."""
    _check(f, c)
    require_numba(f)
    return _ScanFunction.apply(f, c, (_numba_forward, _numba_backward))


def mlgru_scan_triton(f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Triton forward and backward kernels (CUDA tensors or the interpreter), float32 inside."""
    _check(f, c)
    require_triton(f)
    return _ScanFunction.apply(f, c, (_triton_forward, _triton_backward))


_SCAN = {"reference": mlgru_scan_reference, "numba": mlgru_scan_numba, "triton": mlgru_scan_triton}


def mlgru_scan(f: torch.Tensor, c: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    """``h_t = f_t h_{t-1} + (1 - f_t) c_t``, ``h_0 = 0``, differentiable w.r.t. ``f`` and ``c``.

    f, c: (batch, seq, d) floating -> h: (batch, seq, d) in f.dtype. Any of the sizes may be 0 (an empty
    sequence gives an empty result). ``impl``: "auto" (Triton on CUDA, Numba on CPU), "reference",
    "numba", "triton".
    """
    _check(f, c)
    return _SCAN[select_impl(impl, f)](f, c)
