r"""Packed ternary weights (2 bits each, 4 per byte) and the matrix product with int8 activations.

A ternary matrix ``W_t: (n, k)`` with entries in ``{-1, 0, +1}`` needs no multiplications: with int8
activations ``q: (m, k)``,

.. math::

    a_{r i} = \sum_j q_{r j} W_{t, i j} = \sum_{j:\,W_{ij} = +1} q_{r j} \;-\; \sum_{j:\,W_{ij} = -1} q_{r j},

an exact int32 sum of additions and subtractions. The MatMul-free LM (Zhu et al., 2024) stores
``W = W_t / s_w`` (absmean scale) and ``x = q / s_x`` (per-token absmax scale), so
``y = x W^T = a / (s_x s_w)``: one multiply per output, at the very end.

**Packing.** Each weight takes a 2-bit code, ``0b00 = 0``, ``0b01 = +1``, ``0b11 = -1``; ``0b10`` marks
the padding positions ``j >= k`` of a row whose length is not a multiple of 4 (so that
:func:`unpack_ternary` can tell the ``k`` the weights were packed with; every kernel reads it as 0). A row
of ``k`` weights becomes ``kp = ceil(k / 4)`` bytes in a *planar* layout: weight ``j`` lives in byte
``j % kp`` at bits ``2 * (j // kp)``. Byte ``b`` of a row therefore holds weights ``b, b + kp, b + 2 kp,
b + 3 kp``; a kernel decodes one byte into four codes that meet four *contiguous* slices of the
activations, which keeps the loads and the decode vectorisable.

Operations (reference / Numba / Triton / dispatcher, as everywhere in :mod:`paperlab_kernels`):

* :func:`pack_ternary`, :func:`unpack_ternary`: int8 ``(n, k)`` in ``{-1, 0, 1}`` <-> uint8 ``(n, kp)``.
* :func:`ternary_matmul_int`: ``a = q W_t^T`` exactly, int32 ``(m, n)``.
* :func:`ternary_linear`: ``y = a / (s_x s_w)`` in float32, the BitLinear inference product.

**The CPU kernel counts bits.** Write each int8 activation in two's complement,
``q_j = \sum_t c_t q_{tj}`` with bits ``q_{tj}``, ``c_t = 2^t`` for ``t < 7`` and ``c_7 = -128``, and use
``-q = \lnot q + 1`` (the complement's bits are ``1 - q_{tj}``). Form from the packed codes a 64-bit word
of masks for 64 weights: ``NZ`` (bit set where the weight is non-zero) and ``NEG`` (where it is -1). With
``X_t`` the word holding bit ``t`` of the activations met by those 64 weights,

.. math::

    a = \#\{j : W_j = -1\} \;+\; \sum_{t=0}^{7} c_t\,
        \operatorname{popcount}\bigl(NZ \mathbin{\&} (X_t \oplus NEG)\bigr),

because a +1 weight adds the bits of ``q_j``, a -1 weight adds the bits of ``\lnot q_j`` plus one, and a
zero weight nothing. Per 64 weights and bit-plane that is one XOR-AND (one AVX-512 ``vpternlogq``), one
popcount (``vpopcntq``; a ``pshufb`` popcount on AVX2) and one add: no decoding, no lookup table, no
multiplication. The masks come from the stored bytes with a few shifts and ANDs: a 64-bit word of the
packed row holds 32 codes, the low bit of each saying "non-zero" and the high bit (with the low one)
"-1", so the kernel pairs word ``w`` of a row with word ``w + h`` (``h`` = half the row's words), keeping
the first word's flags on the even bits and moving the second's onto the odd bits; every bit of the
masks then carries a weight, and each popcount counts 64 weights instead of 32 (the activations'
bit-planes are laid out to match, once per call: ``8 k`` bits per row, built by shifting whole words).
The lookup-table kernels of T-MAC and bitnet.cpp (TL1/TL2) solve the same problem with ``pshufb`` table
lookups over groups of 2-4 weights' activations, which Numba cannot emit; the bit-serial form needs
only operations LLVM vectorises by itself.

**The GPU kernel uses the tensor cores.** It decodes a tile of codes to int8 ``{-1, 0, 1}`` in registers
and multiplies it with the int8 activations by ``tl.dot`` (int8 products, int32 sums: exact), then
applies ``1 / (s_x s_w)`` before the one store, so ``ternary_linear`` is a single launch. On a GPU an
add-only loop on the CUDA cores costs several integer instructions per weight and cannot keep up with
the memory; the matrix units can, and the weights still travel as 2 bits.

What bounds the speed: at batch 1 (a GEMV) **memory traffic**: the packed weights are ``n k / 4`` bytes,
16x fewer than fp32 (``4 n k``), so an fp32 GEMV at full bandwidth is the bar to beat by up to 16x. On a
CPU with few cores the bit-serial inner loop (about 3 vector instructions per 64 weights and bit-plane,
about 30 per 512 weights with the masks) is bounded by **vector integer throughput**; its work grows
with the batch, while the fp32 product's weight traffic is shared by the batch.
``python -m paperlab.bench matmulfree`` reports GB/s of the packed weights against the machine's copy
bandwidth, and the speedup over ``torch`` fp32 ``F.linear``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._dispatch import (
    HAS_NUMBA,
    HAS_TRITON,
    cpu_numpy,
    numba_parallel,
    require_numba,
    require_triton,
    select_impl,
    value_checks,
)

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

CODE_PLUS, CODE_PAD, CODE_MINUS = 1, 2, 3
"""2-bit codes of +1, of a padding position (read as 0) and of -1 (0 is 0b00)."""


def packed_columns(k: int) -> int:
    """Bytes per packed row of ``k`` ternary weights: ``ceil(k / 4)``."""
    return (k + 3) // 4


# ===================================================================================== packing
def pack_ternary(w: torch.Tensor) -> torch.Tensor:
    """Pack ``w: (n, k)`` with integer values in ``{-1, 0, 1}`` into uint8 ``(n, ceil(k / 4))``.

    ``w`` may be any integer dtype or a floating tensor holding exactly -1, 0 or 1; anything else raises
    ``ValueError`` naming the offending value (the packed format cannot represent it). Packing is done
    once per model, so the check reads the values on any device.
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"w must be a 2-D (n, k) ternary matrix, got shape {tuple(w.shape)}")
    if w.dtype == torch.bool or w.is_complex():
        raise TypeError(f"w must hold the integers -1, 0, 1 (an integer or float dtype), got {w.dtype}")
    if w.shape[1] < 1:
        raise ValueError(f"w must have at least one column (k >= 1), got shape {tuple(w.shape)}")
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
    codes = torch.nn.functional.pad(codes, (0, 4 * kp - k), value=CODE_PAD)  # mark the padding
    planes = codes.view(n, 4, kp)  # planes[:, p, b] = weight b + p * kp
    packed = planes[:, 0] | (planes[:, 1] << 2) | (planes[:, 2] << 4) | (planes[:, 3] << 6)
    return packed.to(torch.uint8)


def unpack_ternary(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: uint8 ``(n, ceil(k / 4))`` -> int8 ``(n, k)`` in ``{-1, 0, 1}``.

    ``k`` must be the number of columns the weights were packed with: a larger ``k`` with the same number
    of bytes would read padding as weights, a smaller one would drop weights; both are errors (checked
    from the padding codes when :func:`~paperlab_kernels._dispatch.value_checks` allows reading values).
    """
    _check_packed(packed, k)
    n, kp = packed.shape
    p = packed.to(torch.int32)
    codes = torch.stack([(p >> (2 * plane)) & 3 for plane in range(4)], dim=1).reshape(n, 4 * kp)
    if n and value_checks(packed):
        _check_codes(codes, k)
    codes = codes[:, :k]
    return torch.where(codes == CODE_PLUS, 1, torch.where(codes == CODE_MINUS, -1, 0)).to(torch.int8)


def _check_codes(codes: torch.Tensor, k: int) -> None:
    """Codes (n, 4 kp): padding exactly at positions >= k, no padding code before k."""
    is_pad = codes == CODE_PAD
    pad_before = is_pad[:, :k]
    if bool(pad_before.any()):
        first = int(pad_before.any(0).nonzero()[0])
        packed_k = first if bool(is_pad[:, first:].all()) else None
        if packed_k is not None:
            raise ValueError(f"k = {k} is larger than the {packed_k} columns these weights were packed with "
                             "(positions from there on hold the padding code 0b10)")
        raise ValueError(f"packed holds the padding code 0b10 at column {first} < k = {k}: "
                         "it was not made by pack_ternary")
    if not bool(is_pad[:, k:].all()):
        raise ValueError(f"k = {k} is smaller than the number of columns these weights were packed with "
                         "(weights after column k would be dropped)")


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


def _check_scales(x_q: torch.Tensor, x_scale: torch.Tensor, w_scale) -> None:
    """x_scale: floating ``(..., 1)`` on x_q's device; w_scale: a number or a one-element floating tensor
    on that device, > 0 and finite (checked on the value when it can be read without a device sync)."""
    if not isinstance(x_scale, torch.Tensor) or not x_scale.is_floating_point():
        raise TypeError("x_scale must be a floating tensor of shape (..., 1) (from rms_norm_quant), got "
                        f"{getattr(x_scale, 'dtype', type(x_scale).__name__)}")
    if tuple(x_scale.shape) != (*x_q.shape[:-1], 1):
        raise ValueError(f"x_scale must have shape {(*x_q.shape[:-1], 1)}, got {tuple(x_scale.shape)}")
    if x_scale.device != x_q.device:
        raise ValueError(f"x_scale must be on the device of x_q ({x_q.device}), got {x_scale.device}")
    if isinstance(w_scale, torch.Tensor):
        if not w_scale.is_floating_point() or w_scale.numel() != 1:
            raise TypeError(f"w_scale must be a number or a one-element floating tensor, got dtype "
                            f"{w_scale.dtype} and shape {tuple(w_scale.shape)}")
        if w_scale.device != x_q.device:
            raise ValueError(f"w_scale must be on the device of x_q ({x_q.device}), got {w_scale.device}")
        if not value_checks(w_scale):
            return
        value = float(w_scale.reshape(()))
    elif isinstance(w_scale, (int, float)) and not isinstance(w_scale, bool):
        value = float(w_scale)
    else:
        raise TypeError("w_scale must be a number or a one-element floating tensor, "
                        f"got {type(w_scale).__name__}")
    if not (0 < value < math.inf):
        raise ValueError(f"w_scale (the absmean scale s_w, W ~ W_t / s_w) must be finite and > 0, "
                         f"got {value}")


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
    from numba.extending import intrinsic

    @intrinsic
    def _popcount(typingctx, x):
        """LLVM's ``ctpop``: the number of set bits of an integer (``vpopcntq`` once vectorised)."""
        sig = x(x)

        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return sig, codegen

    LOW_BITS = np.uint64(0x5555555555555555)
    """The low bit of every 2-bit code in a 64-bit word."""
    HIGH_BITS = ~LOW_BITS
    """The high bit of every 2-bit code in a 64-bit word."""
    BYTE_LOW_BITS = np.uint64(0x0101010101010101)
    """The low bit of every byte in a 64-bit word."""

    @njit(cache=True)
    def _bitplanes_numba_kernel(x, kp, out):  # pragma: no cover - jitted
        """x: (m, k) int8 -> out: (m, 8, h) uint64, the activations' bit-planes laid out like the
        kernel's paired code words (``h`` = half the 64-bit words of a packed row): bit ``8 b + 2 p`` of
        word ``w`` of plane ``t`` is bit ``t`` (two's complement) of the activation met by the low code bit
        at byte ``b``, plane ``p`` of row word ``w`` (activation ``8 w + b + p kp``), and the odd bit above
        it the same for row word ``w + h`` (activation ``8 (w + h) + b + p kp``); 0 past ``k``.

        Built without a loop over bits: the activations of plane ``p`` are copied into a zero-padded
        buffer read as 64-bit words ``Y_p`` (eight activations each); then ``(Y_p >> t) & 0x0101..01``
        holds bit ``t`` of each of the eight at the bottom of its byte, and ``<< 2 p`` moves it to its code
        position: a few shifts, ANDs and ORs per output word, vectorised over the words."""
        m, k = x.shape
        h = out.shape[2]
        planes = np.zeros((4, 16 * h), dtype=np.int8)  # the activations met by each code plane
        y = planes.view(np.uint64)  # (4, 2 h)
        for r in range(m):
            for p in range(4):
                for b in range(min(kp, k - p * kp)):  # the rest stays 0 (padding, and bytes past kp)
                    planes[p, b] = x[r, p * kp + b]
            for t in range(8):
                shift = np.uint64(t)
                for w in range(h):
                    lo = (((y[0, w] >> shift) & BYTE_LOW_BITS)
                          | (((y[1, w] >> shift) & BYTE_LOW_BITS) << np.uint64(2))
                          | (((y[2, w] >> shift) & BYTE_LOW_BITS) << np.uint64(4))
                          | (((y[3, w] >> shift) & BYTE_LOW_BITS) << np.uint64(6)))
                    hi = (((y[0, w + h] >> shift) & BYTE_LOW_BITS)
                          | (((y[1, w + h] >> shift) & BYTE_LOW_BITS) << np.uint64(2))
                          | (((y[2, w + h] >> shift) & BYTE_LOW_BITS) << np.uint64(4))
                          | (((y[3, w + h] >> shift) & BYTE_LOW_BITS) << np.uint64(6)))
                    out[r, t, w] = lo | (hi << np.uint64(1))

    def _popcount_kernel(xbits, words, scale, out):  # pragma: no cover - jitted
        """xbits: (m, 8, h) uint64; words: (n, 2 h) uint64, the packed rows -> out: (m, n), the
        int32 sums, or with ``scale: (m,)`` float32 the BitLinear output ``float32(a) * scale[r]`` (the
        same two roundings as the reference's ``a.float() * (1 / (s_x s_w))``). One weight row per prange
        iteration. Per pair of row words ``w``, ``w + h`` (64 weights): the masks ``nz`` and ``neg``, the
        first word's on the even bits and the second's on the odd bits, then per bit-plane one XOR-AND and
        popcount, written out for the 8 planes so that the loop over words is 9 vectorised reductions (see
        the module docstring for the identity)."""
        m, _, h = xbits.shape
        n = words.shape[0]
        one = np.uint64(1)
        for i in prange(n):
            row = words[i]
            for r in range(m):
                x0, x1, x2, x3 = xbits[r, 0], xbits[r, 1], xbits[r, 2], xbits[r, 3]
                x4, x5, x6, x7 = xbits[r, 4], xbits[r, 5], xbits[r, 6], xbits[r, 7]
                c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = n_minus = np.int64(0)
                for w in range(h):
                    lo, hi = row[w], row[w + h]  # two words of 32 codes -> one word of 64 weights
                    nz = (lo & LOW_BITS) | ((hi << one) & HIGH_BITS)  # weight != 0
                    neg = nz & (((lo >> one) & LOW_BITS) | (hi & HIGH_BITS))  # weight == -1 (0b11)
                    n_minus += _popcount(neg)
                    c0 += _popcount(nz & (x0[w] ^ neg))
                    c1 += _popcount(nz & (x1[w] ^ neg))
                    c2 += _popcount(nz & (x2[w] ^ neg))
                    c3 += _popcount(nz & (x3[w] ^ neg))
                    c4 += _popcount(nz & (x4[w] ^ neg))
                    c5 += _popcount(nz & (x5[w] ^ neg))
                    c6 += _popcount(nz & (x6[w] ^ neg))
                    c7 += _popcount(nz & (x7[w] ^ neg))
                acc = (n_minus + c0 + (c1 << 1) + (c2 << 2) + (c3 << 3) + (c4 << 4) + (c5 << 5)
                       + (c6 << 6) - (c7 << 7))  # c_7 = -128: the two's-complement sign bit
                if scale is None:
                    out[r, i] = np.int32(acc)
                else:
                    out[r, i] = np.float32(acc) * scale[r]

    _popcount_numba_kernel = njit(parallel=True, cache=True)(_popcount_kernel)
    _popcount_numba_kernel_serial = njit(cache=True)(_popcount_kernel)  # small products: one thread


def _packed_words(packed: torch.Tensor) -> np.ndarray:
    """The packed rows as uint64 words ``(n, 2 ceil(kp / 16))`` (an even number: the kernel pairs them);
    rows are padded with zero bytes (a copy) when ``kp`` is not a multiple of 16, i.e. ``k`` not a multiple
    of 64."""
    n, kp = packed.shape
    pn = cpu_numpy(packed, torch.uint8)
    if kp % 16:
        pn = np.pad(pn, ((0, 0), (0, 16 - kp % 16)))
    return pn.view(np.uint64)


def _numba_product(x_q: torch.Tensor, packed: torch.Tensor, k: int, scale: torch.Tensor | None):
    """The Numba product: int32 sums, or with ``scale`` (float32, one per row of ``x_q``) the float32
    ``sums * scale`` computed in the kernel (no second pass over the output)."""
    lead = x_q.shape[:-1]
    x2 = x_q.reshape(-1, k)
    m, (n, kp) = x2.shape[0], packed.shape
    out = torch.empty(m, n, dtype=torch.int32 if scale is None else torch.float32)
    if m == 0 or n == 0:
        return out.view(*lead, n)
    words = _packed_words(packed)
    xbits = np.empty((m, 8, words.shape[1] // 2), dtype=np.uint64)
    _bitplanes_numba_kernel(cpu_numpy(x2, torch.int8), kp, xbits)
    parallel = numba_parallel(m * n * 4 * kp)
    scale_np = None if scale is None else cpu_numpy(scale.reshape(m), torch.float32)
    kernel = _popcount_numba_kernel if parallel else _popcount_numba_kernel_serial
    kernel(xbits, words, scale_np, out.numpy())
    return out.view(*lead, n)


def ternary_matmul_int_numba(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """Numba bit-serial popcount kernel for :func:`ternary_matmul_int` (CPU tensors)."""
    _check_matmul(x_q, packed, k)
    require_numba(x_q)
    return _numba_product(x_q, packed, k, None)


# ====================================================================================== triton
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _ternary_triton_kernel(
        X, P, XS, WS, OUT, m, n, k, kp, stride_x, stride_p, stride_out, w_scale,
        SCALE: tl.constexpr, WS_PTR: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        """Program (block of BLOCK_M activation rows, block of BLOCK_N weight rows): for each chunk of
        BLOCK_B packed bytes, decode the four planes of codes to int8 in registers and accumulate
        ``x_plane @ w_plane^T`` with int8 ``tl.dot`` (int32 sums, exact). SCALE: store
        ``acc / (x_scale * w_scale)`` in float32; otherwise the int32 sums."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < m
        col_mask = cols < n
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        for start in range(0, kp, BLOCK_B):
            b = start + tl.arange(0, BLOCK_B)
            b_mask = b < kp
            byte = tl.load(P + cols[:, None].to(tl.int64) * stride_p + b[None, :],
                           mask=col_mask[:, None] & b_mask[None, :], other=0).to(tl.int32)
            for plane in tl.static_range(4):
                j = b + plane * kp  # activation column of this plane's weights
                xv = tl.load(X + rows[:, None].to(tl.int64) * stride_x + j[None, :],
                             mask=row_mask[:, None] & (b_mask & (j < k))[None, :], other=0)
                code = (byte >> (2 * plane)) & 3
                w = tl.where(code == 1, 1, tl.where(code == 3, -1, 0)).to(tl.int8)
                acc += tl.dot(xv, tl.trans(w), out_dtype=tl.int32)
        out_ptr = OUT + rows[:, None].to(tl.int64) * stride_out + cols[None, :]
        mask = row_mask[:, None] & col_mask[None, :]
        if SCALE:
            xs = tl.load(XS + rows, mask=row_mask, other=1.0).to(tl.float32)
            if WS_PTR:
                ws = tl.load(WS).to(tl.float32)
            else:
                ws = w_scale
            tl.store(out_ptr, acc.to(tl.float32) * (1.0 / (xs * ws))[:, None], mask=mask)
        else:
            tl.store(out_ptr, acc, mask=mask)


def _triton_launch(x_q, packed, k, x_scale=None, w_scale=None) -> torch.Tensor:
    """One launch: the int32 product, or with scales the float32 BitLinear output."""
    lead = x_q.shape[:-1]
    x2 = x_q.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, (n, kp) = x2.shape[0], packed.shape
    scaled = x_scale is not None
    out = torch.empty(m, n, dtype=torch.float32 if scaled else torch.int32, device=x_q.device)
    if m and n:
        if packed.stride(-1) != 1:
            packed = packed.contiguous()
        xs = x_scale.reshape(-1) if scaled else out
        ws_ptr = isinstance(w_scale, torch.Tensor)
        cuda = x_q.device.type == "cuda"
        block_n = 64 if cuda else 16
        block_b = 64 if cuda else 16
        grid = (triton.cdiv(m, 16), triton.cdiv(n, block_n))
        _ternary_triton_kernel[grid](
            x2, packed, xs, w_scale if ws_ptr else out, out, m, n, k, kp,
            x2.stride(0), packed.stride(0), out.stride(0), 1.0 if ws_ptr or not scaled else float(w_scale),
            SCALE=scaled, WS_PTR=ws_ptr, BLOCK_M=16, BLOCK_N=block_n, BLOCK_B=block_b,
        )
    return out.view(*lead, n)


def ternary_matmul_int_triton(x_q: torch.Tensor, packed: torch.Tensor, k: int) -> torch.Tensor:
    """Triton int8 tensor-core kernel for :func:`ternary_matmul_int` (CUDA tensors, or the interpreter)."""
    _check_matmul(x_q, packed, k)
    require_triton(x_q)
    return _triton_launch(x_q, packed, k)


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
    (``x ~ x_q / s_x``); packed: the ternary weights; w_scale: the absmean scale ``s_w > 0``
    (``W ~ W_t / s_w``), a number or a one-element tensor. The integer sum is exact; the single multiply
    by ``1 / (s_x s_w)`` is the only floating-point step (fused into the Triton kernel). Every argument is
    checked before any work; ``w_scale``'s value only where reading it costs no device synchronisation.
    """
    _check_matmul(x_q, packed, k)
    _check_scales(x_q, x_scale, w_scale)
    chosen = select_impl(impl, x_q)
    if chosen == "triton":
        return _triton_launch(x_q, packed, k, x_scale.to(torch.float32), w_scale)
    if isinstance(w_scale, torch.Tensor):  # (a Python number stays one: no copy to the device)
        w_scale = w_scale.to(torch.float32).reshape(())
    scale = 1.0 / (x_scale.to(torch.float32) * w_scale)  # (..., 1): one division per row
    if chosen == "numba":  # the multiply by the scale in the kernel, as the output is written
        return _numba_product(x_q, packed, k, scale)
    return _MATMUL_INT[chosen](x_q, packed, k).to(torch.float32) * scale
