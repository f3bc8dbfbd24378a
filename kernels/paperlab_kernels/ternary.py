r"""Packed ternary weights (2 bits each, 4 per byte) and the add-only matrix product with int8 activations.

A ternary matrix ``W_t: (n, k)`` with entries in ``{-1, 0, +1}`` needs no multiplications: with int8
activations ``q: (m, k)``,

.. math::

    a_{r i} = \sum_j q_{r j} W_{t, i j} = \sum_{j:\,W_{ij} = +1} q_{r j} \;-\; \sum_{j:\,W_{ij} = -1} q_{r j},

an exact int32 sum of additions and subtractions. The MatMul-free LM (Zhu et al., 2024) stores
``W = W_t / s_w`` (absmean scale) and ``x = q / s_x`` (per-token absmax scale), so
``y = x W^T = a / (s_x s_w)``: one multiply per output, at the very end.

**Packing.** Each weight takes a 2-bit code, ``0b00 = 0``, ``0b01 = +1``, ``0b11 = -1`` (``0b10`` is
invalid), so an all-zero byte is four zero weights and padding is free. A row of ``k`` weights becomes
``kp = ceil(k / 4)`` bytes in a *planar* layout: weight ``j`` lives in byte ``j % kp`` at bits
``2 * (j // kp)``. Byte ``b`` of a row therefore holds weights ``b, b + kp, b + 2 kp, b + 3 kp``; a kernel
decodes one byte into four codes that multiply four *contiguous* slices of the activations, which keeps
the loads and the decode vectorisable. Positions ``j >= k`` (when ``k`` is not a multiple of 4) are zero.

Operations (reference / Numba / Triton / dispatcher, as everywhere in :mod:`paperlab_kernels`):

* :func:`pack_ternary`, :func:`unpack_ternary`: int8 ``(n, k)`` in ``{-1, 0, 1}`` <-> uint8 ``(n, kp)``.
* :func:`ternary_matmul_int`: ``a = q W_t^T`` exactly, int32 ``(m, n)``.
* :func:`ternary_linear`: ``y = a / (s_x s_w)`` in float32, the BitLinear inference product.

What bounds the speed: at batch 1 (a GEMV) **memory traffic**: the packed weights are ``n k / 4`` bytes,
16x fewer than fp32 (``4 n k``), so an fp32 GEMV at full bandwidth is the bar to beat. On a CPU the add-only
inner loop (decode, select, add) costs a few integer operations per weight, so with few cores it is
bounded by **integer throughput** rather than by reading the 4 MiB of a 4096x4096 matrix; at batch 16 the
decode is shared by the 16 rows of activations. ``python -m paperlab.bench matmulfree`` reports GB/s of the
packed weights against the machine's copy bandwidth, and the speedup over ``torch`` fp32 ``F.linear``.
"""

from __future__ import annotations

import numpy as np
import torch

from ._dispatch import HAS_NUMBA, HAS_TRITON, cpu_numpy, require_numba, require_triton, select_impl

__all__ = [
    "pack_ternary",
    "unpack_ternary",
    "packed_columns",
    "ternary_matmul_int",
    "ternary_matmul_int_reference",
    "ternary_matmul_int_numba",
    "ternary_matmul_int_triton",
    "ternary_linear",
]

CODE_PLUS, CODE_MINUS = 1, 3
"""2-bit codes of +1 and -1 (0 is 0b00)."""


def packed_columns(k: int) -> int:
    """Bytes per packed row of ``k`` ternary weights: ``ceil(k / 4)``."""
    return (k + 3) // 4


# ===================================================================================== packing
def pack_ternary(w: torch.Tensor) -> torch.Tensor:
    """Pack ``w: (n, k)`` with integer values in ``{-1, 0, 1}`` into uint8 ``(n, ceil(k / 4))``.

    ``w`` may be any integer dtype or a floating tensor holding exactly -1, 0 or 1; anything else raises
    ``ValueError`` naming the offending value (the packed format cannot represent it).
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"w must be a 2-D (n, k) ternary matrix, got shape {tuple(w.shape)}")
    if w.dtype == torch.bool or w.is_complex():
        raise TypeError(f"w must hold the integers -1, 0, 1 (an integer or float dtype), got {w.dtype}")
    bad = (w != -1) & (w != 0) & (w != 1)
    if bool(bad.any()):
        value = w[bad][0].item()
        raise ValueError(
            f"pack_ternary: w must be ternary (every entry -1, 0 or +1), found {value!r} "
            f"({int(bad.sum())} non-ternary entries); quantise it first (paperlab.matmulfree.ternary_weight)"
        )
    n, k = w.shape
    kp = packed_columns(k)
    wi = w.to(torch.int32)
    codes = torch.where(wi == 1, CODE_PLUS, torch.where(wi == -1, CODE_MINUS, 0)).to(torch.int32)
    codes = torch.nn.functional.pad(codes, (0, 4 * kp - k))  # zero codes for the padding
    planes = codes.view(n, 4, kp)  # planes[:, p, b] = weight b + p * kp
    packed = planes[:, 0] | (planes[:, 1] << 2) | (planes[:, 2] << 4) | (planes[:, 3] << 6)
    return packed.to(torch.uint8)


def unpack_ternary(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: uint8 ``(n, ceil(k / 4))`` -> int8 ``(n, k)`` in ``{-1, 0, 1}``."""
    _check_packed(packed, k)
    n, kp = packed.shape
    p = packed.to(torch.int32)
    codes = torch.stack([(p >> (2 * plane)) & 3 for plane in range(4)], dim=1).reshape(n, 4 * kp)[:, :k]
    if bool((codes == 2).any()):
        raise ValueError("packed holds the invalid 2-bit code 0b10; it was not made by pack_ternary")
    return torch.where(codes == CODE_PLUS, 1, torch.where(codes == CODE_MINUS, -1, 0)).to(torch.int8)


# ================================================================================== validation
def _check_packed(packed: torch.Tensor, k: int) -> None:
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"packed must be a torch.Tensor, got {type(packed).__name__}")
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8 (from pack_ternary), got {packed.dtype}")
    if packed.dim() != 2:
        raise ValueError(f"packed must be 2-D (n, ceil(k / 4)), got shape {tuple(packed.shape)}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (the unpacked number of columns) must be a positive int, got {k!r}")
    if packed.shape[1] != packed_columns(k):
        raise ValueError(
            f"packed has {packed.shape[1]} bytes per row, but k = {k} columns pack into ceil(k / 4) = "
            f"{packed_columns(k)}"
        )


def _check_matmul(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> None:
    if not isinstance(x_q, torch.Tensor):
        raise TypeError(f"x_q must be a torch.Tensor, got {type(x_q).__name__}")
    if x_q.dtype != torch.int8:
        raise TypeError(
            f"x_q must be int8 quantised activations (e.g. from rms_norm_quant), got {x_q.dtype}"
        )
    _check_packed(packed, k)
    if x_q.dim() < 1 or x_q.shape[-1] != k:
        raise ValueError(f"x_q must have shape (..., k = {k}), got {tuple(x_q.shape)}")
    if x_q.device != packed.device:
        raise ValueError(f"x_q ({x_q.device}) and packed ({packed.device}) must be on the same device")


# =================================================================================== reference
def ternary_matmul_int_reference(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """``a = x_q W_t^T`` exactly (int32 ``(..., n)``), by unpacking and a float64 matmul: every partial
    sum is an integer below ``2^53``, so float64 is exact here."""
    _check_matmul(x_q, packed, k)
    w = unpack_ternary(packed, k).to(torch.float64)
    return (x_q.to(torch.float64) @ w.T).round().to(torch.int32)


# ======================================================================================= numba
if HAS_NUMBA:
    from numba import njit, prange

    @njit(inline="always")
    def _signed(xv, code):  # pragma: no cover - jitted
        """``+xv`` for code 0b01, ``-xv`` for 0b11, 0 for 0b00, with bit operations and one add:
        ``nz = -(code & 1)`` is all ones for a non-zero weight, ``s = -(code >> 1)`` all ones for -1, and
        ``(v ^ s) - s`` negates ``v`` in two's complement when ``s`` is all ones. No multiply, no branch."""
        nz = -(code & np.int32(1))
        s = -(code >> np.int32(1))
        return ((xv & nz) ^ s) - s

    @njit(parallel=True, cache=True)
    def _gemv_numba_kernel(x_planes, packed, out):  # pragma: no cover - jitted
        """Few activation rows. x_planes: (m, 4, kp) int32 (plane p = activations p*kp .. p*kp + kp - 1,
        zero-padded); packed: (n, kp) uint8 -> out: (m, n) int32. One row of W per prange iteration; the
        loop over bytes is branch-free, so LLVM vectorises it (one byte -> four planes -> four adds)."""
        m = x_planes.shape[0]
        n, kp = packed.shape
        for i in prange(n):
            row = packed[i]
            for r in range(m):
                x0 = x_planes[r, 0]
                x1 = x_planes[r, 1]
                x2 = x_planes[r, 2]
                x3 = x_planes[r, 3]
                acc = np.int32(0)
                for b in range(kp):
                    byte = np.int32(row[b])
                    acc += (_signed(x0[b], byte & np.int32(3))
                            + _signed(x1[b], (byte >> np.int32(2)) & np.int32(3))
                            + _signed(x2[b], (byte >> np.int32(4)) & np.int32(3))
                            + _signed(x3[b], (byte >> np.int32(6)) & np.int32(3)))
                out[r, i] = acc

    @njit(parallel=True, cache=True)
    def _gemm_numba_kernel(xt, packed, out_t):  # pragma: no cover - jitted
        """Many activation rows. xt: (4 kp, m) int32 (transposed, zero-padded) -> out_t: (n, m) int32.
        Each weight is decoded once, then added to or subtracted from all m accumulators (a vector loop)."""
        m = xt.shape[1]
        n, kp = packed.shape
        for i in prange(n):
            acc = np.zeros(m, dtype=np.int32)
            for b in range(kp):
                byte = np.int32(packed[i, b])
                for plane in range(4):
                    code = (byte >> np.int32(2 * plane)) & np.int32(3)
                    xrow = xt[b + plane * kp]
                    if code == 1:  # +1: add the activations of all m rows
                        for r in range(m):
                            acc[r] += xrow[r]
                    elif code == 3:  # -1: subtract them
                        for r in range(m):
                            acc[r] -= xrow[r]
            out_t[i] = acc


GEMM_MIN_ROWS = 4
"""From this many activation rows on, the Numba kernel decodes each weight once for all rows."""


def ternary_matmul_int_numba(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """Numba add/subtract kernel for :func:`ternary_matmul_int` (CPU tensors)."""
    _check_matmul(x_q, packed, k)
    require_numba(x_q)
    lead = x_q.shape[:-1]
    x2 = x_q.reshape(-1, k)
    m, (n, kp) = x2.shape[0], packed.shape
    xpad = torch.nn.functional.pad(x2, (0, 4 * kp - k)) if 4 * kp != k else x2.contiguous()
    if m == 0 or n == 0:
        return torch.zeros(*lead, n, dtype=torch.int32)
    pn = cpu_numpy(packed, torch.uint8)
    if m < GEMM_MIN_ROWS:
        out = torch.empty(m, n, dtype=torch.int32)
        _gemv_numba_kernel(cpu_numpy(xpad, torch.int32).reshape(m, 4, kp), pn, out.numpy())
        return out.view(*lead, n)
    out_t = torch.empty(n, m, dtype=torch.int32)
    _gemm_numba_kernel(np.ascontiguousarray(cpu_numpy(xpad, torch.int32).T), pn, out_t.numpy())
    return out_t.T.reshape(*lead, n)


# ====================================================================================== triton
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _ternary_triton_kernel(
        X, P, OUT, n, kp, stride_x, stride_p, stride_out,
        BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        """Program (r, block of BLOCK_N output columns): loops over the packed bytes in chunks of BLOCK_B,
        decodes four planes and accumulates ``where(+1, x, 0) - where(-1, x, 0)`` in int32: no multiply."""
        r = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < n
        acc = tl.zeros([BLOCK_N], dtype=tl.int32)
        for start in range(0, kp, BLOCK_B):
            b = start + tl.arange(0, BLOCK_B)
            b_mask = b < kp
            byte = tl.load(P + cols[:, None].to(tl.int64) * stride_p + b[None, :],
                           mask=col_mask[:, None] & b_mask[None, :], other=0).to(tl.int32)
            for plane in tl.static_range(4):
                xv = tl.load(X + r * stride_x + b + plane * kp, mask=b_mask, other=0).to(tl.int32)
                code = (byte >> (2 * plane)) & 3
                plus = tl.where(code == 1, xv[None, :], 0)
                minus = tl.where(code == 3, xv[None, :], 0)
                acc += tl.sum(plus - minus, axis=1)
        tl.store(OUT + r * stride_out + cols, acc, mask=col_mask)


def ternary_matmul_int_triton(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """Triton add/subtract kernel for :func:`ternary_matmul_int` (CUDA tensors, or the interpreter)."""
    _check_matmul(x_q, packed, k)
    require_triton(x_q)
    lead = x_q.shape[:-1]
    x2 = x_q.reshape(-1, k)
    m, (n, kp) = x2.shape[0], packed.shape
    xpad = torch.nn.functional.pad(x2, (0, 4 * kp - k)).contiguous()
    out = torch.empty(m, n, dtype=torch.int32, device=x_q.device)
    if m and n:
        packed = packed.contiguous()
        block_n = 64 if x_q.device.type == "cuda" else 16
        block_b = 128 if x_q.device.type == "cuda" else 16
        grid = (m, triton.cdiv(n, block_n))
        _ternary_triton_kernel[grid](xpad, packed, out, n, kp,
                                     xpad.stride(0), packed.stride(0), out.stride(0),
                                     BLOCK_N=block_n, BLOCK_B=block_b)
    return out.view(*lead, n)


# ================================================================================== public API
_MATMUL_INT = {
    "reference": ternary_matmul_int_reference,
    "numba": ternary_matmul_int_numba,
    "triton": ternary_matmul_int_triton,
}


def ternary_matmul_int(x_q: torch.Tensor, packed: torch.Tensor, k: int, *,
                       impl: str = "auto") -> torch.Tensor:
    """Exact integer product ``a = x_q W_t^T``.

    x_q: int8 ``(..., k)``; packed: uint8 ``(n, ceil(k / 4))`` from :func:`pack_ternary`.
    Returns int32 ``(..., n)``. ``impl``: "auto" (Triton on CUDA, Numba on CPU), "reference", "numba",
    "triton". No gradient (inference only).
    """
    _check_matmul(x_q, packed, k)
    return _MATMUL_INT[select_impl(impl, x_q)](x_q, packed, k)


def ternary_linear(x_q: torch.Tensor, x_scale: torch.Tensor, packed: torch.Tensor,
                   w_scale: torch.Tensor | float, k: int, *, impl: str = "auto") -> torch.Tensor:
    """BitLinear inference with packed weights: ``y = (x_q W_t^T) / (s_x s_w)``, float32 ``(..., n)``.

    x_q: int8 ``(..., k)`` and x_scale: ``(..., 1)`` from per-token absmax quantisation
    (``x ~ x_q / s_x``); packed: the ternary weights; w_scale: the absmean scale ``s_w`` (``W ~ W_t / s_w``).
    The integer sum is exact; the single multiply by ``1 / (s_x s_w)`` is the only floating-point step.
    """
    acc = ternary_matmul_int(x_q, packed, k, impl=impl)
    if not isinstance(x_scale, torch.Tensor) or not x_scale.is_floating_point():
        raise TypeError("x_scale must be a floating tensor of shape (..., 1) (from rms_norm_quant)")
    if tuple(x_scale.shape) != (*x_q.shape[:-1], 1):
        raise ValueError(f"x_scale must have shape {(*x_q.shape[:-1], 1)}, got {tuple(x_scale.shape)}")
    w_scale = torch.as_tensor(w_scale, dtype=torch.float32, device=x_q.device)
    return acc.to(torch.float32) * (1.0 / (x_scale.to(torch.float32) * w_scale))
