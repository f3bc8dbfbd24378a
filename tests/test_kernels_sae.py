"""Sparse decoder kernels (Numba; Triton on CUDA or in the interpreter) against the dense PyTorch twin:
values and gradients (w.r.t. values and weight), on hypothesis-drawn and edge-case shapes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paperlab_kernels import _dispatch
from paperlab_kernels import sae as S

CUDA = torch.cuda.is_available()
KERNELS = [("numba", "cpu")] if _dispatch.HAS_NUMBA else []
if _dispatch.HAS_TRITON and (CUDA or _dispatch.triton_interpreted()):
    KERNELS.append(("triton", "cuda" if CUDA else "cpu"))
IDS = [impl for impl, _ in KERNELS]
FNS = {"numba": S.sparse_decode_numba, "triton": S.sparse_decode_triton}


def _inputs(batch, k, n_latents, d, device, seed=0, duplicates=False):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, k, generator=g)
    if duplicates:
        indices = torch.randint(0, n_latents, (batch, k), generator=g)
    else:
        rows = [torch.randperm(n_latents, generator=g)[:k] for _ in range(batch)]
        indices = torch.stack(rows) if batch else torch.zeros(0, k, dtype=torch.long)
    weight = torch.randn(n_latents, d, generator=g)
    grad = torch.randn(batch, d, generator=g)
    return (values.to(device).requires_grad_(), indices.to(device), weight.to(device).requires_grad_(),
            grad.to(device))


def _compare(impl, device, batch, k, n_latents, d, duplicates=False, seed=0):
    values, indices, weight, grad = _inputs(batch, k, n_latents, d, device, seed, duplicates)
    ref = S.sparse_decode_reference(values, indices, weight)
    out = FNS[impl](values, indices, weight)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if batch:
        ref_grads = torch.autograd.grad(ref, (values, weight), grad)
        grads = torch.autograd.grad(out, (values, weight), grad)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl,device", KERNELS, ids=IDS)
@pytest.mark.parametrize("batch,k,n_latents,d", [(1, 1, 1, 1), (3, 2, 5, 7), (16, 4, 64, 33), (8, 8, 8, 300)])
def test_matches_reference_edge_shapes(impl, device, batch, k, n_latents, d):
    _compare(impl, device, batch, k, n_latents, d)


@pytest.mark.parametrize("impl,device", KERNELS, ids=IDS)
def test_duplicate_indices_add_up(impl, device):
    _compare(impl, device, 6, 5, 3, 4, duplicates=True)


@pytest.mark.parametrize("impl,device", KERNELS, ids=IDS)
def test_empty_batch(impl, device):
    values, indices, weight, _ = _inputs(0, 3, 5, 4, device)
    assert FNS[impl](values, indices, weight).shape == (0, 4)


@pytest.mark.parametrize("impl,device", KERNELS, ids=IDS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 12), k=st.integers(1, 6), extra=st.integers(0, 20), d=st.integers(1, 40),
       seed=st.integers(0, 1000))
def test_matches_reference_random_shapes(impl, device, batch, k, extra, d, seed):
    _compare(impl, device, batch, k, k + extra, d, seed=seed)


def test_dispatcher_picks_numba_on_cpu_and_checks_impl():
    values, indices, weight, _ = _inputs(2, 2, 4, 3, "cpu")
    out = S.sparse_decode(values, indices, weight)
    torch.testing.assert_close(out, S.sparse_decode_reference(values, indices, weight))
    with pytest.raises(ValueError, match="impl must be one of"):
        S.sparse_decode(values, indices, weight, impl="cuda")


@pytest.mark.parametrize("bad,match", [
    (dict(indices=torch.tensor([[0, 9]])), "indices must lie in"),
    (dict(indices=torch.tensor([[0, -1]])), "indices must lie in"),
    (dict(indices=torch.tensor([[0, 1, 2]])), "indices must have the shape of values"),
    (dict(indices=torch.tensor([[0.0, 1.0]])), "int32 or int64"),
    (dict(values=torch.ones(2)), "values must be 2-D"),
    (dict(weight=torch.ones(4)), "weight must be 2-D"),
    (dict(values=torch.ones(1, 2, dtype=torch.long)), "values must be a floating-point tensor"),
])
def test_bad_inputs_name_the_problem(bad, match):
    args = dict(values=torch.ones(1, 2), indices=torch.tensor([[0, 1]]), weight=torch.ones(4, 3))
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        S.sparse_decode(args["values"], args["indices"], args["weight"], impl="reference")


ALL = [("reference", "cpu")] + KERNELS
ALL_FNS = {"reference": S.sparse_decode_reference, **FNS}


@pytest.mark.parametrize("impl,device", ALL, ids=[i for i, _ in ALL])
@pytest.mark.parametrize(("values_dtype", "weight_dtype"), [(torch.float64, torch.float64),
                                                           (torch.float64, torch.float32),
                                                           (torch.float32, torch.float64)])
def test_result_dtype_is_the_promoted_one_everywhere(impl, device, values_dtype, weight_dtype):
    """Every implementation returns promote_types(values, weight), computed at that precision. Numba used
    to return float32 for float64 inputs (with float32 accuracy) where the reference returned float64."""
    values, indices, weight, grad = _inputs(5, 3, 9, 6, device)
    values = values.detach().to(values_dtype).requires_grad_()
    weight = weight.detach().to(weight_dtype).requires_grad_()
    out = ALL_FNS[impl](values, indices, weight)
    assert out.dtype == torch.float64
    exact = S.sparse_decode_reference(values.double(), indices, weight.double())
    torch.testing.assert_close(out, exact, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out, (values, weight), grad.double())
    assert grads[0].dtype == values_dtype and grads[1].dtype == weight_dtype


@pytest.mark.parametrize("impl,device", ALL, ids=[i for i, _ in ALL])
def test_out_of_range_index_without_value_checks_gives_nan_rows(impl, device):
    """With the value checks off (the default for GPU tensors, where the check would synchronise), an
    out-of-range index is never read: its output row is NaN, the other rows are right."""
    values, indices, weight, grad = _inputs(4, 3, 8, 5, device)
    good = S.sparse_decode_reference(values, indices, weight)
    bad = indices.clone()
    bad[1, 2] = 8  # n_latents = 8
    with _dispatch.check_values(False):
        out = ALL_FNS[impl](values, bad, weight)
        grad_values, _ = torch.autograd.grad(out, (values, weight), grad)
    assert torch.isnan(out[1]).all()
    assert impl == "reference" or torch.isnan(grad_values[1, 2])  # (autograd gives the dense twin a 0)
    rows = [0, 2, 3]
    torch.testing.assert_close(out[rows], good[rows], rtol=1e-5, atol=1e-5)
