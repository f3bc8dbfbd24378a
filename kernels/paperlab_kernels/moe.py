r"""Mixture-of-experts dispatch and combine: group tokens by expert within capacity, scatter outputs back.

A sparsely gated MoE layer (GShard, Lepikhin et al., 2020; fairseq ``modules/moe/top2gate.py`` and
``moe_layer.py``, used by NLLB) sends each of ``T`` tokens to ``k`` of ``E`` experts (top-2 in NLLB). Each
expert runs one dense FFN on a fixed-size buffer of ``C`` rows, its **capacity**; fairseq's ``top2gating``
uses ``C = 2 ceil(T / E)`` in training, and a capacity factor ``f`` gives ``C = ceil(f k T / E)``. The
layer is three steps:

1. **Routing** (:func:`assign_slots`): the gate picks ``expert_index[t, j]`` for choice ``j < k`` of token
   ``t``; each (token, choice) gets a position ``slot[t, j]`` in its expert's buffer, in priority order:
   all first choices before any second choice, each in token order (fairseq's ``locations1`` and
   ``locations2 + sum(mask1)``: a cumulative sum over a one-hot mask). A choice whose position would be
   ``>= C`` is **dropped** (``slot = -1``): that token gets no output from that expert (with both choices
   dropped its FFN output is zero and only the residual connection carries it). Padding is never routed.
2. **Dispatch** (:func:`dispatch`): gather the routed token rows into the expert buffers,

   .. math:: B[e, c] = x_t \quad \text{for the } (t, j) \text{ with } \text{expert\_index}[t, j] = e,\
             \text{slot}[t, j] = c; \qquad B[e, c] = 0 \text{ for an unused slot.}

   GShard writes this as the einsum ``"sec,sm->ecm"`` with a dense dispatch mask of shape ``(T, E, C)``;
   here it is a row gather, without the ``T E C`` mask.
3. The experts run on ``B`` (``(E, C, d) -> (E, C, d)``, batched over ``e``), then **combine**
   (:func:`combine`) scatters their outputs back, weighted by the gate values:

   .. math:: y_t = \textstyle\sum_{j:\ s_{tj} \ge 0} \text{gate}[t, j]\; O[e_{tj}, s_{tj}],
             \qquad e = \text{expert\_index},\ s = \text{slot}

   (GShard's ``"sec,ecm->sm"`` with the combine weights).

Gradients: dispatch's backward gathers ``dL/dB`` back to the tokens, ``dL/dx_t = sum_j dL/dB[e_tj, c_tj]``
over kept choices; combine's backward dispatches the gate-weighted output gradient to the buffer,
``dL/dO[e, c] = gate[t, j] dL/dy_t`` for the (t, j) in that slot, and gives
``dL/dgate[t, j] = <O[e_tj, c_tj], dL/dy_t>`` (zero for dropped choices).

What bounds the speed: **memory traffic**; there is no arithmetic to speak of. Ideal traffic, ``n_kept``
kept (token, choice) pairs: dispatch reads ``n_kept`` token rows and writes the ``E C`` buffer rows (zeros
included); combine reads ``n_kept`` buffer rows and writes ``T`` output rows. The reference twins are
vectorised PyTorch index ops that also materialise a ``(T, k, d)`` gathered copy; the Numba and Triton
kernels move each row once: dispatch is parallel over buffer rows (an inverse map ``buffer row ->
(token, choice)`` makes every row written exactly once, zeros included, without atomics), combine is
parallel over tokens (each output row is owned by one thread/program, so no write races).

Each operation has the package quartet: ``*_reference`` (PyTorch, any device, autograd), ``*_numba``,
``*_triton`` and the dispatcher; plus :func:`dispatch_combine_loop`, the naive per-token loop that is the
ground truth for tests and the slow baseline of ``python -m paperlab.bench moe``. The Numba kernels compute
in float32 or float64 (the input's dtype; 16-bit inputs are computed in float32), Triton likewise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ._dispatch import (
    HAS_NUMBA,
    HAS_TRITON,
    check_floating,
    check_same_device,
    check_vector,
    cpu_numpy,
    numba_parallel,
    require_numba,
    require_triton,
    select_impl,
    value_checks,
)

__all__ = [
    "assign_slots",
    "capacity_for",
    "dispatch",
    "dispatch_reference",
    "dispatch_numba",
    "dispatch_triton",
    "combine",
    "combine_reference",
    "combine_numba",
    "combine_triton",
    "dispatch_combine_loop",
]


# ====================================================================================== validation
def _check_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_index_tensor(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an int32 or int64 tensor, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (tokens, k), got shape {tuple(t.shape)}")


def _range_error(name: str, low: int, high: int, lower: int, upper: int, what: str) -> ValueError | None:
    if low < lower or high >= upper:
        return ValueError(
            f"{name} must lie in [{lower}, {what} = {upper}){' (-1 = dropped)' * (lower < 0)}, "
            f"got values in [{low}, {high}]"
        )
    return None


def _check_expert_index(expert_index: torch.Tensor, n_experts: int) -> None:
    _check_index_tensor("expert_index", expert_index)
    if expert_index.numel() and value_checks(expert_index):
        low, high = torch.stack([expert_index.min(), expert_index.max()]).tolist()
        err = _range_error("expert_index", low, high, 0, n_experts, "n_experts")
        if err:
            raise err


def _check_routing(
    expert_index: torch.Tensor,
    slot: torch.Tensor,
    n_tokens: int,
    n_experts: int,
    capacity: int,
    ref_name: str,
    ref: torch.Tensor,
) -> None:
    """expert_index and slot: (n_tokens, k) ints on ref's device, in range, no two pairs in one slot.

    Shapes, dtypes and devices are always checked. The values (ranges, a slot used twice) are checked when
    :func:`~paperlab_kernels._dispatch.value_checks` allows it: on CPU tensors, or on a GPU in debug mode,
    at the cost of one device synchronisation (a single ``tolist`` of five statistics). Without it, an
    out-of-range pair is not read or written by any kernel: it poisons the outputs that depend on it
    with NaN (see :func:`_flat_rows`); a duplicate slot, which :func:`assign_slots` never makes, is not
    detected.
    """
    _check_index_tensor("expert_index", expert_index)
    _check_index_tensor("slot", slot)
    if expert_index.shape[0] != n_tokens:
        raise ValueError(
            f"expert_index must have {n_tokens} rows (the tokens of {ref_name}), "
            f"got shape {tuple(expert_index.shape)}"
        )
    if tuple(slot.shape) != tuple(expert_index.shape):
        raise ValueError(
            f"slot must have the shape of expert_index {tuple(expert_index.shape)}, got {tuple(slot.shape)}"
        )
    check_same_device("expert_index", expert_index, ref_name, ref)
    check_same_device("slot", slot, ref_name, ref)
    if not slot.numel() or not value_checks(ref):
        return
    n_rows = n_experts * capacity
    # Occupancy of each buffer row (row n_rows collects the dropped and the out-of-range pairs).
    flat = _flat_rows(expert_index, slot, capacity, n_experts)
    flat = torch.where(flat >= 0, flat, torch.full_like(flat, n_rows)).reshape(-1)
    occupancy = torch.zeros(n_rows + 1, dtype=torch.int32, device=flat.device)
    occupancy = occupancy.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))[:n_rows]
    e_lo, e_hi = torch.aminmax(expert_index)
    s_lo, s_hi = torch.aminmax(slot)
    stats = [e_lo.long(), e_hi.long(), s_lo.long(), s_hi.long(), occupancy.max().long()]
    e_lo, e_hi, s_lo, s_hi, most = torch.stack(stats).tolist()  # the one device sync
    err = _range_error("expert_index", e_lo, e_hi, 0, n_experts, "n_experts") or _range_error(
        "slot", s_lo, s_hi, -1, capacity, "capacity"
    )
    if err:
        raise err
    if most > 1:
        dup = int(occupancy.argmax())
        raise ValueError(
            f"two (token, choice) pairs share the buffer slot (expert {dup // capacity}, "
            f"slot {dup % capacity}); slots must be unique per expert (use assign_slots)"
        )


DROPPED, INVALID = -1, -2
"""Entries of the ``flat`` table besides buffer rows: a dropped choice, and an out-of-range pair."""


def _flat_rows(expert_index: torch.Tensor, slot: torch.Tensor, capacity: int, n_experts: int) -> torch.Tensor:
    """Row of the flattened (E C, d) buffer for each (token, choice): ``e C + slot``; :data:`DROPPED` (-1)
    for ``slot = -1``; :data:`INVALID` (-2) when ``e`` or ``slot`` is out of range (only possible when the
    value checks are off). Elementwise, no device synchronisation."""
    e, s = expert_index.long(), slot.long()
    in_range = (e >= 0) & (e < n_experts) & (s >= -1) & (s < capacity)
    kept = torch.where(s >= 0, e * capacity + s, torch.full_like(s, DROPPED))
    return torch.where(in_range, kept, torch.full_like(s, INVALID))


def _poisoned(flat: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor on flat's device: does any pair have an out-of-range index? (No sync.)"""
    return (flat == INVALID).any() if flat.numel() else torch.zeros((), dtype=torch.bool, device=flat.device)


# ========================================================================================= routing
def capacity_for(n_tokens: int, n_experts: int, k: int = 2, capacity_factor: float = 1.0) -> int:
    """``C = ceil(capacity_factor * k * T / E)`` (at least 1); ``capacity_factor = 1`` with ``k = 2`` is
    fairseq's training capacity ``2 ceil(T / E)`` up to rounding."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or n_tokens < 0:
        raise ValueError(f"n_tokens must be an integer >= 0, got {n_tokens!r}")
    _check_int("n_experts", n_experts)
    _check_int("k", k)
    if not (isinstance(capacity_factor, (int, float)) and capacity_factor > 0):
        raise ValueError(f"capacity_factor must be a number > 0, got {capacity_factor!r}")
    return max(1, int(np.ceil(capacity_factor * k * n_tokens / n_experts - 1e-9)))


def assign_slots(
    expert_index: torch.Tensor, n_experts: int, capacity: int, *, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Position of each (token, choice) in its expert's buffer, or -1 when dropped or padding.

    expert_index: (T, k) int in [0, n_experts), column ``j`` is every token's ``j``-th choice.
    valid: optional (T,) bool; ``valid[t] == False`` (padding) is never routed and takes no capacity.
    Priority as in GShard / fairseq ``top2gating``: all first choices (j = 0) in token order, then all
    second choices, ...; the running count per expert is a cumulative sum over the one-hot choices, and a
    choice whose count reaches ``capacity`` is dropped. Returns (T, k) int64 slots in [-1, capacity).
    Pure PyTorch, any device, no device synchronisation (an out-of-range expert index, possible only with
    the value checks off, takes no capacity and gets slot -1); not differentiable (integer output).
    """
    _check_int("n_experts", n_experts)
    _check_int("capacity", capacity)
    _check_expert_index(expert_index, n_experts)
    n_tokens, k = expert_index.shape
    if valid is not None:
        if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool:
            raise TypeError(
                f"valid must be a bool tensor, got {getattr(valid, 'dtype', type(valid).__name__)}"
            )
        check_vector("valid", valid, n_tokens, "tokens (rows of expert_index)")
        check_same_device("valid", valid, "expert_index", expert_index)
    # (k, T, E): choice-major order, so that every first choice counts before any second choice. (A
    # comparison rather than F.one_hot, which reads the largest index back to the host on a GPU.)
    experts = torch.arange(n_experts, device=expert_index.device)
    onehot = (expert_index.long().t()[..., None] == experts).long()
    if valid is not None:
        onehot = onehot * valid.view(1, n_tokens, 1).long()
    running = onehot.reshape(k * n_tokens, n_experts).cumsum(0).reshape(k, n_tokens, n_experts)
    position = (running * onehot).sum(-1) - 1  # (k, T): own expert's count before this one; -1 if unrouted
    slot = torch.where(position < capacity, position, torch.full_like(position, -1))
    return slot.t().contiguous()


# ======================================================================================= reference
def _check_dispatch(x, expert_index, slot, n_experts, capacity) -> None:
    check_floating("x", x)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (tokens, d), got shape {tuple(x.shape)}")
    _check_int("n_experts", n_experts)
    _check_int("capacity", capacity)
    _check_routing(expert_index, slot, x.shape[0], n_experts, capacity, "x", x)


def _check_combine(expert_out, expert_index, slot, gate) -> None:
    check_floating("expert_out", expert_out)
    if expert_out.dim() != 3 or expert_out.shape[0] < 1 or expert_out.shape[1] < 1:
        raise ValueError(
            f"expert_out must be 3-D (n_experts >= 1, capacity >= 1, d), got shape {tuple(expert_out.shape)}"
        )
    check_floating("gate", gate)
    _check_index_tensor("expert_index", expert_index)
    if tuple(gate.shape) != tuple(expert_index.shape):
        raise ValueError(
            f"gate must have the shape of expert_index {tuple(expert_index.shape)}, got {tuple(gate.shape)}"
        )
    check_same_device("gate", gate, "expert_out", expert_out)
    n_experts, capacity = expert_out.shape[:2]
    _check_routing(expert_index, slot, expert_index.shape[0], n_experts, capacity, "expert_out", expert_out)


def dispatch_reference(
    x: torch.Tensor, expert_index: torch.Tensor, slot: torch.Tensor, n_experts: int, capacity: int
) -> torch.Tensor:
    """PyTorch twin of :func:`dispatch`: ``index_add`` of the kept token rows into a zero buffer.

    Returns (n_experts, capacity, d) in x's dtype; differentiable (autograd) w.r.t. x.
    """
    _check_dispatch(x, expert_index, slot, n_experts, capacity)
    return _dispatch_torch(x, expert_index, slot, n_experts, capacity)


def _dispatch_torch(x, expert_index, slot, n_experts, capacity):
    n_tokens, k = expert_index.shape
    n_rows = n_experts * capacity
    flat = _flat_rows(expert_index, slot, capacity, n_experts).reshape(-1)
    # Dropped pairs go to an extra row n_rows that is cut off; kept rows are unique, so adding = copying.
    target = torch.where(flat >= 0, flat, torch.full_like(flat, n_rows))
    buffer = x.new_zeros(n_rows + 1, x.shape[1]).index_add(0, target, x.repeat_interleave(k, dim=0))
    buffer = torch.where(_poisoned(flat), float("nan"), buffer[:n_rows])  # an out-of-range pair: all NaN
    return buffer.view(n_experts, capacity, x.shape[1])


def combine_reference(
    expert_out: torch.Tensor, expert_index: torch.Tensor, slot: torch.Tensor, gate: torch.Tensor
) -> torch.Tensor:
    """PyTorch twin of :func:`combine`: gather the (T, k, d) rows, weight by gate (0 if dropped), sum over k.

    Returns (T, d) in expert_out's dtype; differentiable (autograd) w.r.t. expert_out and gate.
    """
    _check_combine(expert_out, expert_index, slot, gate)
    return _combine_torch(expert_out, expert_index, slot, gate)


def _combine_torch(expert_out, expert_index, slot, gate):
    n_experts, capacity, d = expert_out.shape
    flat = _flat_rows(expert_index, slot, capacity, n_experts)
    kept = flat >= 0
    rows = expert_out.reshape(n_experts * capacity, d)[flat.clamp(min=0)]  # (T, k, d)
    weight = gate.to(expert_out.dtype) * kept.to(expert_out.dtype)
    y = (rows * weight.unsqueeze(-1)).sum(1)
    return torch.where((flat == INVALID).any(1, keepdim=True), float("nan"), y)  # out-of-range pair: NaN


def dispatch_combine_loop(
    x: torch.Tensor,
    expert_index: torch.Tensor,
    slot: torch.Tensor,
    gate: torch.Tensor,
    expert_fn: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The naive MoE layer, one token at a time: ``y[t] = sum_j gate[t, j] expert_fn(e_tj, x[t])`` over the
    kept choices (``slot[t, j] >= 0``); a token with every choice dropped gets zeros.

    expert_fn(e, row) maps a (d,) row to a (d,) row (expert ``e``'s FFN; the identity gives
    ``combine(dispatch(x))``). Slow ground truth for tests and the benchmark; differentiable by autograd.
    Capacity is implied by ``slot`` (computed by :func:`assign_slots`).
    """
    check_floating("x", x)
    check_floating("gate", gate)
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (tokens, d), got shape {tuple(x.shape)}")
    _check_index_tensor("expert_index", expert_index)
    _check_index_tensor("slot", slot)
    if expert_index.shape[0] != x.shape[0] or slot.shape != expert_index.shape or gate.shape != slot.shape:
        raise ValueError(
            f"expert_index, slot and gate must all be ({x.shape[0]}, k) for x of shape {tuple(x.shape)}, got "
            f"{tuple(expert_index.shape)}, {tuple(slot.shape)}, {tuple(gate.shape)}"
        )
    if not callable(expert_fn):
        raise TypeError(f"expert_fn must be callable (e, row) -> row, got {type(expert_fn).__name__}")
    e_list, s_list = expert_index.tolist(), slot.tolist()
    rows = []
    for t in range(x.shape[0]):
        acc = torch.zeros_like(x[t])
        for j, (e, s) in enumerate(zip(e_list[t], s_list[t], strict=True)):
            if s >= 0:
                out = expert_fn(int(e), x[t])
                if out.shape != x[t].shape:
                    raise ValueError(
                        f"expert_fn must return a row of shape {tuple(x[t].shape)}, got {tuple(out.shape)}"
                    )
                acc = acc + gate[t, j].to(x.dtype) * out
        rows.append(acc)
    return torch.stack(rows) if rows else x.new_zeros(0, x.shape[1])


# ============================================================================= kernel primitives
# Three row primitives on the flattened buffer (R = E C rows) and the (T, k) table ``flat`` of buffer rows
# (-1 = dropped, -2 = out of range: its outputs become NaN); both operations and both backward passes are
# made of them:
#   gather(src (R, d), flat, w) -> (T, d):  out[t] = sum_j w[t, j] src[flat[t, j]]    (combine, dispatch bwd)
#   scatter(src (T, d), flat, w, R) -> (R, d): out[flat[t, j]] = w[t, j] src[t], 0 if unused  (dispatch,
#                                                                                         combine bwd)
#   dots(a (R, d), flat, b (T, d)) -> (T, k): <a[flat[t, j]], b[t]>, 0 if dropped        (combine bwd: gate)
# ``w = None`` means weight 1.
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


if HAS_NUMBA:
    from numba import njit, prange

    @njit(cache=True)
    def _inverse_numba_kernel(flat, inv):  # pragma: no cover
        """inv[r] = the flat (token, choice) entry that owns buffer row r, or -1 (serial, T k steps).
        Returns True when some entry is out of range (-2)."""
        for r in range(inv.shape[0]):
            inv[r] = -1
        poisoned = False
        for i in range(flat.shape[0]):
            if flat[i] >= 0:
                inv[flat[i]] = i
            elif flat[i] == -2:
                poisoned = True
        return poisoned

    def _scatter_numba_kernel_py(src, inv, weight, use_weight, k, poisoned, out):  # pragma: no cover
        """Parallel over buffer rows: each row is written once, with its token's row or zeros (all NaN
        when some pair was out of range)."""
        n_rows, d = out.shape
        for r in prange(n_rows):
            i = inv[r]
            if poisoned:
                for c in range(d):
                    out[r, c] = np.nan
            elif i < 0:
                for c in range(d):
                    out[r, c] = 0.0
            elif use_weight:
                t = i // k
                w = weight[i]
                for c in range(d):
                    out[r, c] = w * src[t, c]
            else:
                t = i // k
                for c in range(d):
                    out[r, c] = src[t, c]

    _scatter_numba_kernel = njit(parallel=True, cache=True)(_scatter_numba_kernel_py)
    _scatter_numba_kernel_serial = njit(cache=True)(_scatter_numba_kernel_py)  # small calls: one thread


    def _gather_numba_kernel_py(src, flat, weight, use_weight, out):  # pragma: no cover
        """Parallel over tokens: each output row is owned by one thread (no write races)."""
        n_tokens, k = flat.shape
        d = out.shape[1]
        for t in prange(n_tokens):
            for c in range(d):
                out[t, c] = 0.0
            for j in range(k):
                r = flat[t, j]
                if r >= 0:
                    if use_weight:
                        w = weight[t, j]
                        for c in range(d):
                            out[t, c] += w * src[r, c]
                    else:
                        for c in range(d):
                            out[t, c] += src[r, c]
            for j in range(k):
                if flat[t, j] == -2:  # an out-of-range pair: the token's row is NaN
                    for c in range(d):
                        out[t, c] = np.nan

    _gather_numba_kernel = njit(parallel=True, cache=True)(_gather_numba_kernel_py)
    _gather_numba_kernel_serial = njit(cache=True)(_gather_numba_kernel_py)  # small calls: one thread


    def _dots_numba_kernel_py(a, flat, b, out):  # pragma: no cover
        n_tokens, k = flat.shape
        d = b.shape[1]
        for t in prange(n_tokens):
            for j in range(k):
                r = flat[t, j]
                acc = 0.0
                if r >= 0:
                    for c in range(d):
                        acc += a[r, c] * b[t, c]
                out[t, j] = acc if r != -2 else np.nan

    _dots_numba_kernel = njit(parallel=True, cache=True)(_dots_numba_kernel_py)
    _dots_numba_kernel_serial = njit(cache=True)(_dots_numba_kernel_py)  # small calls: one thread



class _NumbaBackend:
    @staticmethod
    def scatter(src, flat, weight, n_rows):
        dt = _compute_dtype(src.dtype)
        s = cpu_numpy(src, dt)
        f = cpu_numpy(flat, torch.int64)
        inv = np.empty(n_rows, dtype=np.int64)
        poisoned = _inverse_numba_kernel(f.reshape(-1), inv)
        w = cpu_numpy(weight, dt).reshape(-1) if weight is not None else np.zeros(1, dtype=s.dtype)
        out = np.empty((n_rows, s.shape[1]), dtype=s.dtype)
        kernel = _scatter_numba_kernel if numba_parallel(out.size) else _scatter_numba_kernel_serial
        kernel(s, inv, w, weight is not None, max(1, f.shape[1]), poisoned, out)
        return torch.from_numpy(out).to(src.dtype)

    @staticmethod
    def gather(src, flat, weight):
        dt = _compute_dtype(src.dtype)
        s = cpu_numpy(src, dt)
        f = cpu_numpy(flat, torch.int64)
        w = cpu_numpy(weight, dt) if weight is not None else np.zeros((1, 1), dtype=s.dtype)
        out = np.empty((f.shape[0], s.shape[1]), dtype=s.dtype)
        parallel = numba_parallel(f.size * s.shape[1])
        (_gather_numba_kernel if parallel else _gather_numba_kernel_serial)(s, f, w, weight is not None, out)
        return torch.from_numpy(out).to(src.dtype)

    @staticmethod
    def dots(a, flat, b):
        dt = _compute_dtype(a.dtype)
        f = cpu_numpy(flat, torch.int64)
        out = np.empty(f.shape, dtype=np.dtype("float64" if dt == torch.float64 else "float32"))
        kernel = _dots_numba_kernel if numba_parallel(2 * f.size * b.shape[1]) else _dots_numba_kernel_serial
        kernel(cpu_numpy(a, dt), f, cpu_numpy(b, dt), out)
        return torch.from_numpy(out).to(a.dtype)


if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _scatter_triton_kernel(
        SRC,
        INV,
        W,
        POISON,
        OUT,
        n_rows,
        k,
        d,
        USE_W: tl.constexpr,
        F64: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Program (block of buffer rows, block of columns): OUT[r] = W[i] SRC[i // k] for the entry i
        owning row r, zeros for an unused row; every row written once; all NaN when POISON (some pair was
        out of range: a device flag, read here rather than on the host)."""
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        rmask = rows < n_rows
        cmask = cols < d
        i = tl.load(INV + rows, mask=rmask, other=-1)
        kept = i >= 0
        t = tl.where(kept, i // k, 0)
        v = tl.load(SRC + t[:, None] * d + cols[None, :], mask=kept[:, None] & cmask[None, :], other=0.0)
        if F64:
            v = v.to(tl.float64)
        else:
            v = v.to(tl.float32)
        if USE_W:
            w = tl.load(W + tl.where(kept, i, 0), mask=kept, other=0.0).to(v.dtype)
            v = v * w[:, None]
        v = tl.where(tl.load(POISON) != 0, float("nan"), v)
        tl.store(
            OUT + rows[:, None] * d + cols[None, :],
            v.to(OUT.dtype.element_ty),
            mask=rmask[:, None] & cmask[None, :],
        )

    @triton.jit
    def _gather_triton_kernel(
        SRC,
        FLAT,
        W,
        OUT,
        n_tokens,
        k,
        d,
        USE_W: tl.constexpr,
        F64: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Program (block of tokens, block of columns): OUT[t] = sum_j W[t, j] SRC[FLAT[t, j]]."""
        tok = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        tmask = tok < n_tokens
        cmask = cols < d
        acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        if F64:
            acc = acc.to(tl.float64)
        bad = tok < 0  # all False: a token with an out-of-range pair (-2) gets a NaN row
        for j in range(k):
            r = tl.load(FLAT + tok * k + j, mask=tmask, other=-1)
            kept = r >= 0
            bad = bad | (r == -2)
            rr = tl.where(kept, r, 0)
            v = tl.load(SRC + rr[:, None] * d + cols[None, :], mask=kept[:, None] & cmask[None, :], other=0.0)
            v = v.to(acc.dtype)
            if USE_W:
                w = tl.load(W + tok * k + j, mask=kept, other=0.0).to(acc.dtype)
                v = v * w[:, None]
            acc += v
        acc = tl.where(bad[:, None], float("nan"), acc)
        tl.store(
            OUT + tok[:, None] * d + cols[None, :],
            acc.to(OUT.dtype.element_ty),
            mask=tmask[:, None] & cmask[None, :],
        )

    @triton.jit
    def _dots_triton_kernel(
        A, FLAT, B, OUT, n_tokens, k, d, F64: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr
    ):
        """Program (block of tokens): OUT[t, j] = <A[FLAT[t, j]], B[t]>, 0 for a dropped choice."""
        tok = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
        tmask = tok < n_tokens
        for j in range(k):
            r = tl.load(FLAT + tok * k + j, mask=tmask, other=-1)
            kept = r >= 0
            rr = tl.where(kept, r, 0)
            acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
            if F64:
                acc = acc.to(tl.float64)
            for start in range(0, d, BLOCK_D):
                cols = start + tl.arange(0, BLOCK_D)
                m = kept[:, None] & (cols < d)[None, :]
                a = tl.load(A + rr[:, None] * d + cols[None, :], mask=m, other=0.0).to(acc.dtype)
                b = tl.load(B + tok[:, None] * d + cols[None, :], mask=m, other=0.0).to(acc.dtype)
                acc += a * b
            dot = tl.where(r == -2, float("nan"), tl.sum(acc, axis=1))
            tl.store(OUT + tok * k + j, dot.to(OUT.dtype.element_ty), mask=tmask)


def _triton_blocks(d: int) -> tuple[int, int]:
    return 16, min(128, triton.next_power_of_2(max(d, 1)))


class _TritonBackend:
    @staticmethod
    def scatter(src, flat, weight, n_rows):
        src = src.contiguous()
        n_tokens, k = flat.shape
        d = src.shape[1]
        f = flat.reshape(-1)
        # Inverse map without a boolean mask (no device sync): dropped pairs write to a spare last entry.
        inv = torch.full((n_rows + 1,), -1, dtype=torch.int64, device=src.device)
        inv.scatter_(
            0, torch.where(f >= 0, f, torch.full_like(f, n_rows)), torch.arange(f.numel(), device=src.device)
        )
        inv = inv[:n_rows]
        poison = _poisoned(f).to(torch.int32)
        out = torch.empty((n_rows, d), dtype=src.dtype, device=src.device)
        w = weight.contiguous() if weight is not None else src  # unused pointer when USE_W is False
        block_r, block_d = _triton_blocks(d)
        if n_rows and d:
            _scatter_triton_kernel[(triton.cdiv(n_rows, block_r), triton.cdiv(d, block_d))](
                src,
                inv,
                w,
                poison,
                out,
                n_rows,
                max(1, k),
                d,
                USE_W=weight is not None,
                F64=src.dtype == torch.float64,
                BLOCK_R=block_r,
                BLOCK_D=block_d,
            )
        return out

    @staticmethod
    def gather(src, flat, weight):
        src = src.contiguous()
        n_tokens, k = flat.shape
        d = src.shape[1]
        out = torch.empty((n_tokens, d), dtype=src.dtype, device=src.device)
        w = weight.contiguous() if weight is not None else src
        block_t, block_d = _triton_blocks(d)
        if n_tokens and d:
            _gather_triton_kernel[(triton.cdiv(n_tokens, block_t), triton.cdiv(d, block_d))](
                src,
                flat.contiguous(),
                w,
                out,
                n_tokens,
                k,
                d,
                USE_W=weight is not None,
                F64=src.dtype == torch.float64,
                BLOCK_T=block_t,
                BLOCK_D=block_d,
            )
        return out

    @staticmethod
    def dots(a, flat, b):
        n_tokens, k = flat.shape
        d = b.shape[1]
        out = torch.zeros((n_tokens, k), dtype=a.dtype, device=a.device)
        block_t, block_d = _triton_blocks(d)
        if n_tokens and k and d:
            _dots_triton_kernel[(triton.cdiv(n_tokens, block_t),)](
                a.contiguous(),
                flat.contiguous(),
                b.contiguous(),
                out,
                n_tokens,
                k,
                d,
                F64=a.dtype == torch.float64,
                BLOCK_T=block_t,
                BLOCK_D=block_d,
            )
        return out


# ========================================================================= autograd and public API
class _DispatchFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, flat, n_rows, backend):
        ctx.save_for_backward(flat)
        ctx.backend = backend
        return backend.scatter(x, flat, None, n_rows)

    @staticmethod
    def backward(ctx, grad_buffer):
        (flat,) = ctx.saved_tensors
        grad_x = ctx.backend.gather(grad_buffer, flat, None) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None


class _CombineFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, flat, gate, backend):
        ctx.save_for_backward(rows, flat, gate)
        ctx.backend = backend
        return backend.gather(rows, flat, gate)

    @staticmethod
    def backward(ctx, grad_y):
        rows, flat, gate = ctx.saved_tensors
        grad_rows = grad_gate = None
        if ctx.needs_input_grad[0]:
            grad_rows = ctx.backend.scatter(grad_y, flat, gate, rows.shape[0])
        if ctx.needs_input_grad[2]:
            grad_gate = ctx.backend.dots(rows, flat, grad_y)
        return grad_rows, None, grad_gate, None


def _dispatch_kernel(x, expert_index, slot, n_experts, capacity, backend):
    flat = _flat_rows(expert_index, slot, capacity, n_experts)
    buffer = _DispatchFunction.apply(x, flat, n_experts * capacity, backend)
    return buffer.view(n_experts, capacity, x.shape[1])


def _combine_kernel(expert_out, expert_index, slot, gate, backend):
    n_experts, capacity, d = expert_out.shape
    flat = _flat_rows(expert_index, slot, capacity, n_experts)
    rows = expert_out.reshape(n_experts * capacity, d)
    return _CombineFunction.apply(rows, flat, gate.to(expert_out.dtype), backend)


def dispatch_numba(
    x: torch.Tensor, expert_index: torch.Tensor, slot: torch.Tensor, n_experts: int, capacity: int
) -> torch.Tensor:
    """:func:`dispatch` with the Numba CPU kernels (differentiable w.r.t. x)."""
    _check_dispatch(x, expert_index, slot, n_experts, capacity)
    require_numba(x)
    return _dispatch_kernel(x, expert_index, slot, n_experts, capacity, _NumbaBackend)


def dispatch_triton(
    x: torch.Tensor, expert_index: torch.Tensor, slot: torch.Tensor, n_experts: int, capacity: int
) -> torch.Tensor:
    """:func:`dispatch` with the Triton kernels (differentiable w.r.t. x)."""
    _check_dispatch(x, expert_index, slot, n_experts, capacity)
    require_triton(x)
    return _dispatch_kernel(x, expert_index, slot, n_experts, capacity, _TritonBackend)


def combine_numba(
    expert_out: torch.Tensor, expert_index: torch.Tensor, slot: torch.Tensor, gate: torch.Tensor
) -> torch.Tensor:
    """:func:`combine` with the Numba CPU kernels (differentiable w.r.t. expert_out and gate)."""
    _check_combine(expert_out, expert_index, slot, gate)
    require_numba(expert_out)
    return _combine_kernel(expert_out, expert_index, slot, gate, _NumbaBackend)


def combine_triton(
    expert_out: torch.Tensor, expert_index: torch.Tensor, slot: torch.Tensor, gate: torch.Tensor
) -> torch.Tensor:
    """:func:`combine` with the Triton kernels (differentiable w.r.t. expert_out and gate)."""
    _check_combine(expert_out, expert_index, slot, gate)
    require_triton(expert_out)
    return _combine_kernel(expert_out, expert_index, slot, gate, _TritonBackend)


def dispatch(
    x: torch.Tensor,
    expert_index: torch.Tensor,
    slot: torch.Tensor,
    n_experts: int,
    capacity: int,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Group the tokens by expert: ``buffer[e, c] = x[t]`` for the (t, j) routed to expert e at slot c.

    x: (T, d) float; expert_index, slot: (T, k) int (slot from :func:`assign_slots`, -1 = dropped).
    Returns the (n_experts, capacity, d) expert buffers in x's dtype, zeros in unused slots;
    differentiable w.r.t. x. ``impl``: ``"auto"`` (Triton on CUDA, Numba on CPU), ``"reference"``,
    ``"numba"`` or ``"triton"``.
    """
    _check_dispatch(x, expert_index, slot, n_experts, capacity)
    which = select_impl(impl, x)
    if which == "reference":
        return _dispatch_torch(x, expert_index, slot, n_experts, capacity)
    backend = _NumbaBackend if which == "numba" else _TritonBackend
    return _dispatch_kernel(x, expert_index, slot, n_experts, capacity, backend)


def combine(
    expert_out: torch.Tensor,
    expert_index: torch.Tensor,
    slot: torch.Tensor,
    gate: torch.Tensor,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Scatter the expert outputs back: ``y[t] = sum_j gate[t, j] expert_out[e_tj, slot_tj]`` over kept j.

    expert_out: (n_experts, capacity, d) float; expert_index, slot: (T, k) int; gate: (T, k) float.
    Returns (T, d) in expert_out's dtype (rows of fully dropped tokens are zero); differentiable w.r.t.
    expert_out and gate. ``impl`` as in :func:`dispatch`.
    """
    _check_combine(expert_out, expert_index, slot, gate)
    which = select_impl(impl, expert_out)
    if which == "reference":
        return _combine_torch(expert_out, expert_index, slot, gate)
    backend = _NumbaBackend if which == "numba" else _TritonBackend
    return _combine_kernel(expert_out, expert_index, slot, gate, backend)
