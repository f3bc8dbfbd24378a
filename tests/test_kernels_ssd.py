"""SSD kernels (Numba chunked scan, Numba sequential scan, Triton chunked scan) against the PyTorch
reference twins, on values, final states and gradients (the kernels' backward re-runs the reference)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab.ssd.core import random_inputs
from paperlab_kernels import _dispatch
from paperlab_kernels import ssd as K

CUDA = torch.cuda.is_available()
KERNELS = []
if _dispatch.HAS_NUMBA:
    KERNELS += [("numba", "cpu"), ("scan", "cpu")]
if _dispatch.HAS_TRITON and (CUDA or _dispatch.triton_interpreted()):
    KERNELS.append(("triton", "cuda" if CUDA else "cpu"))
IDS = [k for k, _ in KERNELS]


def _run(kind, inputs, chunk):
    if kind == "numba":
        return K.ssd_chunked_numba(*inputs, chunk_size=chunk)
    if kind == "scan":
        return K.ssd_scan_numba(*inputs)
    return K.ssd_chunked_triton(*inputs, chunk_size=chunk)


def _inputs(device, dtype=torch.float32, **kw):
    return tuple(t.to(device) if t is not None else None for t in random_inputs(dtype=dtype, **kw))


@pytest.mark.parametrize(("kind", "device"), KERNELS, ids=IDS)
@settings(max_examples=15, deadline=None)
@given(seqlen=st.integers(1, 40), ngroups=st.sampled_from([1, 2]), headdim=st.sampled_from([1, 3, 8]),
       d_state=st.sampled_from([1, 5, 16]), chunk=st.sampled_from([1, 4, 16, 32]), with_d=st.booleans(),
       with_h0=st.booleans(), seed=st.integers(0, 100))
def test_kernel_matches_reference(kind, device, seqlen, ngroups, headdim, d_state, chunk, with_d, with_h0,
                                  seed):
    inputs = _inputs(device, batch=2, seqlen=seqlen, nheads=2, headdim=headdim, ngroups=ngroups,
                     d_state=d_state, seed=seed, with_D=with_d, with_initial_state=with_h0)
    y_ref, h_ref = K.ssd_chunked_reference(*inputs, chunk_size=chunk)
    y, h = _run(kind, inputs, chunk)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype and h.shape == h_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h.to(h_ref.dtype), h_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("kind", "device"), KERNELS, ids=IDS)
def test_kernel_gradients(kind, device):
    inputs = _inputs(device, batch=2, seqlen=19, nheads=4, headdim=4, ngroups=2, d_state=6,
                     with_initial_state=True)
    leaves = [t.clone().requires_grad_() for t in inputs]
    leaves_ref = [t.clone().requires_grad_() for t in inputs]
    y, h = _run(kind, leaves, 8)
    y_ref, h_ref = K.ssd_recurrent_reference(*leaves_ref)
    w = torch.randn_like(y)
    ((y * w).sum() + h.sum()).backward()
    ((y_ref * w).sum() + h_ref.sum()).backward()
    for a, b in zip(leaves, leaves_ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not _dispatch.HAS_NUMBA, reason="needs numba")
def test_numba_float64_is_exact():
    inputs = random_inputs(batch=2, seqlen=45, nheads=4, ngroups=2, d_state=8, with_initial_state=True)
    y_ref, h_ref = K.ssd_recurrent_reference(*inputs)
    for y, h in (K.ssd_chunked_numba(*inputs, chunk_size=16), K.ssd_scan_numba(*inputs)):
        assert y.dtype == torch.float64
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-10)


def test_dispatch():
    inputs = random_inputs(dtype=torch.float32)
    expected = "numba" if _dispatch.HAS_NUMBA else "reference"
    assert _dispatch.select_impl("auto", inputs[0]) == expected
    y, _ = K.ssd_chunked(*inputs, chunk_size=4)
    torch.testing.assert_close(y, K.ssd_chunked_reference(*inputs, chunk_size=4)[0], rtol=1e-5, atol=1e-5)
    y, _ = K.ssd_scan(*inputs)
    torch.testing.assert_close(y, K.ssd_recurrent_reference(*inputs)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="impl must be one of"):
        K.ssd_chunked(*inputs, impl="cuda")
    with pytest.raises(ValueError, match="no Triton kernel"):
        K.ssd_scan(*inputs, impl="triton")


@pytest.mark.parametrize("fn", [K.ssd_chunked, K.ssd_scan])
def test_kernel_bad_inputs(fn):
    x, dt, A, B, C, D, _ = random_inputs(nheads=4, ngroups=2)
    with pytest.raises(ValueError, match=r"nheads \(4\) must be divisible by ngroups \(3"):
        fn(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1), D)
    with pytest.raises(ValueError, match="dt must have shape"):
        fn(x, dt[..., :1], A, B, C, D)
    if fn is K.ssd_chunked:
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            fn(x, dt, A, B, C, D, chunk_size=0)


@pytest.mark.skipif(not (CUDA and _dispatch.HAS_TRITON), reason="needs CUDA and triton")
@pytest.mark.parametrize(("seqlen", "ngroups", "chunk"), [(4096, 1, 64), (1000, 2, 64), (333, 4, 32)])
def test_triton_cuda_realistic_shapes(seqlen, ngroups, chunk):
    inputs = _inputs("cuda", batch=2, seqlen=seqlen, nheads=8, headdim=64, ngroups=ngroups, d_state=64,
                     with_initial_state=True)
    y_ref, h_ref = K.ssd_chunked_reference(*[t.double() for t in inputs], chunk_size=chunk)
    y, h = K.ssd_chunked_triton(*inputs, chunk_size=chunk)
    scale = y_ref.abs().max().item()
    assert (y.double() - y_ref).abs().max().item() < 1e-4 * max(scale, 1.0)
    assert (h.double() - h_ref).abs().max().item() < 1e-4 * max(h_ref.abs().max().item(), 1.0)


# ------------------------------------------------------------------- reliability (issue 23)
ALL_FORWARDS = [("reference", "cpu"), ("recurrent", "cpu")] + KERNELS
ALL_IDS = [k for k, _ in ALL_FORWARDS]


def _forward(kind, inputs, chunk):
    if kind == "reference":
        return K.ssd_chunked_reference(*inputs, chunk_size=chunk)
    if kind == "recurrent":
        return K.ssd_recurrent_reference(*inputs)
    return _run(kind, inputs, chunk)


@pytest.mark.parametrize(("kind", "device"), ALL_FORWARDS, ids=ALL_IDS)
@pytest.mark.parametrize("where", ["x", "dt", "B"])
def test_nan_propagates_forward_in_time_only(kind, device, where):
    """A NaN at position s leaves every output before s as it was and makes the affected outputs from s
    on NaN, as the recurrence does. The chunked reference used to spread it backwards inside its chunk
    (0 * NaN in the masked quadratic form)."""
    seqlen, s, chunk = 21, 11, 16  # s inside the first chunk, with positions of that chunk after it
    clean = _inputs(device, batch=2, seqlen=seqlen, nheads=2, headdim=3, ngroups=1, d_state=4,
                    with_initial_state=True)
    poisoned = [t.clone() if t is not None else None for t in clean]
    index = {"x": 0, "dt": 1, "B": 3}[where]
    if where == "x":
        poisoned[0][0, s, 1, 2] = float("nan")
    else:
        poisoned[index][0, s] = float("nan")
    y_clean, _ = _forward(kind, clean, chunk)
    y, h = _forward(kind, poisoned, chunk)
    torch.testing.assert_close(y[:, :s], y_clean[:, :s], rtol=1e-5, atol=1e-5)  # earlier outputs intact
    assert torch.isfinite(y[1]).all()  # the other sequence of the batch is untouched
    if where == "x":
        assert torch.isnan(y[0, s:, 1, 2]).all() and torch.isfinite(y[0, :, 0]).all()
        assert torch.isnan(h[0, 1, 2]).all()
    else:
        assert torch.isnan(y[0, s:]).all()


@pytest.mark.parametrize(("kind", "device"), ALL_FORWARDS, ids=ALL_IDS)
def test_value_preconditions_are_checked(kind, device):
    """A > 0 (a growing state) and dt < 0 used to be accepted, giving inf in one implementation and NaN
    in another; on CPU tensors they are errors now."""
    x, dt, A, B, C, D, h0 = _inputs(device, batch=1, seqlen=5, nheads=2, headdim=2, d_state=3)
    with pytest.raises(ValueError, match=r"A must be <= 0"):
        _forward(kind, (x, dt, A.abs(), B, C, D, h0), 4)
    bad_dt = dt.clone()
    bad_dt[0, 2, 1] = -0.5
    with pytest.raises(ValueError, match=r"dt must be >= 0.*-0.5"):
        _forward(kind, (x, bad_dt, A, B, C, D, h0), 4)
    with _dispatch.check_values(False):  # switched off, the same input runs
        _forward(kind, (x, bad_dt, A, B, C, D, h0), 4)


@pytest.mark.parametrize(("kind", "device"), ALL_FORWARDS, ids=ALL_IDS)
@pytest.mark.parametrize("with_h0", [False, True])
def test_empty_sequence_gives_an_empty_output_and_the_initial_state(kind, device, with_h0):
    """seqlen = 0 is a valid input: no outputs, and the final state is the initial state (zeros without
    one). The chunked reference used to fail on it (torch.stack of no chunks)."""
    x, dt, A, B, C, D, h0 = _inputs(device, batch=2, seqlen=0, nheads=2, headdim=3, d_state=4,
                                    with_initial_state=True)
    y, h = _forward(kind, (x, dt, A, B, C, D, h0 if with_h0 else None), 4)
    assert y.shape == x.shape and y.dtype == x.dtype
    expected = h0 if with_h0 else torch.zeros_like(h0)
    torch.testing.assert_close(h.to(expected.dtype), expected)


@pytest.mark.skipif(not _dispatch.HAS_NUMBA, reason="needs numba")
def test_numba_chunked_keeps_blas_to_one_thread_inside_prange(capfd):
    """At d_state = 256 the matmuls inside the kernel are large enough for OpenBLAS to start its own
    threads inside Numba's parallel loop (nested pools: OpenBLAS warns "Detect OpenMP Loop" and the call
    ran 22x slower). The kernel limits BLAS to one thread for the call and restores it afterwards."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return sorted((d["filepath"], d["num_threads"]) for d in threadpool_info() if d["user_api"] == "blas")

    inputs = _inputs("cpu", batch=1, seqlen=256, nheads=4, headdim=16, ngroups=1, d_state=256)
    K.ssd_chunked_numba(*inputs, chunk_size=64)  # compiles, loads SciPy's BLAS
    before = blas_threads()
    capfd.readouterr()
    y, _ = K.ssd_chunked_numba(*inputs, chunk_size=64)
    assert "Detect OpenMP Loop" not in capfd.readouterr().err
    assert blas_threads() == before
    ref, _ = K.ssd_chunked_reference(*inputs, chunk_size=64)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
