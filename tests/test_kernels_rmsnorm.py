"""Fused RMSNorm (+ int8 absmax quantisation) kernels against their PyTorch reference twin.

Every available kernel (Numba on CPU; Triton on CUDA, or in the interpreter on CPU, set up by conftest.py)
is compared with the reference on values and gradients (x and weight), on hypothesis-drawn shapes and on
edge cases. Quantised values must agree exactly, except that a value sitting on a rounding tie
(``y * s`` = k + 1/2 up to float error) may round the other way when two implementations compute ``y``
with float32 sums in a different order; such an element may differ by 1.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paperlab_kernels import _dispatch
from paperlab_kernels import rmsnorm as R

CUDA = torch.cuda.is_available()

# (impl, device) pairs for the kernels that can run here.
KERNELS = [("numba", "cpu")] if _dispatch.HAS_NUMBA else []
if _dispatch.HAS_TRITON and (CUDA or _dispatch.triton_interpreted()):
    KERNELS.append(("triton", "cuda" if CUDA else "cpu"))
KERNEL_IDS = [impl for impl, _ in KERNELS]

FORWARD = {"numba": R.rms_norm_numba, "triton": R.rms_norm_triton}
QUANT = {"numba": R.rms_norm_quant_numba, "triton": R.rms_norm_quant_triton}
FAKE = {"numba": R.rms_norm_fake_quant_numba, "triton": R.rms_norm_fake_quant_triton}

# Kernels accumulate in float32 in another order than torch: small absolute differences.
TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)


def _inputs(shape, device, dtype=torch.float32, with_weight=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype).requires_grad_()
    w = None
    if with_weight:
        w = (1 + 0.5 * torch.randn(shape[-1], generator=g)).to(device=device, dtype=dtype).requires_grad_()
    dy = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    return x, w, dy


def _grads(out, x, w, dy):
    wanted = (x, w) if w is not None else (x,)
    return torch.autograd.grad(out, wanted, dy)


def _check_quant_close(q, s, q_ref, s_ref):
    """q equal except for rare ties (|difference| <= 1 on at most 1% of elements); s to float32 precision."""
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert q.shape == q_ref.shape and s.shape == s_ref.shape == (*q.shape[:-1], 1)
    torch.testing.assert_close(s.cpu(), s_ref.cpu(), rtol=1e-5, atol=0)
    diff = (q.cpu().int() - q_ref.cpu().int()).abs()
    assert diff.max().item() <= 1
    assert (diff > 0).float().mean().item() <= 0.01


# Shapes: 1-D, one row, d = 1, d not a power of two, 3-D inputs. Kept small for the Triton interpreter.
shapes = st.tuples(
    st.lists(st.integers(1, 4), min_size=0, max_size=2),
    st.sampled_from([1, 2, 3, 7, 16, 33, 100]),
).map(lambda t: (*t[0], t[1]))
HYPO = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize(("impl", "device"), KERNELS, ids=KERNEL_IDS)
@HYPO
@given(shape=shapes, with_weight=st.booleans(), seed=st.integers(0, 2**16))
def test_rms_norm_matches_reference(impl, device, shape, with_weight, seed):
    x, w, dy = _inputs(shape, device, with_weight=with_weight, seed=seed)
    y_ref = R.rms_norm_reference(x, w)
    y = FORWARD[impl](x, w)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, y_ref, **TOL)
    for g, g_ref in zip(_grads(y, x, w, dy), _grads(y_ref, x, w, dy), strict=True):
        torch.testing.assert_close(g, g_ref, **GRAD_TOL)


@pytest.mark.parametrize(("impl", "device"), KERNELS, ids=KERNEL_IDS)
@HYPO
@given(shape=shapes, with_weight=st.booleans(), seed=st.integers(0, 2**16))
def test_quant_matches_reference(impl, device, shape, with_weight, seed):
    x, w, _ = _inputs(shape, device, with_weight=with_weight, seed=seed)
    q_ref, s_ref = R.rms_norm_quant_reference(x, w)
    q, s = QUANT[impl](x, w)
    _check_quant_close(q, s, q_ref, s_ref)
    assert q.min().item() >= -128 and q.max().item() <= 127


@pytest.mark.parametrize(("impl", "device"), KERNELS, ids=KERNEL_IDS)
def test_rms_norm_larger_and_strided(impl, device):
    """Many rows (the backward splits rows across programs / threads) and a non-contiguous 3-D input."""
    x, w, dy = _inputs((6, 20, 48), device, seed=1)
    xt = x.transpose(0, 1)  # (20, 6, 48), not contiguous
    dyt = dy.transpose(0, 1)
    y, y_ref = FORWARD[impl](xt, w), R.rms_norm_reference(xt, w)
    torch.testing.assert_close(y, y_ref, **TOL)
    for g, g_ref in zip(_grads(y, x, w, dyt), _grads(y_ref, x, w, dyt), strict=True):
        torch.testing.assert_close(g, g_ref, **GRAD_TOL)


@pytest.mark.parametrize(("impl", "device"), KERNELS, ids=KERNEL_IDS)
def test_gradient_of_a_sum(impl, device):
    """``y.sum().backward()`` hands the kernel an expanded (stride-0) dy."""
    x, w, _ = _inputs((3, 10), device, seed=2)
    (FORWARD[impl](x, w) ** 2).sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    FORWARD[impl](x, w).sum().backward()
    gx1, gw1 = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    (R.rms_norm_reference(x, w) ** 2).sum().backward()
    torch.testing.assert_close(gx, x.grad, **GRAD_TOL)
    torch.testing.assert_close(gw, w.grad, **GRAD_TOL)
    x.grad = w.grad = None
    R.rms_norm_reference(x, w).sum().backward()
    torch.testing.assert_close(gx1, x.grad, **GRAD_TOL)
    torch.testing.assert_close(gw1, w.grad, **GRAD_TOL)


@pytest.mark.parametrize(("impl", "device"), KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(impl, device, dtype):
    """Loaded in 16 bits, computed in float32, stored in 16 bits: at most one rounding step apart."""
    x, w, dy = _inputs((4, 24), device, dtype=dtype, seed=3)
    y, y_ref = FORWARD[impl](x, w), R.rms_norm_reference(x, w)
    assert y.dtype == dtype
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(y, y_ref, **tol)
    for g, g_ref in zip(_grads(y, x, w, dy), _grads(y_ref, x, w, dy), strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), g_ref.float(), rtol=5e-2, atol=5e-2)
    _check_quant_close(*QUANT[impl](x, w), *R.rms_norm_quant_reference(x, w))


@pytest.mark.parametrize(("impl", "device"), [("reference", "cpu"), *KERNELS], ids=["reference", *KERNEL_IDS])
def test_fake_quant_value_and_straight_through_gradient(impl, device):
    x, w, dy = _inputs((2, 3, 40), device, seed=4)
    fake = R.rms_norm_fake_quant(x, w, impl=impl)
    q, s = R.rms_norm_quant(x, w, impl=impl)
    assert fake.dtype == x.dtype
    torch.testing.assert_close(fake, q.float() / s, rtol=1e-6, atol=1e-7)
    # The straight-through estimator: the gradient is exactly that of rms_norm of the same impl ...
    g_fake = _grads(fake, x, w, dy)
    g_norm = _grads(R.rms_norm(x, w, impl=impl), x, w, dy)
    for a, b in zip(g_fake, g_norm, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ... and close to the reference's.
    for a, b in zip(g_fake, _grads(R.rms_norm_reference(x, w), x, w, dy), strict=True):
        torch.testing.assert_close(a, b, **GRAD_TOL)
    # Fake quantisation is within half a quantisation step of the unquantised output.
    y = R.rms_norm_reference(x, w)
    assert ((fake - y).abs() <= 0.5 / s + 1e-6).all()


@pytest.mark.parametrize(("impl", "device"), [("reference", "cpu"), *KERNELS], ids=["reference", *KERNEL_IDS])
def test_quant_edge_values(impl, device):
    # The largest |y| of each row maps to +-127; an all-zero row gets q = 0 and the floor scale 127 / 1e-5.
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(5)).to(device)
    x[3] = 0.0
    q, s = R.rms_norm_quant(x, impl=impl)
    qmax = q.abs().amax(dim=-1)
    assert qmax[[0, 1, 2, 4]].tolist() == [127] * 4
    assert (q[3] == 0).all()
    torch.testing.assert_close(s[3], torch.tensor([127 / 1e-5], device=device))
    # d = 1: y = x / sqrt(x^2 + eps) = +-1 (almost), so q = +-127.
    q1, _ = R.rms_norm_quant(torch.tensor([[2.0], [-3.0]], device=device), impl=impl)
    assert q1.flatten().tolist() == [127, -127]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy warns about NaN
@pytest.mark.parametrize(("impl", "device"), [("reference", "cpu"), *KERNELS], ids=["reference", *KERNEL_IDS])
def test_non_finite_rows_get_a_nan_scale_and_zero_codes(impl, device):
    """A row with NaN or inf has no meaningful absmax scale: s = NaN and q = 0 everywhere, and the fake
    quantised row is NaN; the other rows are untouched. The Numba kernel used to give such a row q = 0
    and a finite scale (its running max dropped the NaN), the reference NaN."""
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(2)).to(device)
    clean_q, clean_s = R.rms_norm_quant(x, impl=impl)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    q, s = R.rms_norm_quant(x, impl=impl)
    assert torch.isnan(s[[1, 2]]).all() and (q[[1, 2]] == 0).all()
    assert torch.equal(q[[0, 3]], clean_q[[0, 3]]) and torch.equal(s[[0, 3]], clean_s[[0, 3]])
    fake = R.rms_norm_fake_quant(x, impl=impl)
    assert torch.isnan(fake[[1, 2]]).all() and torch.isfinite(fake[[0, 3]]).all()


@pytest.mark.parametrize(("impl", "device"), [("reference", "cpu"), *KERNELS], ids=["reference", *KERNEL_IDS])
def test_inference_path_equals_the_autograd_path(impl, device):
    """Without a gradient to track the kernels skip the autograd Function; same values either way."""
    x, w, _ = _inputs((5, 33), device, seed=4)
    tracked = R.rms_norm(x, w, impl=impl)
    with torch.no_grad():
        plain = R.rms_norm(x, w, impl=impl)
    assert tracked.requires_grad and not plain.requires_grad
    torch.testing.assert_close(plain, tracked.detach(), rtol=0, atol=0)


@pytest.mark.parametrize(("impl", "device"), [("reference", "cpu"), *KERNELS], ids=["reference", *KERNEL_IDS])
def test_empty_leading_dimension(impl, device):
    x = torch.empty(0, 3, 8, device=device)
    assert R.rms_norm(x, impl=impl).shape == (0, 3, 8)
    q, s = R.rms_norm_quant(x, impl=impl)
    assert q.shape == (0, 3, 8) and s.shape == (0, 3, 1)


def test_reference_matches_torch_rms_norm():
    x, w, _ = _inputs((3, 17), "cpu", seed=6)
    expected = torch.nn.functional.rms_norm(x, (17,), w, eps=1e-6)
    torch.testing.assert_close(R.rms_norm_reference(x, w), expected, **TOL)


# ------------------------------------------------------------------------------------------ dispatch
def test_auto_picks_numba_on_cpu():
    x, w, _ = _inputs((3, 8), "cpu")
    assert _dispatch.select_impl("auto", x) == ("numba" if _dispatch.HAS_NUMBA else "reference")
    if _dispatch.HAS_NUMBA:
        torch.testing.assert_close(R.rms_norm(x, w), R.rms_norm_numba(x, w), rtol=0, atol=0)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_auto_picks_triton_on_cuda():
    x = torch.randn(3, 8, device="cuda")
    assert _dispatch.select_impl("auto", x) == ("triton" if _dispatch.HAS_TRITON else "reference")
    with pytest.raises(ValueError, match="numba.*CPU"):
        R.rms_norm(x, impl="numba")


def test_unknown_impl_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'auto', 'reference', 'numba', 'triton'.*'cuda'"):
        R.rms_norm(torch.randn(2, 4), impl="cuda")


def test_forced_triton_without_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_dispatch, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match="needs the triton package"):
        R.rms_norm(torch.randn(2, 4), impl="triton")
    assert _dispatch.select_impl("auto", torch.randn(2, 4)) != "triton"


def test_forced_triton_on_cpu_without_interpreter(monkeypatch):
    if not _dispatch.HAS_TRITON:
        pytest.skip("triton not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors.*TRITON_INTERPRET"):
        R.rms_norm(torch.randn(2, 4), impl="triton")


@pytest.mark.skipif(not _dispatch.HAS_TRITON or CUDA, reason="checks the interpreter on CPU-only machines")
def test_conftest_switched_the_triton_interpreter_on():
    assert _dispatch.triton_interpreted()
    assert type(R._forward_triton_kernel).__name__ == "InterpretedFunction"


@pytest.mark.skipif(not KERNELS or KERNELS[-1][0] != "triton", reason="triton not runnable here")
def test_triton_row_length_limit():
    x = torch.zeros(1, R.TRITON_MAX_D + 1, device="cuda" if CUDA else "cpu")
    with pytest.raises(ValueError, match=f"x.shape\\[-1\\] must be <= {R.TRITON_MAX_D}"):
        R.rms_norm_triton(x)


# ------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("fn", [R.rms_norm, R.rms_norm_quant, R.rms_norm_fake_quant])
def test_bad_inputs_name_the_argument(fn):
    x = torch.randn(2, 8)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        fn(torch.ones(2, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fn([[1.0, 2.0]])
    with pytest.raises(ValueError, match="x must have at least one dimension"):
        fn(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"weight must be 1-D of length x.shape\[-1\] = 8, got shape \(7,\)"):
        fn(x, torch.ones(7))
    with pytest.raises(ValueError, match=r"weight must be 1-D .* got shape \(1, 8\)"):
        fn(x, torch.ones(1, 8))
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        fn(x, torch.ones(8, dtype=torch.int32))
    with pytest.raises(ValueError, match="weight must be on the same device as x"):
        fn(x, torch.ones(8, device="meta"))
    for eps in (0.0, -1e-6, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            fn(x, eps=eps)


@pytest.mark.skipif(not (CUDA and _dispatch.HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((4096, 2048), torch.float32), ((4096, 2048), torch.bfloat16), ((2, 7, 5000), torch.float16),
     ((3, R.TRITON_MAX_D), torch.float32), ((1000, 1), torch.float32)],
)
def test_triton_cuda_realistic_shapes(shape, dtype):
    """On a GPU: model-sized rows, several programs per SM in the backward, the largest supported row."""
    x, w, dy = _inputs(shape, "cuda", dtype=dtype, seed=7)
    y, y_ref = R.rms_norm_triton(x, w), R.rms_norm_reference(x, w)
    half = dtype != torch.float32
    torch.testing.assert_close(y, y_ref, **(dict(rtol=1e-2, atol=1e-2) if half else TOL))
    for g, g_ref in zip(_grads(y, x, w, dy), _grads(y_ref, x, w, dy), strict=True):
        # dw sums over thousands of rows: compare relative to its scale.
        scale = g_ref.float().abs().max().clamp(min=1.0)
        assert ((g.float() - g_ref.float()).abs().max() / scale).item() < (2e-2 if half else 1e-4)
    _check_quant_close(*R.rms_norm_quant_triton(x, w), *R.rms_norm_quant_reference(x, w))
