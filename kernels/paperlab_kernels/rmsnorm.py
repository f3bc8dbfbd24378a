r"""Fused RMSNorm, optionally followed by per-token absmax int8 quantisation.

RMSNorm (Zhang & Sennrich, 2019) rescales each row (token) of ``x: (..., d)`` by its root mean square:

.. math::

    r = \bigl(\tfrac{1}{d}\textstyle\sum_j x_j^2 + \epsilon\bigr)^{-1/2}, \qquad y_j = x_j \, r \, w_j .

The BitNet / MatMul-free LM recipe then quantises each token's activations to int8 with an absmax scale:

.. math::

    s = 127 / \max(\max_j |y_j|,\ 10^{-5}), \qquad q_j = \mathrm{clamp}(\mathrm{round}(y_j s), -128, 127),

where ``round`` rounds half to even (as ``torch.round`` does). A row whose ``y`` is not all finite (a NaN
or inf in ``x``) has no meaningful scale: every implementation gives it ``s = NaN`` and ``q = 0`` (so the
fake-quantised ``q / s`` is NaN), and leaves the other rows alone. Three operations, each with the
reference / Numba / Triton / dispatcher quartet of the package convention:

==========================  ==========================================================  =============
operation                   returns                                                     gradient
==========================  ==========================================================  =============
``rms_norm``                ``y`` in ``x.dtype``                                        exact
``rms_norm_quant``          ``(q: int8 (..., d), s: float32 (..., 1))``, inference      none
``rms_norm_fake_quant``     ``q / s`` in ``x.dtype`` (training with quantisation)       straight-through:
                                                                                        that of ``rms_norm``
==========================  ==========================================================  =============

Numerics: the kernels load any floating dtype, compute and accumulate in float32 and store ``y`` in
``x.dtype``; the reference computes in float32 (float64 for float64 inputs). The quantised variants
quantise the float32 ``y`` (before any cast to ``x.dtype``). Backward kernels recompute ``x * r`` from
``x`` and the per-row ``r`` saved by the forward pass (one float32 per row), using

.. math::

    g = \partial L/\partial y \odot w, \qquad
    \partial L/\partial x = r\,\bigl(g - \hat x \cdot \tfrac{1}{d}\textstyle\sum_j g_j \hat x_j\bigr), \qquad
    \partial L/\partial w = \textstyle\sum_{\text{rows}} \partial L/\partial y \odot \hat x,
    \qquad \hat x = x r .

What bounds the speed: **memory traffic**. Per element the forward pass does about 4 flops (square, add,
two multiplies; the quantised variants about 10) against reading and writing 2 to 4 bytes each
(arithmetic intensity well under 1 flop/byte, where a GPU needs tens of flops per byte to be compute
bound). The ideal forward moves ``n*d`` elements in and ``n*d`` out (``n*d`` int8 for ``rms_norm_quant``);
backward reads ``x`` and ``dy`` and writes ``dx``. So compare the achieved GB/s with the machine's copy
bandwidth (``python -m paperlab.bench rmsnorm``). The fused kernels read each row once (it stays in
registers or cache); the reference makes several passes through memory, one per PyTorch op.

Triton kernels use one program per row with the whole row in one block (``BLOCK`` = next power of two
of ``d``, masked), so ``d`` is limited to :data:`TRITON_MAX_D`; the backward kernel gives each program a
contiguous range of rows and accumulates its part of ``dw`` in registers, and the parts are summed after.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ._dispatch import (
    HAS_NUMBA,
    HAS_TRITON,
    check_floating,
    check_positive,
    check_same_device,
    check_vector,
    cpu_numpy,
    numba_parallel,
    require_numba,
    require_triton,
    select_impl,
)

__all__ = [
    "rms_norm",
    "rms_norm_reference",
    "rms_norm_numba",
    "rms_norm_triton",
    "rms_norm_quant",
    "rms_norm_quant_reference",
    "rms_norm_quant_numba",
    "rms_norm_quant_triton",
    "rms_norm_fake_quant",
    "rms_norm_fake_quant_reference",
    "rms_norm_fake_quant_numba",
    "rms_norm_fake_quant_triton",
    "TRITON_MAX_D",
]

QMAX = 127.0
"""Largest int8 magnitude used by the absmax scale ``s = 127 / max|y|``."""
SCALE_FLOOR = 1e-5
"""``max|y|`` is clamped at this value so that an all-zero row gets a finite scale."""
TRITON_MAX_D = 32768
"""The Triton kernels keep a whole row in one block; longer rows need ``impl='reference'`` or ``'numba'``."""

# Forward modes shared by the Numba and Triton kernels.
_NORM, _QUANT, _FAKE_QUANT = 0, 1, 2


# ================================================================================ validation helpers
def _check_inputs(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> None:
    check_floating("x", x)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have at least one dimension and x.shape[-1] >= 1, got {tuple(x.shape)}")
    if weight is not None:
        check_floating("weight", weight)
        check_vector("weight", weight, x.shape[-1], "x.shape[-1]")
        check_same_device("weight", weight, "x", x)
    check_positive("eps", eps)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t: (..., d)`` as ``(n, d)`` with unit stride along ``d`` (a view when possible)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


# ========================================================================================= reference
def _reference_y(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``y = x * rsqrt(mean(x^2) + eps) * w`` in float32 (float64 for float64 input)."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    rstd = torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    y = xf * rstd
    if weight is not None:
        y = y * weight.to(xf.dtype)
    return y


def _reference_quantise(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row absmax quantisation of ``y: (..., d)`` -> (integer-valued float ``q``, ``s: (..., 1)``);
    a row with a non-finite entry gets ``s = NaN`` and ``q = 0``."""
    bad = ~torch.isfinite(y).all(dim=-1, keepdim=True)
    s = QMAX / y.abs().amax(dim=-1, keepdim=True).clamp(min=SCALE_FLOOR)
    s = torch.where(bad, float("nan"), s)
    q = torch.where(bad, 0.0, (y * s).round().clamp(-QMAX - 1, QMAX))
    return q, s


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """Plain-PyTorch RMSNorm over the last dim. ``x: (..., d)``, ``weight: (d,)`` -> ``(..., d)``, x.dtype."""
    _check_inputs(x, weight, eps)
    return _reference_y(x, weight, eps).to(x.dtype)


def rms_norm_quant_reference(
    x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch RMSNorm + absmax int8. ``x: (..., d)`` -> ``(q: int8 (..., d), s: float32 (..., 1))``;
    ``q / s`` approximates ``rms_norm(x, weight)``."""
    _check_inputs(x, weight, eps)
    with torch.no_grad():
        q, s = _reference_quantise(_reference_y(x, weight, eps))
    return q.to(torch.int8), s.to(torch.float32)


def rms_norm_fake_quant_reference(
    x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """Plain-PyTorch RMSNorm + absmax fake quantisation ``q / s`` with the straight-through estimator:
    the value is quantised, the gradient is that of ``rms_norm`` (``y + (q/s - y).detach()``)."""
    _check_inputs(x, weight, eps)
    y = _reference_y(x, weight, eps)
    q, s = _reference_quantise(y.detach())
    return (y + (q / s - y).detach()).to(x.dtype)


# ============================================================================================= numba
if HAS_NUMBA:
    import numba
    from numba import njit, prange

    # Allow re-association (only): LLVM may then vectorise the row sums, as the GPU reduction tree does.
    _FASTMATH = {"reassoc"}

    @njit(cache=True, fastmath=_FASTMATH, inline="always")
    def _normed(x_ij, r, w, j, has_weight):  # pragma: no cover - jitted
        """One entry of y = x / rms(x) (* w)."""
        v = x_ij * r
        return v * w[j] if has_weight else v

    @njit(cache=True, fastmath=_FASTMATH, inline="always")
    def _quantised(v, s, finite):  # pragma: no cover - jitted
        """round(v s) (rint: half to even) clipped to int8's range; 0 in a row with a NaN or inf."""
        qv = min(max(np.rint(v * s), np.float32(-128.0)), np.float32(127.0))
        return qv if finite else np.float32(0.0)

    def _forward_kernel(x, w, has_weight, eps, mode, y, q, scale, rstd):  # pragma: no cover - jitted
        """One row per prange iteration. x: (n, d) float32 -> y (modes 0, 2) or q, scale (mode 1), rstd.
        Each row is read and written through 1-D slices (``x[i]``), unit-stride loops that LLVM vectorises
        (with ``x[i, j]`` inside the loops the quantising modes ran about 3.5x slower), and the weight's
        branch sits outside the loops of mode 0."""
        n, d = x.shape
        inv_d = np.float32(1.0 / d)
        for i in prange(n):
            xi = x[i]
            acc = np.float32(0.0)  # float32 accumulation, as on the GPU
            for j in range(d):
                acc += xi[j] * xi[j]
            r = np.float32(1.0) / np.sqrt(acc * inv_d + eps)  # 1 / rms(x)
            rstd[i] = r
            if mode == 0:
                yi = y[i]
                if has_weight:
                    for j in range(d):
                        yi[j] = (xi[j] * r) * w[j]  # y = x / rms(x) * w
                else:
                    for j in range(d):
                        yi[j] = xi[j] * r
            else:
                m = np.float32(0.0)  # absmax of the row, recomputing y (the row is in cache)
                poison = np.float32(0.0)  # 0 unless some y is NaN or inf (0 * NaN = 0 * inf = NaN)
                for j in range(d):
                    v = _normed(xi[j], r, w, j, has_weight)
                    m = max(m, abs(v))  # (max drops a NaN, hence the poison sum)
                    poison += np.float32(0.0) * v
                finite = poison == np.float32(0.0)
                s = np.float32(127.0) / max(m, np.float32(1e-5)) if finite else np.float32(np.nan)
                if mode == 1:
                    scale[i] = s
                    qi = q[i]
                    for j in range(d):
                        qi[j] = np.int8(_quantised(_normed(xi[j], r, w, j, has_weight), s, finite))
                else:
                    yi = y[i]
                    for j in range(d):
                        yi[j] = _quantised(_normed(xi[j], r, w, j, has_weight), s, finite) / s

    _forward_numba_kernel = njit(parallel=True, cache=True, fastmath=_FASTMATH)(_forward_kernel)
    _forward_numba_kernel_serial = njit(cache=True, fastmath=_FASTMATH)(_forward_kernel)  # small inputs

    @njit(parallel=True, cache=True, fastmath=_FASTMATH)
    def _backward_numba_kernel(dy, x, w, has_weight, rstd, dx, dw_partial):  # pragma: no cover - jitted
        """Rows split into ``dw_partial.shape[0]`` contiguous chunks, one per prange iteration; each chunk
        accumulates its own part of dw (summed by the caller), so threads never write the same memory.
        Rows through 1-D slices, as in the forward."""
        n, d = x.shape
        n_chunks = dw_partial.shape[0]
        inv_d = np.float32(1.0 / d)
        rows_per_chunk = (n + n_chunks - 1) // n_chunks
        for c in prange(n_chunks):
            for i in range(c * rows_per_chunk, min((c + 1) * rows_per_chunk, n)):
                r = rstd[i]
                xi, dyi, dxi = x[i], dy[i], dx[i]
                acc = np.float32(0.0)  # sum_j g_j * xhat_j, with g = dy * w
                if has_weight:
                    dw_c = dw_partial[c]
                    for j in range(d):
                        acc += (dyi[j] * w[j]) * (xi[j] * r)
                    mean_gx = acc * inv_d
                    for j in range(d):
                        xhat = xi[j] * r
                        dxi[j] = (dyi[j] * w[j] - xhat * mean_gx) * r  # dx = r (g - xhat mean(g xhat))
                        dw_c[j] += dyi[j] * xhat  # dw = sum over rows of dy xhat
                else:
                    for j in range(d):
                        acc += dyi[j] * (xi[j] * r)
                    mean_gx = acc * inv_d
                    for j in range(d):
                        xhat = xi[j] * r
                        dxi[j] = (dyi[j] - xhat * mean_gx) * r


_EMPTY_F32_2D = np.zeros((0, 0), dtype=np.float32)
_EMPTY_I8_2D = np.zeros((0, 0), dtype=np.int8)
_EMPTY_F32_1D = np.zeros(0, dtype=np.float32)


def _numba_forward(x2: torch.Tensor, weight: torch.Tensor | None, eps: float, mode: int,
                   store_rstd: bool = True):
    """x2: (n, d) on CPU -> (y in x.dtype | None, q int8 | None, scale float32 (n,) | None, rstd (n,))."""
    n, d = x2.shape
    xn = cpu_numpy(x2, torch.float32)
    wn = cpu_numpy(weight, torch.float32) if weight is not None else _EMPTY_F32_1D
    rstd = torch.empty(n, dtype=torch.float32)
    y = torch.empty((n, d), dtype=torch.float32) if mode != _QUANT else None
    q = torch.empty((n, d), dtype=torch.int8) if mode == _QUANT else None
    scale = torch.empty(n, dtype=torch.float32) if mode == _QUANT else None
    if n > 0:
        kernel = _forward_numba_kernel if numba_parallel(8 * n * d) else _forward_numba_kernel_serial
        kernel(
            xn, wn, weight is not None, np.float32(eps), mode,
            y.numpy() if y is not None else _EMPTY_F32_2D,
            q.numpy() if q is not None else _EMPTY_I8_2D,
            scale.numpy() if scale is not None else _EMPTY_F32_1D,
            rstd.numpy(),
        )
    return (y.to(x2.dtype) if y is not None else None), q, scale, rstd


def _numba_backward(dy2, x2, weight, rstd):
    """Gradients of RMSNorm: (dx (n, d) in x.dtype, dw (d,) in weight.dtype or None)."""
    n, d = x2.shape
    n_chunks = max(1, min(n, 4 * numba.get_num_threads()))
    dx = torch.empty((n, d), dtype=torch.float32)
    dw_partial = torch.zeros((n_chunks, d) if weight is not None else (1, 0), dtype=torch.float32)
    if n > 0:
        _backward_numba_kernel(
            cpu_numpy(dy2, torch.float32), cpu_numpy(x2, torch.float32),
            cpu_numpy(weight, torch.float32) if weight is not None else _EMPTY_F32_1D,
            weight is not None, rstd.numpy(), dx.numpy(), dw_partial.numpy(),
        )
    dw = dw_partial.sum(0).to(weight.dtype) if weight is not None else None
    return dx.to(x2.dtype), dw


# ============================================================================================ triton
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _round_half_even(v):
        """Round to nearest, ties to even (like torch.round and np.rint), written with floor so that it
        behaves the same on the GPU and in the interpreter. Exact for |v| < 2**22."""
        f = tl.floor(v)
        frac = v - f
        f_is_odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
        round_up = (frac > 0.5) | ((frac == 0.5) & f_is_odd)
        return tl.where(round_up, f + 1.0, f)

    @triton.jit
    def _forward_triton_kernel(
        X, W, Y, Q, SCALE, RSTD,
        stride_x, d, eps,
        HAS_WEIGHT: tl.constexpr, MODE: tl.constexpr, STORE_RSTD: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """One program per row; the row (``d <= BLOCK``) is loaded once and stays in registers.
        MODE 0: Y = x r w. MODE 1: Q = int8 quantised y, SCALE = s. MODE 2: Y = fake-quantised q / s.
        STORE_RSTD: keep r for the backward pass (not needed for inference)."""
        row = tl.program_id(0).to(tl.int64)  # int64: row * stride may exceed 2**31
        cols = tl.arange(0, BLOCK)
        mask = cols < d
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        r = tl.rsqrt(tl.sum(x * x, axis=0) / d + eps)  # float32 accumulation
        if STORE_RSTD:
            tl.store(RSTD + row, r)
        y = x * r
        if HAS_WEIGHT:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if MODE == 0:
            tl.store(Y + row * d + cols, y.to(Y.dtype.element_ty), mask=mask)
        else:
            m = tl.maximum(tl.max(tl.abs(y), axis=0), 1e-5)  # masked columns hold 0, harmless for a max
            # a max may drop a NaN: count the non-finite entries instead
            n_bad = tl.sum(((y != y) | (tl.abs(y) == float("inf"))).to(tl.int32), axis=0)
            s = tl.where(n_bad > 0, float("nan"), 127.0 / m)
            qv = tl.minimum(tl.maximum(_round_half_even(y * s), -128.0), 127.0)
            qv = tl.where(n_bad > 0, 0.0, qv)
            if MODE == 1:
                tl.store(Q + row * d + cols, qv.to(tl.int8), mask=mask)
                tl.store(SCALE + row, s)
            else:
                tl.store(Y + row * d + cols, (qv / s).to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_triton_kernel(
        DY, X, W, RSTD, DX, DW_PARTIAL,
        stride_dy, stride_x, n_rows, d, rows_per_program,
        HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """Program p handles rows [p * rows_per_program, ...) and writes its part of dw to DW_PARTIAL[p]."""
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < d
        row_start = pid.to(tl.int64) * rows_per_program
        row_end = tl.minimum(row_start + rows_per_program, n_rows)
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
            dw_acc = tl.zeros([BLOCK], dtype=tl.float32)
        for row in range(row_start, row_end):
            dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            r = tl.load(RSTD + row)
            xhat = x * r
            if HAS_WEIGHT:
                g = dy * w
                dw_acc += dy * xhat
            else:
                g = dy
            mean_gx = tl.sum(g * xhat, axis=0) / d
            dx = (g - xhat * mean_gx) * r
            tl.store(DX + row * d + cols, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_WEIGHT:
            tl.store(DW_PARTIAL + pid.to(tl.int64) * d + cols, dw_acc, mask=mask)


def _triton_launch_config(d: int) -> tuple[int, int]:
    if d > TRITON_MAX_D:
        raise ValueError(
            f"impl='triton' keeps a row in one block: x.shape[-1] must be <= {TRITON_MAX_D}, got {d} "
            "(use impl='reference')"
        )
    block = triton.next_power_of_2(d)
    num_warps = min(16, max(1, block // 512))
    return block, num_warps


def _triton_forward(x2: torch.Tensor, weight: torch.Tensor | None, eps: float, mode: int,
                    store_rstd: bool = True):
    """Same contract as :func:`_numba_forward`, on CUDA (or the interpreter); ``rstd`` is left unwritten
    when ``store_rstd`` is False (inference)."""
    n, d = x2.shape
    block, num_warps = _triton_launch_config(d)
    dev = x2.device
    rstd = torch.empty(n if store_rstd else 1, dtype=torch.float32, device=dev)
    y = torch.empty((n, d), dtype=x2.dtype, device=dev) if mode != _QUANT else None
    q = torch.empty((n, d), dtype=torch.int8, device=dev) if mode == _QUANT else None
    scale = torch.empty(n, dtype=torch.float32, device=dev) if mode == _QUANT else None
    if n > 0:
        # Unused pointer arguments get a stand-in tensor; the MODE / HAS_WEIGHT branches never touch them.
        _forward_triton_kernel[(n,)](
            x2, weight if weight is not None else x2,
            y if y is not None else rstd, q if q is not None else rstd,
            scale if scale is not None else rstd, rstd,
            x2.stride(0), d, float(eps),
            HAS_WEIGHT=weight is not None, MODE=mode, STORE_RSTD=store_rstd, BLOCK=block, num_warps=num_warps,
        )
    return y, q, scale, rstd


def _triton_backward(dy2, x2, weight, rstd):
    n, d = x2.shape
    block, num_warps = _triton_launch_config(d)
    dev = x2.device
    dx = torch.empty((n, d), dtype=x2.dtype, device=dev)
    if n == 0:
        return dx, (torch.zeros_like(weight) if weight is not None else None)
    # Few enough programs that the dw partial sums are small, enough to fill the GPU.
    max_programs = 4
    if dev.type == "cuda":
        max_programs *= torch.cuda.get_device_properties(dev).multi_processor_count
    rows_per_program = triton.cdiv(n, min(n, max_programs))
    n_programs = triton.cdiv(n, rows_per_program)
    dw_partial = torch.empty((n_programs, d) if weight is not None else (1,), dtype=torch.float32, device=dev)
    _backward_triton_kernel[(n_programs,)](
        dy2, x2, weight if weight is not None else x2, rstd, dx, dw_partial,
        dy2.stride(0), x2.stride(0), n, d, rows_per_program,
        HAS_WEIGHT=weight is not None, BLOCK=block, num_warps=num_warps,
    )
    dw = dw_partial.sum(0).to(weight.dtype) if weight is not None else None
    return dx, dw


# ========================================================================== autograd and public API
class _Backend(NamedTuple):
    forward: object  # (x2, weight, eps, mode) -> (y, q, scale, rstd)
    backward: object  # (dy2, x2, weight, rstd) -> (dx, dw)


_NUMBA_BACKEND = _Backend(_numba_forward, _numba_backward)
_TRITON_BACKEND = _Backend(_triton_forward, _triton_backward)


class _RMSNormFunction(torch.autograd.Function):
    """``rms_norm`` (mode 0) or its fake-quantised version (mode 2) with a kernel backend. Both share the
    RMSNorm backward: exact for mode 0, the straight-through estimator for mode 2."""

    @staticmethod
    def forward(ctx, x, weight, eps, backend, mode):
        x2 = _rows(x)
        y2, _, _, rstd = backend.forward(x2, weight, eps, mode)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.backend = backend
        ctx.x_shape = x.shape
        return y2.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dx2, dw = ctx.backend.backward(_rows(dy), x2, weight, rstd)
        dw = dw if ctx.needs_input_grad[1] else None
        return dx2.view(ctx.x_shape), dw, None, None, None


def _quant(x, weight, eps, backend):
    x2 = _rows(x)
    w = weight.detach() if weight is not None else None
    with torch.no_grad():
        _, q, scale, _ = backend.forward(x2.detach(), w, eps, _QUANT, False)
    return q.view(x.shape), scale.view(*x.shape[:-1], 1)


def _norm(x, weight, eps, backend, mode):
    """``rms_norm`` (mode 0) or ``rms_norm_fake_quant`` (mode 2) with a kernel backend, inputs checked.
    Without a gradient to track (inference, or ``torch.no_grad``) it is one kernel call, without the
    autograd Function and the saved ``rstd``: on a GPU the Python overhead per call is what a small
    normalisation costs."""
    tracked = torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad))
    if tracked:
        return _RMSNormFunction.apply(x, weight, eps, backend, mode)
    y2, _, _, _ = backend.forward(_rows(x), weight, eps, mode, False)
    return y2.view(x.shape)


def rms_norm_numba(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm with the Numba CPU kernel (differentiable). ``x: (..., d)`` on CPU, ``weight: (d,)``."""
    _check_inputs(x, weight, eps)
    require_numba(x)
    return _norm(x, weight, eps, _NUMBA_BACKEND, _NORM)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm with the Triton kernel (differentiable). ``x: (..., d)`` on CUDA, ``d <= TRITON_MAX_D``."""
    _check_inputs(x, weight, eps)
    require_triton(x)
    return _norm(x, weight, eps, _TRITON_BACKEND, _NORM)


def rms_norm_quant_numba(x, weight=None, eps=1e-6):
    """RMSNorm + absmax int8 in one Numba pass per row -> ``(q: int8 (..., d), s: float32 (..., 1))``."""
    _check_inputs(x, weight, eps)
    require_numba(x)
    return _quant(x, weight, eps, _NUMBA_BACKEND)


def rms_norm_quant_triton(x, weight=None, eps=1e-6):
    """RMSNorm + absmax int8 in one Triton program per row -> ``(q: int8 (..., d), s: float32 (..., 1))``."""
    _check_inputs(x, weight, eps)
    require_triton(x)
    return _quant(x, weight, eps, _TRITON_BACKEND)


def rms_norm_fake_quant_numba(x, weight=None, eps=1e-6):
    """Fused RMSNorm + fake quantisation ``q / s`` (Numba), straight-through gradient."""
    _check_inputs(x, weight, eps)
    require_numba(x)
    return _norm(x, weight, eps, _NUMBA_BACKEND, _FAKE_QUANT)


def rms_norm_fake_quant_triton(x, weight=None, eps=1e-6):
    """Fused RMSNorm + fake quantisation ``q / s`` (Triton), straight-through gradient."""
    _check_inputs(x, weight, eps)
    require_triton(x)
    return _norm(x, weight, eps, _TRITON_BACKEND, _FAKE_QUANT)


_BACKENDS = {"numba": _NUMBA_BACKEND, "triton": _TRITON_BACKEND}


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, *, impl: str = "auto"
) -> torch.Tensor:
    """RMSNorm over the last dim: ``y = x / sqrt(mean(x**2, -1) + eps) * weight``.

    ``x: (..., d)`` floating point; ``weight: (d,)`` or None; returns ``(..., d)`` in ``x.dtype``,
    differentiable w.r.t. ``x`` and ``weight``. ``impl``: ``"auto"`` (Triton on CUDA, Numba on CPU),
    ``"reference"``, ``"numba"`` or ``"triton"``.
    """
    _check_inputs(x, weight, eps)  # once: the dispatcher calls the implementations' unchecked cores
    which = select_impl(impl, x)
    if which == "reference":
        return _reference_y(x, weight, eps).to(x.dtype)
    return _norm(x, weight, eps, _BACKENDS[which], _NORM)


def rms_norm_quant(
    x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, *, impl: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm then per-token absmax int8 quantisation, for inference (no gradient).

    Returns ``q: int8 (..., d)`` and ``s: float32 (..., 1)`` with ``s = 127 / max(max|y|, 1e-5)`` and
    ``q = clamp(round(y * s), -128, 127)``, so ``q / s ~ rms_norm(x, weight, eps)``.
    """
    _check_inputs(x, weight, eps)
    which = select_impl(impl, x)
    if which == "reference":
        return rms_norm_quant_reference(x, weight, eps)
    return _quant(x, weight, eps, _BACKENDS[which])


def rms_norm_fake_quant(
    x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6, *, impl: str = "auto"
) -> torch.Tensor:
    """RMSNorm then absmax fake quantisation, for quantisation-aware training (BitNet, MatMul-free LM).

    Returns ``q / s`` (see :func:`rms_norm_quant`) in ``x.dtype``; its gradient is the straight-through
    estimator: exactly the gradient of :func:`rms_norm`, as if the rounding were the identity.
    """
    _check_inputs(x, weight, eps)
    which = select_impl(impl, x)
    if which == "reference":
        return rms_norm_fake_quant_reference(x, weight, eps)
    return _norm(x, weight, eps, _BACKENDS[which], _FAKE_QUANT)
