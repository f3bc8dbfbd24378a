"""Packed ternary kernels against the exact integer product and the dequantised float linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paperlab_kernels import _dispatch
from paperlab_kernels import ternary as T

CUDA = torch.cuda.is_available()
IMPLS = ["reference"] + (["numba"] if _dispatch.HAS_NUMBA else [])
if _dispatch.HAS_TRITON and (CUDA or _dispatch.triton_interpreted()):
    IMPLS.append("triton")
DEVICE = {"reference": "cpu", "numba": "cpu", "triton": "cuda" if CUDA else "cpu"}


def _ternary(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (n, k), generator=g).to(torch.int8)


def _activations(m, k, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, (m, k), generator=g).to(torch.int8)


@given(n=st.integers(1, 9), k=st.integers(1, 23), seed=st.integers(0, 10))
@settings(max_examples=30, deadline=None)
def test_pack_roundtrip_and_size(n, k, seed):
    w = _ternary(n, k, seed)
    packed = T.pack_ternary(w)
    assert packed.dtype == torch.uint8 and packed.shape == (n, (k + 3) // 4)  # 2 bits per weight
    assert torch.equal(T.unpack_ternary(packed, k), w)


def test_pack_accepts_float_ternary_and_zero_padding():
    w = torch.tensor([[1.0, -1.0, 0.0, 1.0, -1.0]])
    packed = T.pack_ternary(w)
    assert torch.equal(T.unpack_ternary(packed, 5), w.to(torch.int8))
    assert torch.equal(T.pack_ternary(torch.zeros(2, 7)), torch.zeros(2, 2, dtype=torch.uint8))


@pytest.mark.parametrize("impl", IMPLS)
@given(m=st.integers(1, 6), n=st.integers(1, 10), k=st.integers(1, 21), seed=st.integers(0, 5))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_matmul_int_is_exact(impl, m, n, k, seed):
    """Odd shapes included (k not a multiple of 4); integer results must be exactly equal."""
    dev = DEVICE[impl]
    w, x = _ternary(n, k, seed), _activations(m, k, seed + 1)
    exact = (x.long() @ w.long().T).to(torch.int32)
    out = T.ternary_matmul_int(x.to(dev), T.pack_ternary(w).to(dev), k, impl=impl)
    assert out.dtype == torch.int32
    assert torch.equal(out.cpu(), exact)


@pytest.mark.parametrize("impl", [i for i in IMPLS if i != "triton"])
@pytest.mark.parametrize("m", [1, 3, 4, 16])
def test_matmul_int_larger_both_numba_paths(impl, m):
    """m < 4 uses the GEMV kernel, m >= 4 the GEMM kernel."""
    n, k = 37, 203
    w, x = _ternary(n, k), _activations(m, k)
    out = T.ternary_matmul_int(x, T.pack_ternary(w), k, impl=impl)
    assert torch.equal(out, (x.long() @ w.long().T).int())


@pytest.mark.parametrize("impl", IMPLS)
def test_linear_equals_dequantised_f_linear(impl):
    """Integer part exact; the float result matches F.linear with dequantised operands up to rounding."""
    dev = DEVICE[impl]
    n, k, m = 13, 30, 5
    w, q = _ternary(n, k), _activations(m, k)
    s_x = torch.rand(m, 1) * 10 + 1
    s_w = torch.tensor(2.5)
    y = T.ternary_linear(q.to(dev), s_x.to(dev), T.pack_ternary(w).to(dev), s_w.to(dev), k, impl=impl).cpu()
    expected = F.linear(q.double() / s_x.double(), w.double() / s_w.double())
    torch.testing.assert_close(y.double(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(F.linear(q.double(), w.double()), (y.double() * s_x * s_w).round())


def test_batched_leading_dims():
    w, x = _ternary(6, 9), _activations(2 * 3, 9).view(2, 3, 9)
    out = T.ternary_matmul_int(x, T.pack_ternary(w), 9, impl="numba" if "numba" in IMPLS else "reference")
    assert out.shape == (2, 3, 6)
    assert torch.equal(out, (x.long() @ w.long().T).int())


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="ternary"):
        T.pack_ternary(torch.tensor([[0, 2, 1]]))
    with pytest.raises(ValueError, match="ternary"):
        T.pack_ternary(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        T.pack_ternary(torch.zeros(4))
    packed = T.pack_ternary(_ternary(3, 8))
    with pytest.raises(TypeError, match="int8"):
        T.ternary_matmul_int(torch.zeros(1, 8), packed, 8)
    with pytest.raises(TypeError, match="uint8"):
        T.ternary_matmul_int(torch.zeros(1, 8, dtype=torch.int8), packed.to(torch.int8), 8)
    with pytest.raises(ValueError, match="ceil"):
        T.ternary_matmul_int(torch.zeros(1, 13, dtype=torch.int8), packed, 13)
    with pytest.raises(ValueError, match="k = 8"):
        T.ternary_matmul_int(torch.zeros(1, 7, dtype=torch.int8), packed, 8)
    with pytest.raises(ValueError, match="impl"):
        T.ternary_matmul_int(torch.zeros(1, 8, dtype=torch.int8), packed, 8, impl="cuda")
    with pytest.raises(ValueError, match="0b10"):
        T.unpack_ternary(torch.full((1, 1), 2, dtype=torch.uint8), 4)
