"""MLGRU recurrence kernels against the sequential PyTorch reference: values and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab_kernels import _dispatch
from paperlab_kernels import mlgru as M

CUDA = torch.cuda.is_available()
KERNELS = (["numba"] if _dispatch.HAS_NUMBA else [])
if _dispatch.HAS_TRITON and (CUDA or _dispatch.triton_interpreted()):
    KERNELS.append("triton")
DEVICE = {"numba": "cpu", "triton": "cuda" if CUDA else "cpu"}


def _inputs(shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(shape, generator=g).to(device).requires_grad_()
    c = torch.randn(shape, generator=g).to(device).requires_grad_()
    dh = torch.randn(shape, generator=g).to(device)
    return f, c, dh


@pytest.mark.parametrize("impl", KERNELS)
@given(batch=st.integers(1, 3), seq=st.integers(1, 9), d=st.integers(1, 11), seed=st.integers(0, 5))
@settings(max_examples=12, deadline=None)
def test_kernel_matches_reference(impl, batch, seq, d, seed):
    f, c, dh = _inputs((batch, seq, d), DEVICE[impl], seed)
    h = M.mlgru_scan(f, c, impl=impl)
    h_ref = M.mlgru_scan_reference(f, c)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(h, (f, c), dh)
    grads_ref = torch.autograd.grad(h_ref, (f, c), dh)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_known_values():
    f = torch.tensor([[[0.5], [0.25]]])
    c = torch.tensor([[[2.0], [4.0]]])
    # h1 = 0.5 * 0 + 0.5 * 2 = 1; h2 = 0.25 * 1 + 0.75 * 4 = 3.25
    for impl in ["reference", *[k for k in KERNELS if DEVICE[k] == "cpu"]]:
        assert torch.allclose(M.mlgru_scan(f, c, impl=impl), torch.tensor([[[1.0], [3.25]]]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="batch, seq, d"):
        M.mlgru_scan(torch.rand(3, 4), torch.rand(3, 4))
    with pytest.raises(ValueError, match="shape of f"):
        M.mlgru_scan(torch.rand(1, 3, 4), torch.rand(1, 3, 5))
    with pytest.raises(TypeError, match="floating"):
        M.mlgru_scan(torch.ones(1, 3, 4, dtype=torch.long), torch.rand(1, 3, 4))


@pytest.mark.parametrize("impl", ["reference", *KERNELS])
@pytest.mark.parametrize("shape", [(2, 0, 3), (0, 4, 3), (2, 4, 0)])
def test_empty_inputs_give_empty_results(impl, shape):
    """An empty sequence (or batch, or width) gives an empty result with empty gradients; a sequence of
    length 0 used to raise IndexError (reference) or a reshape error (Numba)."""
    device = DEVICE.get(impl, "cpu")
    f, c, dh = _inputs(shape, device)
    h = M.mlgru_scan(f, c, impl=impl)
    assert h.shape == shape and h.dtype == f.dtype
    df, dc = torch.autograd.grad(h, (f, c), dh)
    assert df.shape == shape and dc.shape == shape
