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


def test_pack_accepts_float_ternary_and_marks_padding():
    w = torch.tensor([[1.0, -1.0, 0.0, 1.0, -1.0]])
    packed = T.pack_ternary(w)
    assert torch.equal(T.unpack_ternary(packed, 5), w.to(torch.int8))
    # k = 7: one padding position, in the last plane (bits 6-7) of the last byte, holds code 0b10
    expected = torch.tensor([[0, 0b10 << 6]] * 2, dtype=torch.uint8)
    assert torch.equal(T.pack_ternary(torch.zeros(2, 7)), expected)
    assert torch.equal(T.pack_ternary(torch.zeros(2, 8)), torch.zeros(2, 2, dtype=torch.uint8))


def test_unpack_rejects_a_k_other_than_the_packed_one():
    """Same number of bytes, different k: a larger k would read padding as weights (it used to return
    extra zero columns silently), a smaller one would drop weights."""
    packed = T.pack_ternary(_ternary(3, 5))  # 2 bytes per row hold up to 8 columns
    with pytest.raises(ValueError, match="larger than the 5 columns"):
        T.unpack_ternary(packed, 8)
    with pytest.raises(ValueError, match="smaller than"):
        T.unpack_ternary(T.pack_ternary(_ternary(3, 8)), 6)
    with pytest.raises(ValueError, match="padding code 0b10 at column 1"):
        T.unpack_ternary(torch.tensor([[0b10 << 2]], dtype=torch.uint8), 4)


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
@pytest.mark.parametrize(("m", "n", "k"), [(1, 37, 203), (3, 37, 256), (16, 9, 1000), (5, 3, 64), (2, 5, 96),
                                          (1, 4, 4096)])
def test_matmul_int_larger_shapes(impl, m, n, k):
    """k a multiple of 64 (the packed rows read as pairs of 64-bit words in place) and not (rows padded,
    e.g. k = 96: three words per row, paired with a zero word)."""
    w, x = _ternary(n, k), _activations(m, k)
    out = T.ternary_matmul_int(x, T.pack_ternary(w), k, impl=impl)
    assert torch.equal(out, (x.long() @ w.long().T).int())


@pytest.mark.parametrize("impl", IMPLS)
def test_matmul_int_extremes_are_exact(impl):
    """-128 activations (the two's-complement sign bit alone) against all -1, all +1 and alternating
    weights: the largest sums the format allows, exactly."""
    dev = DEVICE[impl]
    k = 300 if impl == "triton" and not CUDA else 4096
    w = torch.stack([torch.full((k,), -1), torch.ones(k), torch.tensor([1, -1] * (k // 2))]).to(torch.int8)
    x = torch.stack([torch.full((k,), -128), torch.full((k,), 127), torch.arange(k) % 256 - 128])
    x = x.to(torch.int8)
    out = T.ternary_matmul_int(x.to(dev), T.pack_ternary(w).to(dev), k, impl=impl).cpu()
    assert torch.equal(out, (x.long() @ w.long().T).int())
    assert out[0, 0] == 128 * k


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


@pytest.mark.skipif("numba" not in IMPLS, reason="needs Numba")
@pytest.mark.parametrize("x_scale_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize(("m", "k"), [(1, 4096), (16, 300), (3, 7)])
def test_numba_linear_equals_its_reference_twin_exactly(monkeypatch, m, k, x_scale_dtype, parallel):
    """The Numba kernel applies 1 / (s_x s_w) as it writes the output; the result must be bitwise the
    reference's (the same int32 sum, the same float32 conversion and multiply), with a number or a
    tensor w_scale, in the serial and the parallel (prange) build."""
    monkeypatch.setattr(T, "numba_parallel", lambda work: parallel)
    n = 33
    w, q = _ternary(n, k), _activations(m, k)
    s_x = (torch.rand(m, 1, generator=torch.Generator().manual_seed(2)) * 50 + 0.1).to(x_scale_dtype)
    packed = T.pack_ternary(w)
    for s_w in (1.7, torch.tensor(0.37, dtype=torch.float64)):
        ref = T.ternary_linear(q, s_x, packed, s_w, k, impl="reference")
        out = T.ternary_linear(q, s_x, packed, s_w, k, impl="numba")
        assert out.dtype == torch.float32 and torch.equal(out, ref)


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


@pytest.mark.parametrize("w_scale", [0.0, -1.0, float("inf"), float("nan"), torch.tensor(0.0)])
def test_linear_rejects_a_bad_weight_scale(w_scale):
    """w_scale = 0 used to give inf / NaN outputs."""
    packed, q = T.pack_ternary(_ternary(4, 8)), _activations(2, 8)
    with pytest.raises(ValueError, match="w_scale"):
        T.ternary_linear(q, torch.ones(2, 1), packed, w_scale, 8)


def test_linear_checks_x_scale_before_the_product(monkeypatch):
    """A wrong x_scale is reported before any kernel runs (it used to be checked after the matmul)."""
    calls = []
    monkeypatch.setitem(T._MATMUL_INT, "reference", lambda *a: calls.append(a))
    packed, q = T.pack_ternary(_ternary(4, 8)), _activations(2, 8)
    with pytest.raises(ValueError, match="x_scale must have shape"):
        T.ternary_linear(q, torch.ones(3, 1), packed, 1.0, 8, impl="reference")
    with pytest.raises(TypeError, match="x_scale"):
        T.ternary_linear(q, torch.ones(2, 1, dtype=torch.int32), packed, 1.0, 8, impl="reference")
    assert calls == []
