r"""The SSD layer three ways: recurrence, quadratic (masked attention) and chunked.

The selective state space model of Mamba-2 (Dao & Gu, 2024, eq. 2, the time-varying form of the SSM of
eq. 1; section 3) maps, per head, the input ``x_t: (P,)`` to ``y_t: (P,)`` through a state
``h_t: (P, N)``:

.. math::

    h_t = a_t h_{t-1} + dt_t\, x_t B_t^\top, \qquad y_t = h_t C_t + D x_t, \qquad a_t = e^{dt_t A},

with a scalar ``A < 0`` per head (the "scalar times identity" structure that makes the duality work).
Unrolled, ``y = M (dt\,x) + D x`` with the lower-triangular matrix

.. math::

    M_{ts} = L_{ts}\, C_t^\top B_s, \qquad
    L_{ts} = \textstyle\prod_{r=s+1}^{t} a_r = e^{\mathrm{segsum}(\log a)_{ts}},

the matrix of eq. 3 with a scalar decay: a 1-semiseparable mask ``L`` (eq. 6) times the "attention
scores" ``C B^T`` (section 5.1): linear attention with a decaying causal mask (section 4). All three
functions share one signature and return ``(y, final_state)``:

* :func:`ssd_recurrent`: the recurrence (linear time, sequential);
* :func:`ssd_quadratic`: ``M`` materialised (quadratic time and memory, one big matmul);
* :func:`ssd_chunked`: the chunked algorithm (section 6), quadratic inside chunks, recurrent across.

The recurrence and the chunked algorithm are the reference twins of the kernels in
:mod:`paperlab_kernels.ssd` and live there; this module adds the quadratic form and the matrix view.
Shapes: ``x (batch, seqlen, nheads, headdim)``, ``dt (batch, seqlen, nheads)``, ``A (nheads,)``,
``B, C (batch, seqlen, ngroups, d_state)``, ``D (nheads,)`` or None,
``initial_state (batch, nheads, headdim, d_state)`` or None.
"""

from __future__ import annotations

import torch
from einops import rearrange

from paperlab_kernels.ssd import (
    _heads_of_groups,
    _sum_after,
    check_chunk_size,
    check_ssd_inputs,
    segsum,
    segsum_naive,
)
from paperlab_kernels.ssd import ssd_chunked_reference as ssd_chunked
from paperlab_kernels.ssd import ssd_recurrent_reference as ssd_recurrent

__all__ = [
    "segsum",
    "segsum_naive",
    "ssd_recurrent",
    "ssd_quadratic",
    "ssd_chunked",
    "decay_mask",
    "semiseparable_matrix",
    "block_factors",
    "random_inputs",
]


def decay_mask(dt: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``L = exp(segsum(dt A))``: ``dt (batch, seqlen, nheads)``, ``A (nheads,)`` -> (batch, nheads, T, T)."""
    return torch.exp(segsum(rearrange(dt * A, "b t h -> b h t")))


def semiseparable_matrix(dt, A, B, C) -> torch.Tensor:
    """The SSM as a matrix acting on ``dt x``: ``M = L o (C B^T)``, shape (batch, nheads, T, T)."""
    nheads = A.shape[0]
    scores = torch.einsum("bthn,bshn->bhts", _heads_of_groups(C, nheads), _heads_of_groups(B, nheads))
    return decay_mask(dt, A) * scores


def block_factors(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
                  row_chunk: int, col_chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The three factors of one off-diagonal block of one head's SSD matrix (section 6, "Low-Rank Block").

    One sequence and one head: ``dt (T,)``, ``A`` a scalar (0-d or ``(1,)``), ``B, C (T, N)``. For chunks
    ``j = row_chunk > i = col_chunk`` of ``Q = chunk_size`` positions, the block
    ``M[jQ:(j+1)Q, iQ:(i+1)Q]`` of :func:`semiseparable_matrix` equals ``left @ (center * right)`` with

    - ``left (Q, N)``: row ``t`` is ``exp(sum_{r=jQ}^{t} log a_r) C_t``, the C-side decay from the start of
      chunk ``j`` to ``t`` (step 4 of the chunked algorithm applies it);
    - ``center`` (a scalar tensor): ``exp(sum_{r=(i+1)Q}^{jQ-1} log a_r)``, the decay across the chunks
      between the two (step 3's recurrence over chunk states multiplies these up);
    - ``right (N, Q)``: column ``s`` is ``exp(sum_{r=s+1}^{(i+1)Q-1} log a_r) B_s``, the B-side decay from
      ``s`` to the end of chunk ``i`` (step 2's chunk states).

    so the block has rank at most ``N``. Derived in ``02-ssd.md`` (sec-ssd-chunked).
    """
    Q = check_chunk_size(chunk_size)
    T = dt.shape[0]
    if not (isinstance(row_chunk, int) and isinstance(col_chunk, int) and 0 <= col_chunk < row_chunk
            and (row_chunk + 1) * Q <= T):
        raise ValueError(f"need chunks 0 <= col_chunk < row_chunk with (row_chunk + 1) * chunk_size <= "
                         f"T = {T}, got row_chunk={row_chunk!r}, col_chunk={col_chunk!r}, chunk_size={Q}")
    log_a = dt * A.reshape(())  # log a_r = dt_r A
    rows, cols = slice(row_chunk * Q, (row_chunk + 1) * Q), slice(col_chunk * Q, (col_chunk + 1) * Q)
    left = torch.exp(log_a[rows].cumsum(0))[:, None] * C[rows]  # exp(sum_{r=jQ..t} log a_r) C_t
    center = torch.exp(log_a[(col_chunk + 1) * Q:row_chunk * Q].sum())  # exp(sum over chunks i+1 .. j-1)
    right = (torch.exp(_sum_after(log_a[cols]))[:, None] * B[cols]).T  # exp(sum_{r=s+1..end of i}) B_s
    return left, center, right


def ssd_quadratic(x, dt, A, B, C, D=None, initial_state=None):
    """The SSM as masked attention: ``y = (L o C B^T)(dt x) + D x``, ``T x T`` per head (section 5.1).

    An initial state adds ``exp(sum_{r<=t} log a_r) h_0 C_t`` to ``y_t``; the final state is
    ``h_T = exp(sum_r log a_r) h_0 + sum_s exp(sum_{r>s} log a_r) dt_s x_s B_s^T``.
    """
    batch, seqlen, nheads, headdim, _, d_state = check_ssd_inputs(x, dt, A, B, C, D, initial_state)
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf, dtf, Af = x.to(dtype), dt.to(dtype), A.to(dtype)
    Bh, Ch = _heads_of_groups(B.to(dtype), nheads), _heads_of_groups(C.to(dtype), nheads)
    M = semiseparable_matrix(dtf, Af, Bh, Ch)  # (b, h, t, s)
    xdt = xf * dtf[..., None]
    y = torch.einsum("bhts,bshp->bthp", M, xdt)
    log_a = dtf * Af  # (b, t, h)
    decay_to_end = torch.exp(_sum_after(rearrange(log_a, "b t h -> b h t")))  # (b, h, s)
    final = torch.einsum("bshp,bhs,bshn->bhpn", xdt, decay_to_end, Bh)
    if initial_state is not None:
        h0 = initial_state.to(dtype)
        y = y + torch.einsum("bthn,bhpn->bthp", Ch, h0) * torch.exp(log_a.cumsum(1))[..., None]
        final = final + torch.exp(log_a.sum(1))[..., None, None] * h0
    if D is not None:
        y = y + D.to(dtype)[:, None] * xf
    return y.to(x.dtype), final


def random_inputs(batch=2, seqlen=16, nheads=4, headdim=8, ngroups=1, d_state=8, *, dtype=torch.float64,
                  seed=0, with_D=True, with_initial_state=False, device="cpu"):
    """Random inputs of a Mamba-2 layer's shapes: ``dt = softplus(z - 1)`` for a standard normal ``z`` (95%
    of it in about (0.05, 1.3)), ``A`` evenly spaced in ``[-1, -0.1]`` over the heads (Mamba-2 draws
    ``-A`` from ``[1, 16]``; smaller here so that decays neither vanish nor explode over short tests)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)

    x = rand(batch, seqlen, nheads, headdim)
    dt = torch.nn.functional.softplus(rand(batch, seqlen, nheads) - 1.0)
    A = -torch.linspace(0.1, 1.0, nheads, dtype=torch.float64).to(dtype=dtype, device=device)
    B = rand(batch, seqlen, ngroups, d_state)
    C = rand(batch, seqlen, ngroups, d_state)
    D = rand(nheads) if with_D else None
    h0 = rand(batch, nheads, headdim, d_state) if with_initial_state else None
    return x, dt, A, B, C, D, h0
