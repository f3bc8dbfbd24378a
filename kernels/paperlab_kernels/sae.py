r"""Sparse decoder of a TopK sparse autoencoder: forward and backward without the dense latent matrix.

A TopK SAE encodes each token into ``k`` (value, latent index) pairs. Its decoder (Gao et al., 2024,
the second line of eq. 1 fed the latents of eq. 2; a sparse kernel as in the reference ``kernels.py``)
is then a sparse-dense matmul: output row ``b`` sums ``k`` rows of the decoder weight ``W: (n_latents, d)``
(row ``i`` is latent ``i``'s decoder direction, the paper's column ``i`` of ``W_dec``) weighted by the
values:

.. math::

    y_b = \textstyle\sum_{j<k} v_{bj}\, W_{i_{bj}}, \qquad
    \frac{\partial L}{\partial v_{bj}} = g_b \cdot W_{i_{bj}}, \qquad
    \frac{\partial L}{\partial W_i} = \textstyle\sum_{(b,j):\, i_{bj} = i} v_{bj}\, g_b ,

with ``g = dL/dy: (batch, d)``. The first is a gather-and-scale, the second a dense-dense product
evaluated only at the chosen indices, the third a sparse-transpose-dense product. The dense reference
scatters the values into ``z: (batch, n_latents)`` (duplicate indices add up) and computes ``z @ W``:
``2 batch n_latents d`` flops forward and twice that backward, almost all of them multiplications by
zero. The sparse versions do ``2 batch k d`` flops each way.

What bounds the speed: **memory traffic**. The sparse kernels do 2 flops per 4-byte weight element they
read (arithmetic intensity 0.5 flop/byte), so they are bound by bandwidth. The ideal traffic (fp32) is

* forward: read ``batch k`` (value, index) pairs and ``batch k`` weight rows (``batch k d`` floats), write
  ``batch d`` floats;
* backward: read ``g`` (``batch d``) and the same ``batch k d`` weight rows again (for ``dv``), write
  ``dW``, which is a dense ``(n_latents, d)`` gradient (``n_latents d`` floats, mostly zeros, because an
  optimizer such as Adam wants a dense gradient).

For ``dW`` both kernels first sort the ``batch k`` entries by latent (a counting sort: CSR offsets plus
the entry order), then give each latent's row to one thread (Numba) or program (Triton), which zeroes
it and adds up its entries: no atomics, deterministic, and every row of ``dW`` written exactly once.

Each operation has the package quartet: :func:`sparse_decode_reference` (dense PyTorch, autograd),
:func:`sparse_decode_numba`, :func:`sparse_decode_triton` and the dispatcher :func:`sparse_decode`.
Every implementation returns ``promote_types(values.dtype, weight.dtype)``; the kernels load any float
dtype and compute in float32, or in float64 when that is the result type. Gradients have the dtypes of
``values`` and ``weight``.

Indices are range-checked where that costs no device synchronisation (on CPU tensors, or on a GPU in
debug mode, see :func:`paperlab_kernels._dispatch.value_checks`). Without the check the kernels never
read outside ``weight``: an out-of-range index makes its output row (and its value's gradient) NaN.
"""

from __future__ import annotations

import numpy as np
import torch

from ._dispatch import (
    HAS_NUMBA,
    HAS_TRITON,
    check_floating,
    check_same_device,
    cpu_numpy,
    numba_parallel,
    require_numba,
    require_triton,
    select_impl,
    value_checks,
)

__all__ = [
    "sparse_decode",
    "sparse_decode_reference",
    "sparse_decode_numba",
    "sparse_decode_triton",
]


# ====================================================================================== validation
def _check_inputs(values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor) -> None:
    check_floating("values", values)
    check_floating("weight", weight)
    if not isinstance(indices, torch.Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"indices must be an int32 or int64 tensor, got {indices.dtype}")
    if values.dim() != 2:
        raise ValueError(f"values must be 2-D (batch, k), got shape {tuple(values.shape)}")
    if tuple(indices.shape) != tuple(values.shape):
        raise ValueError(
            f"indices must have the shape of values {tuple(values.shape)}, got {tuple(indices.shape)}"
        )
    if weight.dim() != 2 or weight.shape[0] < 1:
        raise ValueError(f"weight must be 2-D (n_latents >= 1, d), got shape {tuple(weight.shape)}")
    check_same_device("indices", indices, "values", values)
    check_same_device("weight", weight, "values", values)
    if indices.numel() and value_checks(indices):
        low, high = torch.stack([indices.min(), indices.max()]).tolist()
        if low < 0 or high >= weight.shape[0]:
            raise ValueError(
                f"indices must lie in [0, n_latents = {weight.shape[0]}), got values in [{low}, {high}]"
            )


# ======================================================================================= reference
def sparse_decode_reference(
    values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Dense twin: ``z = scatter_add(zeros(batch, n_latents), indices, values); y = z @ weight``.

    values: (batch, k) float; indices: (batch, k) int in [0, n_latents); weight: (n_latents, d).
    Returns (batch, d); differentiable (autograd) w.r.t. values and weight.
    """
    _check_inputs(values, indices, weight)
    dtype = _result_dtype(values, weight)
    idx = indices.long()
    ok = (idx >= 0) & (idx < weight.shape[0])  # all True unless the value checks were switched off
    z = torch.zeros(values.shape[0], weight.shape[0], dtype=dtype, device=values.device)
    z = z.scatter_add(1, torch.where(ok, idx, 0), torch.where(ok, values.to(dtype), 0.0))
    return torch.where(ok.all(1, keepdim=True), z @ weight.to(dtype), float("nan"))


def _result_dtype(values: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    return torch.promote_types(values.dtype, weight.dtype)


def _csr_by_latent(flat_indices: torch.Tensor, n_latents: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort of the ``batch k`` entries by latent: (offsets (n_latents + 1,), order (batch k,)); entries of
    latent ``i`` are ``order[offsets[i]:offsets[i + 1]]``. A sort and a binary search, no device sync
    (``torch.bincount`` would read the largest index back to the host); out-of-range indices fall outside
    every latent's range."""
    flat = flat_indices.long()
    sorted_flat, order = torch.sort(flat, stable=True)
    offsets = torch.searchsorted(sorted_flat, torch.arange(n_latents + 1, device=flat.device))
    return offsets, order


# =========================================================================================== Numba
if HAS_NUMBA:
    from numba import njit, prange

    def _forward_numba_kernel_py(values, indices, weight, out):  # pragma: no cover
        """out (in the compute dtype) = sum_j values[r, j] weight[indices[r, j]]; an out-of-range index
        is not read and makes its row NaN."""
        n_rows, k = values.shape
        n_latents, d = weight.shape
        for r in prange(n_rows):
            acc = np.zeros(d, dtype=out.dtype)
            for j in range(k):
                v = values[r, j]
                i = indices[r, j]
                if i < 0 or i >= n_latents:
                    acc[:] = np.nan
                    break
                w_i = weight[i]  # a 1-D row: the loop over c is unit-stride
                for c in range(d):
                    acc[c] += v * w_i[c]
            out_r = out[r]
            for c in range(d):
                out_r[c] = acc[c]

    _forward_numba_kernel = njit(parallel=True, cache=True, fastmath=False)(_forward_numba_kernel_py)
    _forward_numba_kernel_serial = njit(cache=True, fastmath=False)(_forward_numba_kernel_py)  # small calls


    def _grad_values_numba_kernel_py(grad_out, indices, weight, grad_values):  # pragma: no cover
        n_rows, k = indices.shape
        n_latents, d = weight.shape
        for r in prange(n_rows):
            for j in range(k):
                i = indices[r, j]
                if i < 0 or i >= n_latents:
                    grad_values[r, j] = np.nan
                    continue
                acc = 0.0
                for c in range(d):
                    acc += grad_out[r, c] * weight[i, c]
                grad_values[r, j] = acc

    _grad_values_numba_kernel = njit(parallel=True, cache=True)(_grad_values_numba_kernel_py)
    _grad_values_numba_kernel_serial = njit(cache=True)(_grad_values_numba_kernel_py)  # small calls


    @njit(cache=True)
    def _csr_numba_kernel(flat, n_latents, offsets, order):  # pragma: no cover
        """Serial counting sort: offsets[i]..offsets[i+1] are the positions in ``order`` of latent i
        (out-of-range indices are left out)."""
        for i in range(n_latents + 1):
            offsets[i] = 0
        for e in range(flat.shape[0]):
            if 0 <= flat[e] < n_latents:
                offsets[flat[e] + 1] += 1
        for i in range(n_latents):
            offsets[i + 1] += offsets[i]
        fill = offsets[:-1].copy()
        for e in range(flat.shape[0]):
            i = flat[e]
            if 0 <= i < n_latents:
                order[fill[i]] = e
                fill[i] += 1

    def _grad_weight_numba_kernel_py(grad_out, flat_values, offsets, order, k, grad_weight):
        n_latents, d = grad_weight.shape
        for i in prange(n_latents):
            gw_i = grad_weight[i]  # 1-D rows, as in the forward
            for c in range(d):
                gw_i[c] = 0.0
            for p in range(offsets[i], offsets[i + 1]):
                e = order[p]
                r = e // k
                v = flat_values[e]
                g_r = grad_out[r]
                for c in range(d):
                    gw_i[c] += v * g_r[c]

    _grad_weight_numba_kernel = njit(parallel=True, cache=True)(_grad_weight_numba_kernel_py)
    _grad_weight_numba_kernel_serial = njit(cache=True)(_grad_weight_numba_kernel_py)  # small calls



def _compute_dtype(values, weight) -> torch.dtype:
    return torch.float64 if _result_dtype(values, weight) == torch.float64 else torch.float32


def _numba_forward(values, indices, weight):
    dt = _compute_dtype(values, weight)
    v = cpu_numpy(values, dt)
    i = cpu_numpy(indices, torch.int64)
    w = cpu_numpy(weight, dt)
    out = np.empty((v.shape[0], w.shape[1]), dtype=w.dtype)
    if v.shape[0] and w.shape[1]:
        parallel = numba_parallel(2 * v.size * w.shape[1])
        (_forward_numba_kernel if parallel else _forward_numba_kernel_serial)(v, i, w, out)
    return torch.from_numpy(out).to(_result_dtype(values, weight))


def _numba_backward(grad_out, values, indices, weight, need_values: bool, need_weight: bool):
    dt = _compute_dtype(values, weight)
    g = cpu_numpy(grad_out, dt)
    i = cpu_numpy(indices, torch.int64)
    w = cpu_numpy(weight, dt)
    n_latents, d = w.shape
    grad_values = grad_weight = None
    if need_values:
        gv = np.zeros(i.shape, dtype=w.dtype)
        if d and i.size:
            parallel = numba_parallel(2 * i.size * d)
            (_grad_values_numba_kernel if parallel else _grad_values_numba_kernel_serial)(g, i, w, gv)
        grad_values = torch.from_numpy(gv).to(values.dtype)
    if need_weight:
        flat = np.ascontiguousarray(i.reshape(-1))
        offsets = np.empty(n_latents + 1, dtype=np.int64)
        order = np.empty(flat.shape[0], dtype=np.int64)
        _csr_numba_kernel(flat, n_latents, offsets, order)
        gw = np.empty((n_latents, d), dtype=w.dtype)
        parallel = numba_parallel(n_latents * d + 2 * i.size * d)
        (_grad_weight_numba_kernel if parallel else _grad_weight_numba_kernel_serial)(
            g, cpu_numpy(values, dt).reshape(-1), offsets, order, max(1, i.shape[1]), gw)
        grad_weight = torch.from_numpy(gw).to(weight.dtype)
    return grad_values, grad_weight


# ========================================================================================== Triton
if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _forward_triton_kernel(V, I, W, OUT, k, d, n_latents, F64: tl.constexpr,
                               BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        """Program (row, column block): out[row, cols] = sum_j V[row, j] W[I[row, j], cols]. The k indices
        and values are loaded as one vector and the k weight rows as one (BLOCK_K, BLOCK_D) tile, so all
        the row reads are in flight at once; an out-of-range index is not read and makes the row NaN."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = cols < d
        acc = tl.zeros([BLOCK_D], dtype=tl.float64 if F64 else tl.float32)
        bad = tl.zeros([BLOCK_K], dtype=tl.int32)
        for start in range(0, k, BLOCK_K):
            j = start + tl.arange(0, BLOCK_K)
            jm = j < k
            i = tl.load(I + row * k + j, mask=jm, other=0).to(tl.int64)
            ok = jm & (i >= 0) & (i < n_latents)
            bad += (jm & ~ok).to(tl.int32)
            v = tl.load(V + row * k + j, mask=ok, other=0.0).to(acc.dtype)
            w = tl.load(W + i[:, None] * d + cols[None, :], mask=ok[:, None] & mask[None, :], other=0.0)
            acc += tl.sum(v[:, None] * w.to(acc.dtype), axis=0)
        acc = tl.where(tl.sum(bad, axis=0) > 0, float("nan"), acc)
        tl.store(OUT + row * d + cols, acc.to(OUT.dtype.element_ty), mask=mask)

    @triton.jit
    def _grad_values_triton_kernel(G, I, W, GV, k, d, n_latents, F64: tl.constexpr,
                                   BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        """Program (row, block of BLOCK_K entries): GV[row, j] = G[row] . W[I[row, j]] (dense-dense, only at
        the chosen indices); G's row is read once for the block. NaN for an out-of-range index."""
        row = tl.program_id(0).to(tl.int64)
        j = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        jm = j < k
        i = tl.load(I + row * k + j, mask=jm, other=0).to(tl.int64)
        ok = jm & (i >= 0) & (i < n_latents)
        acc = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float64 if F64 else tl.float32)
        for start in range(0, d, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = cols < d
            g = tl.load(G + row * d + cols, mask=mask, other=0.0).to(acc.dtype)
            w = tl.load(W + i[:, None] * d + cols[None, :], mask=ok[:, None] & mask[None, :], other=0.0)
            acc += w.to(acc.dtype) * g[None, :]
        dots = tl.where(ok, tl.sum(acc, axis=1), float("nan"))
        tl.store(GV + row * k + j, dots.to(GV.dtype.element_ty), mask=jm)

    @triton.jit
    def _grad_weight_triton_kernel(G, V, OFFSETS, ORDER, GW, k, d, F64: tl.constexpr, BLOCK_D: tl.constexpr):
        """Program (latent, column block): GW[latent, cols] = sum over its entries e: V[e] G[e // k, cols]."""
        latent = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = cols < d
        start = tl.load(OFFSETS + latent)
        end = tl.load(OFFSETS + latent + 1)
        acc = tl.zeros([BLOCK_D], dtype=tl.float64 if F64 else tl.float32)
        for p in range(start, end):
            e = tl.load(ORDER + p).to(tl.int64)
            v = tl.load(V + e).to(acc.dtype)
            g = tl.load(G + (e // k) * d + cols, mask=mask, other=0.0).to(acc.dtype)
            acc += v * g
        tl.store(GW + latent * d + cols, acc.to(GW.dtype.element_ty), mask=mask)


def _block_d(d: int) -> int:
    return min(256, triton.next_power_of_2(max(d, 1)))


def _block_k(k: int) -> int:
    return min(32, triton.next_power_of_2(max(k, 1)))


def _triton_forward(values, indices, weight):
    n_rows, k = values.shape
    n_latents, d = weight.shape
    out = torch.empty((n_rows, d), dtype=_result_dtype(values, weight), device=weight.device)
    if n_rows and d:
        block = _block_d(d)
        _forward_triton_kernel[(n_rows, triton.cdiv(d, block))](
            values.contiguous(), indices.contiguous(), weight.contiguous(), out, k, d, n_latents,
            F64=out.dtype == torch.float64, BLOCK_K=_block_k(k), BLOCK_D=block,
        )
    return out


def _triton_backward(grad_out, values, indices, weight, need_values: bool, need_weight: bool):
    n_rows, k = values.shape
    n_latents, d = weight.shape
    g = grad_out.contiguous()
    idx = indices.contiguous()
    w = weight.contiguous()
    block = _block_d(d)
    f64 = _result_dtype(values, weight) == torch.float64
    grad_values = grad_weight = None
    if need_values:
        grad_values = torch.zeros((n_rows, k), dtype=values.dtype, device=values.device)
        if n_rows * k and d:
            block_k = _block_k(k)
            _grad_values_triton_kernel[(n_rows, triton.cdiv(k, block_k))](
                g, idx, w, grad_values, k, d, n_latents, F64=f64, BLOCK_K=block_k, BLOCK_D=min(block, 128))
    if need_weight:
        offsets, order = _csr_by_latent(idx.reshape(-1), n_latents)
        grad_weight = torch.empty((n_latents, d), dtype=weight.dtype, device=weight.device)
        if d:
            _grad_weight_triton_kernel[(n_latents, triton.cdiv(d, block))](
                g, values.contiguous(), offsets, order, grad_weight, max(1, k), d, F64=f64, BLOCK_D=block,
            )
    return grad_values, grad_weight


# ========================================================================= autograd and public API
class _SparseDecodeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, weight, forward_fn, backward_fn):
        ctx.save_for_backward(values, indices, weight)
        ctx.backward_fn = backward_fn
        return forward_fn(values, indices, weight)

    @staticmethod
    def backward(ctx, grad_out):
        values, indices, weight = ctx.saved_tensors
        need_values, _, need_weight = ctx.needs_input_grad[:3]
        grad_values, grad_weight = ctx.backward_fn(
            grad_out, values, indices, weight, need_values, need_weight
        )
        return grad_values, None, grad_weight, None, None


def sparse_decode_numba(values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sparse decode with the Numba CPU kernels (differentiable w.r.t. values and weight)."""
    _check_inputs(values, indices, weight)
    require_numba(values)
    return _SparseDecodeFunction.apply(values, indices, weight, _numba_forward, _numba_backward)


def sparse_decode_triton(values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sparse decode with the Triton kernels (differentiable w.r.t. values and weight)."""
    _check_inputs(values, indices, weight)
    require_triton(values)
    return _SparseDecodeFunction.apply(values, indices, weight, _triton_forward, _triton_backward)


_SPARSE_DECODE = {
    "reference": sparse_decode_reference, "numba": sparse_decode_numba, "triton": sparse_decode_triton,
}


def sparse_decode(
    values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor, *, impl: str = "auto"
) -> torch.Tensor:
    """``y[b] = sum_j values[b, j] * weight[indices[b, j]]``: the TopK SAE decoder without ``b_pre``.

    values: (batch, k) float; indices: (batch, k) int32/int64 in [0, n_latents); weight: (n_latents, d).
    Returns (batch, d) in ``promote_types(values.dtype, weight.dtype)``, differentiable w.r.t. values and
    weight. ``impl``: ``"auto"``
    (Triton on CUDA, Numba on CPU), ``"reference"`` (dense PyTorch), ``"numba"`` or ``"triton"``.
    """
    _check_inputs(values, indices, weight)
    return _SPARSE_DECODE[select_impl(impl, values)](values, indices, weight)
