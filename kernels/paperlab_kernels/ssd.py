r"""The SSD (state space duality, Mamba-2) scan: PyTorch references, Numba and Triton kernels.

The selective SSM of Mamba-2 has, per head, a scalar decay ``A < 0`` times the identity. With
``a_t = exp(dt_t A)``, head dim ``P`` and state size ``N``, its state ``h_t: (P, N)`` follows

.. math::

    h_t = a_t\, h_{t-1} + dt_t\, x_t B_t^\top, \qquad y_t = h_t C_t + D\, x_t .

Two PyTorch references compute it (both differentiable by autograd, any device, any float dtype):

* :func:`ssd_recurrent_reference`: the recurrence, one step per position (``O(T P N)`` work, ``T``
  sequential steps);
* :func:`ssd_chunked_reference`: the chunked SSD algorithm of the paper (section 6): split the sequence
  into chunks of ``chunk_size`` positions; (1) the output of each chunk from its own inputs, by the
  quadratic "attention" form inside the chunk; (2) the state at the end of each chunk from its own
  inputs; (3) a short recurrence over chunks that carries the states across; (4) each position reads
  the carried-in state through ``C`` and its decay. Mostly matmuls; linear in ``T``.

and two kernels compute the same forward pass:

* ``ssd_chunked_numba``: the chunked algorithm, one (batch, head) pair per ``prange`` iteration, the
  chunks in sequence inside it; ``C B^T`` once per group and chunk (a first pass), then per chunk two
  matmuls on the machine's BLAS (``np.dot``): outputs from ``[C e^{cs} | L o C B^T] @ [h^T; dt x]`` and the
  state update ``B^T (e^{total - cs} dt x)``; a chunk whose ``dt x`` is not all finite takes a causal loop
  instead (a matmul would spread a NaN to earlier positions); float32 or float64.
* ``ssd_chunked_triton``: the same four steps as three launches, as in the paper's GPU implementation:
  chunk states (one program per (batch x head, chunk)), the recurrence over chunk states (one program per
  (batch x head, block of P rows), chunks in sequence), and chunk outputs (one program per (batch x head,
  chunk)); the products ``C B^T``, ``(L o C B^T) X``, ``X^T B`` and ``C h^T`` are ``tl.dot`` s on tiles.
* ``ssd_scan_numba``: the sequential recurrence compiled, for comparison (the "selective scan" of
  Mamba-1, with a scalar decay).

Gradients of the kernels: their backward pass re-runs :func:`ssd_chunked_reference` under autograd
(recomputation from the saved inputs), so they are exact but no faster than the reference.

Shapes (``G`` groups share ``B`` and ``C`` across ``H / G`` heads each, like grouped-query attention;
head ``h`` reads group ``h // (H / G)``):

==================  ====================================  =========================================
argument            shape                                 meaning
==================  ====================================  =========================================
``x``               (batch, seqlen, nheads, headdim)      input (attention's V)
``dt``              (batch, seqlen, nheads)               step sizes, > 0 (after softplus)
``A``               (nheads,)                             decay rate, < 0
``B``               (batch, seqlen, ngroups, d_state)     input projection (attention's K)
``C``               (batch, seqlen, ngroups, d_state)     output projection (attention's Q)
``D``               (nheads,) or None                     skip connection
``initial_state``   (batch, nheads, headdim, d_state)     ``h_0`` (zeros when None)
returns ``y``       (batch, seqlen, nheads, headdim)      in ``x.dtype``
returns ``final``   (batch, nheads, headdim, d_state)     ``h_T``
==================  ====================================  =========================================

What bounds the speed: **arithmetic**. The chunked form does :func:`chunked_flops` against reading
``Q (P + 2N + 1)`` numbers per chunk of ``Q`` positions: with ``Q = P = N = 64`` about 30 flops per byte,
compute bound on a CPU and (in 16-bit, with tensor cores) on a GPU. Compare its GFLOP/s with the
machine's matmul rate (``python -m paperlab.bench ssd``). The sequential scan does fewer flops
(:func:`scan_flops`) but cannot use matrix units: every step is a rank-1 update of the state. Both counts
are derived in the book, ``book/02-ssd.md`` (section ``sec-ssd-cost``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from ._dispatch import (
    HAS_NUMBA,
    HAS_TRITON,
    cpu_numpy,
    require_numba,
    require_triton,
    select_impl,
    value_checks,
)

__all__ = [
    "check_ssd_inputs",
    "segsum",
    "segsum_naive",
    "ssd_recurrent_reference",
    "ssd_chunked_reference",
    "ssd_chunked_numba",
    "ssd_chunked_triton",
    "ssd_chunked",
    "ssd_scan_numba",
    "ssd_scan",
    "chunked_flops",
    "scan_flops",
]


# ================================================================================ validation
def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_chunk_size(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def check_ssd_inputs(x, dt, A, B, C, D=None, initial_state=None) -> tuple[int, int, int, int, int, int]:
    """Validate the SSD arguments; returns ``(batch, seqlen, nheads, headdim, ngroups, d_state)``.

    Errors name the argument, the expected shape and the shape received. The preconditions on values,
    ``A <= 0`` (a decay: ``a_t = exp(dt_t A) <= 1``) and ``dt >= 0`` (step sizes, e.g. softplus outputs;
    0 is the padding step), are checked when :func:`paperlab_kernels._dispatch.value_checks` allows
    reading values: always on CPU tensors, on a GPU only in debug mode (the check would synchronise).
    NaN passes the checks and propagates forward in time only, as in the recurrence.
    """
    named = {"x": x, "dt": dt, "A": A, "B": B, "C": C}
    if D is not None:
        named["D"] = D
    if initial_state is not None:
        named["initial_state"] = initial_state
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on the same device as x ({x.device}), got {t.device}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (batch, seqlen, nheads, headdim), got shape {_shape(x)}")
    batch, seqlen, nheads, headdim = x.shape
    if B.dim() != 4:
        raise ValueError(f"B must be 4-D (batch, seqlen, ngroups, d_state), got shape {_shape(B)}")
    ngroups, d_state = B.shape[2], B.shape[3]
    if tuple(B.shape[:2]) != (batch, seqlen):
        raise ValueError(f"B must have batch, seqlen = {(batch, seqlen)} like x, got shape {_shape(B)}")
    if tuple(C.shape) != tuple(B.shape):
        raise ValueError(f"C must have the shape of B {_shape(B)} (batch, seqlen, ngroups, d_state), "
                         f"got {_shape(C)}")
    if tuple(dt.shape) != (batch, seqlen, nheads):
        raise ValueError(f"dt must have shape (batch, seqlen, nheads) = {(batch, seqlen, nheads)}, "
                         f"got {_shape(dt)}")
    if tuple(A.shape) != (nheads,):
        raise ValueError(f"A must have shape (nheads,) = {(nheads,)}, got {_shape(A)}")
    if D is not None and tuple(D.shape) != (nheads,):
        raise ValueError(f"D must have shape (nheads,) = {(nheads,)} or be None, got {_shape(D)}")
    if ngroups < 1 or nheads % ngroups:
        raise ValueError(f"nheads ({nheads}) must be divisible by ngroups ({ngroups}, B.shape[2])")
    expected = (batch, nheads, headdim, d_state)
    if initial_state is not None and tuple(initial_state.shape) != expected:
        raise ValueError(f"initial_state must have shape (batch, nheads, headdim, d_state) = {expected}, "
                         f"got {_shape(initial_state)}")
    if value_checks(x):
        _check_ssd_values(dt, A)
    return batch, seqlen, nheads, headdim, ngroups, d_state


def _check_ssd_values(dt: torch.Tensor, A: torch.Tensor) -> None:
    if A.numel() and bool((A > 0).any()):
        raise ValueError("A must be <= 0 (a decay rate: a_t = exp(dt_t A) <= 1), "
                         f"got max(A) = {float(A.max()):g}")
    if dt.numel() and bool((dt < 0).any()):
        raise ValueError("dt must be >= 0 (step sizes, e.g. softplus outputs), "
                         f"got min(dt) = {float(dt.min()):g}")


def _heads_of_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(batch, seqlen, ngroups, d_state) -> (batch, seqlen, nheads, d_state): head h reads group
    h // (nheads / ngroups)."""
    return repeat(t, "b t g n -> b t (g r) n", r=nheads // t.shape[2])


# ================================================================================ segment sums
def segsum(a: torch.Tensor) -> torch.Tensor:
    r"""Stable segment sums: ``a: (..., T)`` -> ``(..., T, T)`` with

    .. math:: \mathrm{segsum}(a)_{t,s} = \textstyle\sum_{r=s+1}^{t} a_r \ (t \ge s), \qquad -\infty \ (t < s),

    so that ``exp(segsum(log a))`` is the 1-semiseparable decay mask ``L``. Each entry is a cumulative sum
    of the masked entries themselves, never a difference of two long cumulative sums (which cancels
    catastrophically when the sums are large; see :func:`segsum_naive`).
    """
    T = a.shape[-1]
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    # column s of row r holds a_r for r > s; summing down the rows gives sum_{r=s+1..t} a_r at row t
    entries = repeat(a, "... r -> ... r s", s=T).masked_fill(~strict, 0.0)
    out = entries.cumsum(dim=-2)
    causal = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return out.masked_fill(~causal, -math.inf)


def segsum_naive(a: torch.Tensor) -> torch.Tensor:
    """``cumsum(a)[t] - cumsum(a)[s]`` (masked like :func:`segsum`): cheaper, and inaccurate when the
    cumulative sums are large compared with their differences."""
    T = a.shape[-1]
    cs = a.cumsum(-1)
    out = cs[..., :, None] - cs[..., None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return out.masked_fill(~causal, -math.inf)


# ================================================================================ references
def ssd_recurrent_reference(x, dt, A, B, C, D=None, initial_state=None):
    """The recurrence ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``, one
    position at a time. Returns ``(y, final_state)``; see the module docstring for shapes."""
    batch, seqlen, nheads, headdim, _, d_state = check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    dtype = torch.promote_types(x.dtype, torch.float32)
    Bh = _heads_of_groups(B, nheads).to(dtype)  # (b, t, h, n)
    Ch = _heads_of_groups(C, nheads).to(dtype)
    xf, dtf = x.to(dtype), dt.to(dtype)
    a = torch.exp(dtf * A.to(dtype))  # (b, t, h)
    if initial_state is None:
        h = x.new_zeros((batch, nheads, headdim, d_state), dtype=dtype)
    else:
        h = initial_state.to(dtype)
    ys = []
    for t in range(seqlen):
        h = a[:, t, :, None, None] * h + (dtf[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(xf.shape)
    if D is not None:
        y = y + D.to(dtype)[:, None] * xf
    return y.to(x.dtype), h


def ssd_chunked_reference(x, dt, A, B, C, D=None, initial_state=None, *, chunk_size: int = 64):
    """The chunked SSD algorithm (paper section 6), right for any number of groups and any length (the
    sequence is padded to a multiple of ``chunk_size`` with ``dt = 0``, which neither decays the state
    nor adds to it). Returns ``(y, final_state)``; see the module docstring for shapes."""
    chunk_size = check_chunk_size(chunk_size)
    batch, seqlen, nheads, headdim, ngroups, d_state = check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    dtype = torch.promote_types(x.dtype, torch.float32)
    Q, G, R = chunk_size, ngroups, nheads // ngroups  # R heads per group
    pad = (-seqlen) % Q
    n_chunks = (seqlen + pad) // Q
    xf, dtf, Bf, Cf = (t.to(dtype) for t in (x, dt, B, C))
    if pad:
        xf, Bf, Cf = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xf, Bf, Cf))
        dtf = F.pad(dtf, (0, 0, 0, pad))
    # chunks: c = chunk, l/s = position in the chunk; heads split into (group g, head-in-group r)
    X = rearrange(xf, "b (c l) (g r) p -> b c l g r p", l=Q, g=G)
    Bc, Cc = (rearrange(t, "b (c l) g n -> b c l g n", l=Q) for t in (Bf, Cf))
    dtc = rearrange(dtf, "b (c l) (g r) -> b c l g r", l=Q, g=G)
    log_a = rearrange(dtc * rearrange(A.to(dtype), "(g r) -> g r", g=G),
                      "b c l g r -> b g r c l")  # log a_t = dt_t A
    Xdt = X * dtc[..., None]  # dt_s x_s, (b, c, s, g, r, p)

    # 1. intra-chunk outputs: Y_diag = (L o C B^T) (dt X) inside each chunk
    L = torch.exp(segsum(log_a))  # (b, g, r, c, l, s)
    CB = torch.einsum("bclgn,bcsgn->bgcls", Cc, Bc)  # (b, g, c, l, s)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    M = torch.where(causal, L * CB[:, :, None], 0.0)  # explicit zeros above the diagonal: no 0 * NaN
    # A NaN or inf in dt_s x_s reaches every later output through the state, as in the recurrence; in a
    # matmul it would also reach the earlier ones (0 * NaN above the diagonal). So it is left out of the
    # matmul and put back, as NaN, from its position on.
    finite = torch.isfinite(Xdt)
    Y_diag = torch.einsum("bgrcls,bcsgrp->bclgrp", M, torch.where(finite, Xdt, 0.0))
    Y_diag = torch.where((~finite).cumsum(dim=2, dtype=torch.int32) > 0, float("nan"), Y_diag)

    # 2. chunk states from the chunk's own inputs: sum_s exp(sum_{r>s} log a_r) dt_s x_s B_s^T
    decay_to_end = torch.exp(_sum_after(log_a))  # (b, g, r, c, s)
    states = torch.einsum("bcsgrp,bgrcs,bcsgn->bcgrpn", Xdt, decay_to_end, Bc)

    # 3. inter-chunk recurrence: h_c = exp(sum log a over chunk c) h_{c-1} + states_c
    chunk_decay = torch.exp(log_a.sum(-1))  # (b, g, r, c)
    if initial_state is None:
        h = xf.new_zeros((batch, G, R, headdim, d_state))
    else:
        h = rearrange(initial_state.to(dtype), "b (g r) p n -> b g r p n", g=G)
    carried = []  # the state entering each chunk
    for c in range(n_chunks):
        carried.append(h)
        h = chunk_decay[..., c, None, None] * h + states[:, c]
    if not carried:  # an empty sequence: no output, the final state is the initial one
        return x.new_zeros(x.shape).to(x.dtype), h.reshape(batch, nheads, headdim, d_state)
    carried = torch.stack(carried, dim=1)  # (b, c, g, r, p, n)

    # 4. state -> output: y_l += exp(sum_{r<=l} log a_r) C_l h_{c-1}
    decay_from_start = torch.exp(log_a.cumsum(-1))  # (b, g, r, c, l)
    Y_off = torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", Cc, carried, decay_from_start)

    y = rearrange(Y_diag + Y_off, "b c l g r p -> b (c l) (g r) p")[:, :seqlen]
    if D is not None:
        y = y + D.to(dtype)[:, None] * xf[:, :seqlen]
    return y.to(x.dtype), rearrange(h, "b g r p n -> b (g r) p n")


def _sum_after(a: torch.Tensor) -> torch.Tensor:
    """``out[..., s] = sum_{r > s} a[..., r]`` as a reversed cumulative sum of the shifted entries
    (no subtraction, so no cancellation)."""
    shifted = F.pad(a[..., 1:], (0, 1))
    return shifted.flip(-1).cumsum(-1).flip(-1)


# ================================================================================ flop counts
def chunked_flops(batch, seqlen, nheads, headdim, ngroups, d_state, chunk_size) -> float:
    """Floating-point operations of the chunked algorithm on dense blocks (as the PyTorch reference and
    the Triton kernel compute them): ``2 (Q^2 N + Q^2 P + 2 Q P N)`` per (batch, head) and chunk of ``Q``
    positions, a multiply-add counted as two; derived in ``book/02-ssd.md`` (sec-ssd-cost)."""
    Q = chunk_size
    n_chunks = -(-seqlen // Q)
    return 2.0 * batch * nheads * n_chunks * (Q * Q * d_state + Q * Q * headdim + 2 * Q * headdim * d_state)


def scan_flops(batch, seqlen, nheads, headdim, d_state) -> float:
    """Floating-point operations of the recurrence: ``6 T P N`` per (batch, head), three multiply-adds per
    state entry and position, a multiply-add counted as two; derived in ``book/02-ssd.md`` (sec-ssd-cost)."""
    return 6.0 * batch * seqlen * nheads * headdim * d_state


# ================================================================================ numba
if HAS_NUMBA:
    from numba import njit, prange, types
    from numba.extending import intrinsic, overload

    # Re-association and contraction (FMA) only: LLVM may vectorise sums, and NaN / inf keep their meaning.
    _FASTMATH = {"reassoc", "contract"}

    @intrinsic
    def _bits_to_float32(typingctx, i):
        """Reinterpret an int32's bits as a float32 (used to build ``2^n`` from its exponent field)."""
        sig = types.float32(types.int32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.float32))

        return sig, codegen

    @njit(fastmath=_FASTMATH)
    def _exp_float32(x):  # pragma: no cover - jitted
        """``e^x`` for float32 without a libm call, so that loops of it vectorise (Numba has no vector
        math library here; ``np.exp`` is one scalar call per element). ``x = n ln 2 + r`` with
        ``|r| <= ln 2 / 2``, a degree-7 polynomial for ``e^r`` (Cephes ``expf``, relative error below
        ``1e-7``), and ``2^n`` assembled from exponent bits in two halves so that results down to the
        denormals come out right. NaN gives NaN, ``x > 88.72`` inf, ``x < -104`` zero."""
        xc = min(max(x, np.float32(-104.0)), np.float32(88.7))
        n = np.floor(xc * np.float32(1.4426950408889634) + np.float32(0.5))
        r = xc - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * r * r + r + np.float32(1.0)
        half = np.int32(n) >> np.int32(1)
        rest = np.int32(n) - half
        value = (p * _bits_to_float32((half + np.int32(127)) << np.int32(23))
                 * _bits_to_float32((rest + np.int32(127)) << np.int32(23)))
        value = np.float32(np.inf) if x > np.float32(88.72) else value
        return value if x == x else x

    def _exp(x):  # pragma: no cover - replaced by the overload in jitted code
        return np.exp(x)

    @overload(_exp)
    def _exp_overload(x):
        """The vectorisable exp for float32, ``np.exp`` (libm) for float64."""
        if x == types.float32:
            return lambda x: _exp_float32(x)
        return lambda x: np.exp(x)

    @njit(parallel=True, cache=True)
    def _chunk_scores_numba_kernel(Bg, Cg, chunk, CB):  # pragma: no cover - jitted
        """``C B^T`` of every chunk, once per group (heads of a group share it): Bg, Cg (b, g, t, n)
        contiguous -> CB (b, g, n_chunks, chunk, chunk); rows and columns past the sequence unused."""
        nb, ng, nt, _ = Bg.shape
        nc = CB.shape[2]
        for i in prange(nb * ng * nc):
            b = i // (ng * nc)
            g = (i // nc) % ng
            c0 = (i % nc) * chunk
            q = min(chunk, nt - c0)
            CB[b, g, i % nc, :q, :q] = np.dot(Cg[b, g, c0:c0 + q], Bg[b, g, c0:c0 + q].T)

    @njit(cache=True, fastmath=_FASTMATH)
    def _causal_rows(L, R, n_state, t0, Y):  # pragma: no cover - jitted
        """``Y[tt] = sum_col L[tt, col] R[col]`` over the state rows and the positions ``s <= t0 + tt``
        only: the causal loop used for a chunk whose inputs are not all finite (a matmul would multiply
        the zeros above the diagonal by a later NaN or inf and spread it to earlier outputs)."""
        rows, npp = Y.shape
        for tt in range(rows):
            for p in range(npp):
                Y[tt, p] = 0.0
            for col in range(n_state + t0 + tt + 1):
                coef = L[tt, col]
                for p in range(npp):
                    Y[tt, p] += coef * R[col, p]

    @njit(cache=True, fastmath=_FASTMATH)
    def _decay_rows(Cc, CBc, cs, t0, t1, L, zero):  # pragma: no cover - jitted
        """Rows ``t0 <= t < t1`` of a chunk's left matmul operand, ``L[t - t0] = [C_t e^{cs_t} |
        e^{cs_t - cs_s} (C_t . B_s) for s <= t, 0 for s > t]``. The loop over ``s`` runs over the whole
        width (a fixed trip count vectorises) and selects 0 above the diagonal, so a NaN or inf there
        never reaches ``L``."""
        nn_ = Cc.shape[1]
        width = L.shape[1] - nn_
        for t in range(t0, t1):
            row = t - t0
            e = _exp(cs[t])
            for n in range(nn_):
                L[row, n] = Cc[t, n] * e
            for s in range(width):
                v = CBc[t, s] * _exp(cs[t] - cs[s])
                L[row, nn_ + s] = v if s <= t else zero

    @njit(parallel=True, cache=True, fastmath=_FASTMATH)
    def _chunked_numba_kernel(x, dt, A, Bg, Cg, D, has_d, h0, y, hT, chunk, CB):  # pragma: no cover - jitted
        """x (b, t, h, p), dt (b, t, h), Bg/Cg (b, g, t, n), CB from :func:`_chunk_scores_numba_kernel`,
        h0/hT (b, h, p, n), y (b, t, h, p). One (batch, head) per prange iteration, chunks in sequence,
        the state kept transposed in the first ``N`` rows of ``R = [h^T; dt x]``, so that steps 1 and 4
        are one matmul per half chunk, ``[C e^{cs} | L o C B^T] @ [h^T; dt x]``, and steps 2-3 another,
        ``h^T <- e^{total} h^T + B^T (e^{total - cs} dt x)`` (``np.dot``: the machine's BLAS). The upper
        right quarter of each chunk's ``L o C B^T``, which is zero, is skipped by splitting the chunk's
        rows in two halves. Exponentials are only taken on the lower triangle."""
        nb, nt, nh, npp = x.shape
        ng, nn_ = Bg.shape[1], Bg.shape[3]
        per_group = nh // ng
        for bh in prange(nb * nh):
            b = bh // nh
            h = bh % nh
            g = h // per_group
            ty = x.dtype
            zero = np.zeros(1, dtype=ty)[0]
            cs = np.empty(chunk, dtype=ty)
            R = np.empty((nn_ + chunk, npp), dtype=ty)
            L_top = np.empty(chunk * (nn_ + chunk), dtype=ty)
            L_bottom = np.empty(chunk * (nn_ + chunk), dtype=ty)
            Xw = np.empty((chunk, npp), dtype=ty)
            for n in range(nn_):
                for p in range(npp):
                    R[n, p] = h0[b, h, p, n]
            a_h = A[h]
            for c0 in range(0, nt, chunk):
                q = min(chunk, nt - c0)
                h1 = (q + 1) // 2  # rows of the top half
                h2 = q - h1
                Bc = Bg[b, g, c0:c0 + q]
                Cc = Cg[b, g, c0:c0 + q]
                CBc = CB[b, g, c0 // chunk]
                run = zero
                poison = zero  # stays 0 unless some dt x is NaN or inf (then 0 * it is NaN)
                for i in range(q):  # cumulative log decay, and dt x into R
                    d_i = dt[b, c0 + i, h]
                    run += d_i * a_h
                    cs[i] = run
                    for p in range(npp):
                        v = d_i * x[b, c0 + i, h, p]
                        R[nn_ + i, p] = v
                        poison += zero * v
                finite = poison == zero
                total = cs[q - 1]
                # 1 + 4: rows t of [C_t e^{cs_t} | exp(cs_t - cs_s) (C_t . B_s), s <= t; 0 for s > t]
                Lt = L_top[: h1 * (nn_ + h1)].reshape(h1, nn_ + h1)
                Lb = L_bottom[: h2 * (nn_ + q)].reshape(h2, nn_ + q)
                _decay_rows(Cc, CBc, cs, 0, h1, Lt, zero)
                _decay_rows(Cc, CBc, cs, h1, q, Lb, zero)
                if finite:
                    Y_top = np.dot(Lt, R[: nn_ + h1])
                    Y_bottom = np.dot(Lb, R[: nn_ + q])
                else:
                    Y_top = np.empty((h1, npp), dtype=ty)
                    Y_bottom = np.empty((h2, npp), dtype=ty)
                    _causal_rows(Lt, R, nn_, 0, Y_top)
                    _causal_rows(Lb, R, nn_, h1, Y_bottom)
                d_h = D[h] if has_d else zero
                for t in range(h1):
                    for p in range(npp):
                        y[b, c0 + t, h, p] = Y_top[t, p] + d_h * x[b, c0 + t, h, p]
                for t in range(h2):
                    for p in range(npp):
                        y[b, c0 + h1 + t, h, p] = Y_bottom[t, p] + d_h * x[b, c0 + h1 + t, h, p]
                # 2 + 3: h^T <- exp(total) h^T + B^T (exp(total - cs) dt x)
                for s in range(q):
                    w = _exp(total - cs[s])
                    for p in range(npp):
                        Xw[s, p] = R[nn_ + s, p] * w
                U = np.dot(Bc.T, Xw[:q])
                decay = _exp(total)
                for n in range(nn_):
                    for p in range(npp):
                        R[n, p] = decay * R[n, p] + U[n, p]
            for n in range(nn_):
                for p in range(npp):
                    hT[b, h, p, n] = R[n, p]

    @njit(parallel=True, cache=True, fastmath=True)
    def _scan_numba_kernel(x, dt, A, B, C, D, has_d, h0, y, hT):  # pragma: no cover - jitted
        """The sequential recurrence; one (batch, head) per prange iteration."""
        nb, nt, nh, npp = x.shape
        ng, nn_ = B.shape[2], B.shape[3]
        per_group = nh // ng
        for bh in prange(nb * nh):
            b = bh // nh
            h = bh % nh
            g = h // per_group
            state = h0[b, h].copy()
            zero = np.zeros(1, dtype=x.dtype)[0]
            for t in range(nt):
                a = np.exp(dt[b, t, h] * A[h])
                for p in range(npp):
                    xv = dt[b, t, h] * x[b, t, h, p]
                    v = zero
                    for n in range(nn_):
                        s_new = a * state[p, n] + xv * B[b, t, g, n]
                        state[p, n] = s_new
                        v += s_new * C[b, t, g, n]
                    y[b, t, h, p] = v + (D[h] * x[b, t, h, p] if has_d else zero)
            hT[b, h] = state


def _numba_run(kernel, x, dt, A, B, C, D, initial_state, extra):
    batch, seqlen, nheads, headdim = x.shape
    d_state = B.shape[3]
    np_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    arrays = [t if isinstance(t, np.ndarray) else cpu_numpy(t, np_dtype) for t in (x, dt, A, B, C)]
    d = cpu_numpy(D, np_dtype) if D is not None else np.zeros(nheads, dtype=arrays[0].dtype)
    if initial_state is not None:
        h0 = cpu_numpy(initial_state, np_dtype)
    else:
        h0 = np.zeros((batch, nheads, headdim, d_state), dtype=arrays[0].dtype)
    y = torch.empty((batch, seqlen, nheads, headdim), dtype=np_dtype)
    hT = torch.empty((batch, nheads, headdim, d_state), dtype=np_dtype)
    kernel(*arrays, d, D is not None, h0, y.numpy(), hT.numpy(), *extra)
    return y.to(x.dtype), hT


_BLAS_CONTROLLER = None


def _one_blas_thread():
    """A context in which the BLAS that Numba's ``np.dot`` calls (SciPy's OpenBLAS) runs on one thread.

    The chunked kernel already spreads its (batch, head) pairs over every core with ``prange``; when a
    matmul inside it is large enough for OpenBLAS to start its own threads (``d_state`` = 256 at a chunk
    of 64), the two thread pools fight for the cores (OpenBLAS prints "Detect OpenMP Loop and this
    application may hang") and the call became 22x slower than at ``d_state`` = 64 (16 ms against 0.7 ms
    at T = 1024 on 2 cores). Inside the kernel each matmul is small, so one BLAS thread per ``prange``
    worker is the right split. The controller (which finds the loaded BLAS libraries) is made once."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS that Numba's np.dot calls)
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def _chunked_numba_forward(x, dt, A, B, C, D, initial_state, chunk_size):
    batch, seqlen = x.shape[:2]
    ngroups = B.shape[2]
    np_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    # (b, g, t, n): a chunk of one group's B or C is then one contiguous block, as np.dot wants
    Bg, Cg = (t.detach().to(device="cpu", dtype=np_dtype).transpose(1, 2).contiguous().numpy()
              for t in (B, C))
    n_chunks = -(-seqlen // chunk_size)
    CB = np.empty((batch, ngroups, n_chunks, chunk_size, chunk_size), dtype=Bg.dtype)
    with _one_blas_thread():
        if CB.size:
            _chunk_scores_numba_kernel(Bg, Cg, chunk_size, CB)
        return _numba_run(_chunked_numba_kernel, x, dt, A, Bg, Cg, D, initial_state, (chunk_size, CB))


def _scan_numba_forward(x, dt, A, B, C, D, initial_state, chunk_size):
    return _numba_run(_scan_numba_kernel, x, dt, A, B, C, D, initial_state, ())


# ================================================================================ triton
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _chunk_state_kernel(
        X, DT, A, B, STATES, TOTAL,
        T, H, P, N, per_group, n_chunks,
        sxb, sxt, sxh, sdb, sdt, sbb, sbt, sbg,
        PRECISION: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Step 2, one program per (batch x head, chunk): the chunk's own final state
        ``S_c = sum_s exp(sum_{r>s} log a_r) dt_s x_s B_s^T`` (P, N) and its total log decay."""
        bh = tl.program_id(0)
        c = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = bh % H
        g = h // per_group
        offs_q = tl.arange(0, BLOCK_Q)
        offs_p = tl.arange(0, BLOCK_P)
        offs_n = tl.arange(0, BLOCK_N)
        t = c * BLOCK_Q + offs_q
        mt = t < T
        x = tl.load(X + b * sxb + t[:, None].to(tl.int64) * sxt + h * sxh + offs_p[None, :],
                    mask=mt[:, None] & (offs_p[None, :] < P), other=0.0).to(tl.float32)  # (Q, P)
        dt = tl.load(DT + b * sdb + t.to(tl.int64) * sdt + h, mask=mt, other=0.0).to(tl.float32)
        Bm = tl.load(B + b * sbb + t[:, None].to(tl.int64) * sbt + g * sbg + offs_n[None, :],
                     mask=mt[:, None] & (offs_n[None, :] < N), other=0.0).to(tl.float32)  # (Q, N)
        log_a = dt * tl.load(A + h).to(tl.float32)
        cs = tl.cumsum(log_a, axis=0)
        total = tl.sum(log_a, axis=0)
        xw = x * (tl.exp(total - cs) * dt)[:, None]
        S = tl.dot(tl.trans(xw), Bm, input_precision=PRECISION)  # (P, N)
        chunk_id = bh.to(tl.int64) * n_chunks + c
        tl.store(STATES + chunk_id * P * N + offs_p[:, None] * N + offs_n[None, :], S,
                 mask=(offs_p[:, None] < P) & (offs_n[None, :] < N))
        tl.store(TOTAL + chunk_id, total)

    @triton.jit
    def _state_passing_kernel(
        STATES, TOTAL, H0, HT, P, N, n_chunks,
        HAS_H0: tl.constexpr, BLOCK_PS: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Step 3, one program per (batch x head, block of P rows): the short recurrence over chunks
        ``h_c = exp(total_c) h_{c-1} + S_c``. Overwrites ``STATES[c]`` in place with the state
        *entering* chunk c (which step 4 reads) and writes the final state."""
        bh = tl.program_id(0).to(tl.int64)
        offs_p = tl.program_id(1) * BLOCK_PS + tl.arange(0, BLOCK_PS)
        offs_n = tl.arange(0, BLOCK_N)
        tile = offs_p[:, None] * N + offs_n[None, :]
        m = (offs_p[:, None] < P) & (offs_n[None, :] < N)
        if HAS_H0:
            state = tl.load(H0 + bh * P * N + tile, mask=m, other=0.0).to(tl.float32)
        else:
            state = tl.zeros((BLOCK_PS, BLOCK_N), dtype=tl.float32)
        for c in range(0, n_chunks):
            ptr = STATES + (bh * n_chunks + c) * P * N + tile
            own = tl.load(ptr, mask=m, other=0.0)
            tl.store(ptr, state, mask=m)
            state = tl.exp(tl.load(TOTAL + bh * n_chunks + c)) * state + own
        tl.store(HT + bh * P * N + tile, state, mask=m)

    @triton.jit
    def _chunk_scan_kernel(
        X, DT, A, B, C, D, CARRIED, Y,
        T, H, P, N, per_group, n_chunks,
        sxb, sxt, sxh, sdb, sdt, sbb, sbt, sbg,
        HAS_D: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """Steps 1 and 4, one program per (batch x head, chunk): the intra-chunk output
        ``(L o C B^T)(dt x)`` plus the carried-in state read out, ``exp(cs_t) C_t h_{c-1}``, plus ``D x``."""
        bh = tl.program_id(0)
        c = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = bh % H
        g = h // per_group
        offs_q = tl.arange(0, BLOCK_Q)
        offs_p = tl.arange(0, BLOCK_P)
        offs_n = tl.arange(0, BLOCK_N)
        t = c * BLOCK_Q + offs_q
        mt = t < T
        x_off = b * sxb + t[:, None].to(tl.int64) * sxt + h * sxh + offs_p[None, :]
        xm = mt[:, None] & (offs_p[None, :] < P)
        x = tl.load(X + x_off, mask=xm, other=0.0).to(tl.float32)  # (Q, P)
        dt = tl.load(DT + b * sdb + t.to(tl.int64) * sdt + h, mask=mt, other=0.0).to(tl.float32)
        bc_off = b * sbb + t[:, None].to(tl.int64) * sbt + g * sbg + offs_n[None, :]
        bm = mt[:, None] & (offs_n[None, :] < N)
        Bm = tl.load(B + bc_off, mask=bm, other=0.0).to(tl.float32)  # (Q, N)
        Cm = tl.load(C + bc_off, mask=bm, other=0.0).to(tl.float32)
        chunk_id = bh.to(tl.int64) * n_chunks + c
        state = tl.load(CARRIED + chunk_id * P * N + offs_p[:, None] * N + offs_n[None, :],
                        mask=(offs_p[:, None] < P) & (offs_n[None, :] < N), other=0.0)  # (P, N)
        cs = tl.cumsum(dt * tl.load(A + h).to(tl.float32), axis=0)
        causal = offs_q[:, None] >= offs_q[None, :]
        CB = tl.dot(Cm, tl.trans(Bm), input_precision=PRECISION)  # (Q, Q)
        M = tl.where(causal, tl.exp(tl.where(causal, cs[:, None] - cs[None, :], 0.0)) * CB * dt[None, :], 0.0)
        # A NaN or inf in x_s must reach y_t for t >= s only (as in the recurrence): keep it out of the
        # matmul, where the zeros above the diagonal would multiply it, and put it back from s on.
        bad = (x != x) | (tl.abs(x) == float("inf"))
        y = tl.dot(M, tl.where(bad, 0.0, x), input_precision=PRECISION)
        y += tl.dot(Cm, tl.trans(state), input_precision=PRECISION) * tl.exp(cs)[:, None]
        if HAS_D:
            y += tl.load(D + h).to(tl.float32) * x
        y = tl.where(tl.cumsum(bad.to(tl.int32), axis=0) > 0, float("nan"), y)
        tl.store(Y + x_off, y.to(Y.dtype.element_ty), mask=xm)


_TRITON_WARPS = 4  # warps per program of the three launches


def _triton_forward(x, dt, A, B, C, D, initial_state, chunk_size):
    """Three launches, parallel over chunks where the work is (steps 1, 2, 4) and sequential only where
    it must be (step 3, over ``T / Q`` chunk states rather than ``T`` positions)."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, d_state = B.shape[2], B.shape[3]
    x, dt, B, C = (t.contiguous() for t in (x, dt, B, C))
    A = A.contiguous()
    y = torch.empty_like(x)
    hT = torch.empty((batch, nheads, headdim, d_state), dtype=torch.float32, device=x.device)
    if batch * nheads == 0 or seqlen == 0:
        if initial_state is not None:
            hT.copy_(initial_state)
        else:
            hT.zero_()
        return y, hT.to(torch.promote_types(x.dtype, torch.float32))
    block_q = max(16, triton.next_power_of_2(chunk_size))
    block_p = max(16, triton.next_power_of_2(headdim))
    block_n = max(16, triton.next_power_of_2(d_state))
    block_ps = 16
    n_chunks = triton.cdiv(seqlen, block_q)
    states = torch.empty((batch * nheads, n_chunks, headdim, d_state), dtype=torch.float32, device=x.device)
    totals = torch.empty((batch * nheads, n_chunks), dtype=torch.float32, device=x.device)
    h0 = initial_state.float().contiguous() if initial_state is not None else hT
    # float32 input: three-pass TF32 on tensor cores (about float32 accuracy); 16-bit input: one pass
    precision = "tf32x3" if x.dtype in (torch.float32, torch.float64) else "tf32"
    strides = (x.stride(0), x.stride(1), x.stride(2), dt.stride(0), dt.stride(1),
               B.stride(0), B.stride(1), B.stride(2))
    sizes = (seqlen, nheads, headdim, d_state, nheads // ngroups, n_chunks)
    _chunk_state_kernel[(batch * nheads, n_chunks)](
        x, dt, A, B, states, totals, *sizes, *strides,
        PRECISION=precision, BLOCK_Q=block_q, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=_TRITON_WARPS)
    _state_passing_kernel[(batch * nheads, triton.cdiv(headdim, block_ps))](
        states, totals, h0, hT, headdim, d_state, n_chunks,
        HAS_H0=initial_state is not None, BLOCK_PS=block_ps, BLOCK_N=block_n, num_warps=_TRITON_WARPS)
    _chunk_scan_kernel[(batch * nheads, n_chunks)](
        x, dt, A, B, C, D.contiguous() if D is not None else A, states, y, *sizes, *strides,
        HAS_D=D is not None, PRECISION=precision, BLOCK_Q=block_q, BLOCK_P=block_p, BLOCK_N=block_n,
        num_warps=_TRITON_WARPS)
    return y, hT.to(torch.promote_types(x.dtype, torch.float32))


# ================================================================================ autograd + API
class _KernelFunction(torch.autograd.Function):
    """Forward by a kernel; backward by re-running :func:`ssd_chunked_reference` under autograd on the
    saved inputs (exact gradients; the speed of the reference)."""

    @staticmethod
    def forward(ctx, forward_fn, chunk_size, x, dt, A, B, C, D, initial_state):
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(x, dt, A, B, C, D, initial_state)
        with torch.no_grad():
            return forward_fn(x, dt, A, B, C, D, initial_state, chunk_size)

    @staticmethod
    def backward(ctx, dy, dstate):
        inputs = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad[2:])]
        with torch.enable_grad():
            y, state = ssd_chunked_reference(*inputs, chunk_size=ctx.chunk_size)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            outs, grads_out = [y], [dy]
            if dstate is not None:
                outs.append(state)
                grads_out.append(dstate)
            grads = iter(torch.autograd.grad(outs, wanted, grads_out, allow_unused=True) if wanted else ())
        result = [next(grads) if t is not None and t.requires_grad else None for t in inputs]
        return (None, None, *result)


def _apply(forward_fn, x, dt, A, B, C, D, initial_state, chunk_size):
    y, state = _KernelFunction.apply(forward_fn, chunk_size, x, dt, A, B, C, D, initial_state)
    return y, state


def ssd_chunked_numba(x, dt, A, B, C, D=None, initial_state=None, *, chunk_size: int = 64):
    """The chunked algorithm as a Numba CPU kernel (parallel over batch x heads). Same contract as
    :func:`ssd_chunked_reference`; computes in float32 (float64 for float64 input)."""
    chunk_size = check_chunk_size(chunk_size)
    check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    require_numba(x)
    return _apply(_chunked_numba_forward, x, dt, A, B, C, D, initial_state, chunk_size)


def ssd_chunked_triton(x, dt, A, B, C, D=None, initial_state=None, *, chunk_size: int = 64):
    """The chunked algorithm as three Triton kernels (parallel over chunks); computes in float32.
    The chunk is ``max(16, next_power_of_2(chunk_size))`` positions (``tl.dot`` needs tiles of >= 16);
    the result does not depend on the chunk size."""
    chunk_size = check_chunk_size(chunk_size)
    check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    require_triton(x)
    return _apply(_triton_forward, x, dt, A, B, C, D, initial_state, chunk_size)


def ssd_scan_numba(x, dt, A, B, C, D=None, initial_state=None):
    """The sequential recurrence as a Numba CPU kernel (parallel over batch x heads)."""
    check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    require_numba(x)
    return _apply(_scan_numba_forward, x, dt, A, B, C, D, initial_state, 1)


_CHUNKED = {"reference": ssd_chunked_reference, "numba": ssd_chunked_numba, "triton": ssd_chunked_triton}


def ssd_chunked(x, dt, A, B, C, D=None, initial_state=None, *, chunk_size: int = 64, impl: str = "auto"):
    """The chunked SSD scan; ``impl``: ``"auto"`` (Triton on CUDA, Numba on CPU), ``"reference"``,
    ``"numba"`` or ``"triton"``. Returns ``(y, final_state)``."""
    check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    return _CHUNKED[select_impl(impl, x)](x, dt, A, B, C, D, initial_state, chunk_size=chunk_size)


def ssd_scan(x, dt, A, B, C, D=None, initial_state=None, *, impl: str = "auto"):
    """The sequential recurrence; ``impl``: ``"auto"`` (Numba on CPU, else the reference),
    ``"reference"`` or ``"numba"``."""
    check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    if impl == "triton":
        raise ValueError("ssd_scan has no Triton kernel (use ssd_chunked on a GPU); impl must be one of "
                         "('auto', 'reference', 'numba')")
    chosen = select_impl(impl, x)
    if chosen == "numba":
        return ssd_scan_numba(x, dt, A, B, C, D, initial_state)
    return ssd_recurrent_reference(x, dt, A, B, C, D, initial_state)
