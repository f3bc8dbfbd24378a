"""SSD core: the recurrence, the quadratic (masked attention) form and the chunked algorithm agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab.ssd import core
from paperlab.ssd.core import random_inputs, segsum, segsum_naive, ssd_chunked, ssd_quadratic, ssd_recurrent

ALGOS = {
    "quadratic": ssd_quadratic,
    "chunked-1": lambda *a: ssd_chunked(*a, chunk_size=1),
    "chunked-5": lambda *a: ssd_chunked(*a, chunk_size=5),
    "chunked-16": lambda *a: ssd_chunked(*a, chunk_size=16),
    "chunked-T": lambda *a: ssd_chunked(*a, chunk_size=a[0].shape[1]),
}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _loss_and_grads(fn, inputs, seed=1):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    y, final = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    v = torch.randn(final.shape, generator=g, dtype=torch.float64).to(final.dtype)
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad((y * w).sum() + (final * v).sum(), present)
    return y.detach(), final.detach(), grads


def _close(a, b, tol):
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max())


@settings(max_examples=25, deadline=None)
@given(seqlen=st.integers(1, 40), ngroups=st.sampled_from([1, 2, 4]),
       chunk=st.sampled_from([1, 3, 8, 16, 64]),
       with_d=st.booleans(), with_h0=st.booleans(), seed=st.integers(0, 1000))
def test_chunked_and_quadratic_match_recurrence_float64(seqlen, ngroups, chunk, with_d, with_h0, seed):
    inputs = random_inputs(batch=2, seqlen=seqlen, nheads=4, headdim=3, ngroups=ngroups, d_state=5,
                           seed=seed, with_D=with_d, with_initial_state=with_h0)
    y0, h0, g0 = _loss_and_grads(ssd_recurrent, inputs)
    for fn in (ssd_quadratic, lambda *a: ssd_chunked(*a, chunk_size=chunk)):
        y, h, grads = _loss_and_grads(fn, inputs)
        _close(y, y0, 1e-10)
        _close(h, h0, 1e-10)
        for a, b in zip(grads, g0, strict=True):
            _close(a, b, 1e-10)


@pytest.mark.parametrize("name", list(ALGOS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_each_algorithm_matches_recurrence(name, dtype):
    inputs = random_inputs(batch=2, seqlen=37, nheads=6, headdim=4, ngroups=3, d_state=7, dtype=dtype,
                           with_initial_state=True)
    y0, h0, g0 = _loss_and_grads(ssd_recurrent, inputs)
    y, h, grads = _loss_and_grads(ALGOS[name], inputs)
    assert y.dtype == dtype and y.shape == inputs[0].shape and h.shape == (2, 6, 4, 7)
    _close(y, y0, TOL[dtype])
    _close(h, h0, TOL[dtype])
    for a, b in zip(grads, g0, strict=True):
        _close(a, b, TOL[dtype] * 10)


def test_groups_are_not_heads():
    """With several groups, head h must read group h // (H / G): shuffling groups changes the output."""
    x, dt, A, B, C, D, _ = random_inputs(nheads=4, ngroups=2, seqlen=12)
    y, _ = ssd_chunked(x, dt, A, B, C, D, chunk_size=4)
    y_swapped, _ = ssd_chunked(x, dt, A, B.flip(2), C.flip(2), D, chunk_size=4)
    assert not torch.allclose(y, y_swapped)
    # heads 0, 1 read group 0: equal to running those heads alone with one group
    y01, _ = ssd_recurrent(x[:, :, :2], dt[:, :, :2], A[:2], B[:, :, :1], C[:, :, :1], D[:2])
    torch.testing.assert_close(y[:, :, :2], y01, rtol=0, atol=1e-12)


def test_initial_state_splits_a_sequence():
    """Running the second half from the first half's final state equals running the whole sequence."""
    x, dt, A, B, C, D, _ = random_inputs(seqlen=30, ngroups=2)
    y, h = ssd_chunked(x, dt, A, B, C, D, chunk_size=8)
    ya, ha = ssd_chunked(x[:, :13], dt[:, :13], A, B[:, :13], C[:, :13], D, chunk_size=8)
    yb, hb = ssd_chunked(x[:, 13:], dt[:, 13:], A, B[:, 13:], C[:, 13:], D, initial_state=ha, chunk_size=8)
    torch.testing.assert_close(torch.cat([ya, yb], 1), y, rtol=0, atol=1e-12)
    torch.testing.assert_close(hb, h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(ALGOS) + ["recurrent"])
def test_causality(name):
    """Changing inputs after position t leaves outputs up to t unchanged."""
    fn = ALGOS.get(name, ssd_recurrent)
    x, dt, A, B, C, D, _ = random_inputs(seqlen=20, ngroups=2)
    y, _ = fn(x, dt, A, B, C, D)
    t = 11
    x2, dt2, B2, C2 = x.clone(), dt.clone(), B.clone(), C.clone()
    x2[:, t + 1:] += 1.0
    dt2[:, t + 1:] *= 2.0
    B2[:, t + 1:] -= 1.0
    C2[:, t + 1:] += 3.0
    y2, _ = fn(x2, dt2, A, B2, C2, D)
    torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1], rtol=0, atol=1e-12)
    assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:])


def test_segsum_stable_matches_naive_where_naive_is_accurate():
    a = -torch.rand(3, 20, dtype=torch.float64)
    s, n = segsum(a), segsum_naive(a)
    finite = torch.isfinite(s)
    assert torch.equal(finite, torch.isfinite(n))
    assert finite.sum() == 3 * 20 * 21 // 2  # lower triangle including the diagonal
    torch.testing.assert_close(s[finite], n[finite], rtol=0, atol=1e-12)
    assert (s.diagonal(dim1=-2, dim2=-1) == 0).all()
    # exact definition: s[t, j] = sum_{r=j+1..t} a_r
    assert torch.isclose(s[1, 9, 4], a[1, 5:10].sum())


def test_segsum_stable_beats_naive_on_long_large_sums():
    """float32, large cumulative sums: the difference of cumsums loses the small segment sums."""
    a = torch.full((4096,), -100.0, dtype=torch.float32)
    a[2000:2010] = -1e-3
    exact = segsum(a.double())
    err_stable = (segsum(a)[2009, 2000] - exact[2009, 2000]).abs().item()
    err_naive = (segsum_naive(a)[2009, 2000] - exact[2009, 2000]).abs().item()
    assert err_stable < 1e-6 < err_naive


def test_semiseparable_matrix_is_the_layer():
    x, dt, A, B, C, D, _ = random_inputs(seqlen=10, ngroups=2)
    M = core.semiseparable_matrix(dt, A, B, C)
    y = torch.einsum("bhts,bshp->bthp", M, x * dt[..., None]) + D[:, None] * x
    torch.testing.assert_close(y, ssd_recurrent(x, dt, A, B, C, D)[0], rtol=0, atol=1e-12)
    assert (M.triu(1) == 0).all()


def test_off_diagonal_blocks_have_rank_at_most_n():
    from paperlab.ssd.experiments import off_diagonal_singular_values

    x, dt, A, B, C, D, _ = random_inputs(seqlen=48, nheads=1, d_state=4)
    M = core.semiseparable_matrix(dt, A, B, C)[0, 0]
    for sv in off_diagonal_singular_values(M):
        assert sv[4] < 1e-10 * sv[0]  # singular values 5, 6, ... vanish: rank <= N = 4


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [ssd_recurrent, ssd_quadratic, ssd_chunked])
def test_bad_inputs_name_the_problem(fn):
    x, dt, A, B, C, D, h0 = random_inputs(nheads=4, ngroups=2, with_initial_state=True)
    with pytest.raises(ValueError, match=r"nheads \(4\) must be divisible by ngroups \(3"):
        fn(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1), D)
    with pytest.raises(ValueError, match=r"dt must have shape \(batch, seqlen, nheads\)"):
        fn(x, dt[:, :-1], A, B, C, D)
    with pytest.raises(ValueError, match=r"C must have the shape of B"):
        fn(x, dt, A, B, C[..., :-1], D)
    with pytest.raises(ValueError, match=r"B must have batch, seqlen"):
        fn(x, dt, A, B[:, :-1], C[:, :-1], D)
    with pytest.raises(ValueError, match=r"A must have shape \(nheads,\)"):
        fn(x, dt, A[:2], B, C, D)
    with pytest.raises(ValueError, match=r"D must have shape \(nheads,\)"):
        fn(x, dt, A, B, C, D[:3])
    with pytest.raises(ValueError, match=r"initial_state must have shape"):
        fn(x, dt, A, B, C, D, h0[..., :-1])
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        fn(x[0], dt, A, B, C, D)
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor"):
        fn(x.long(), dt, A, B, C, D)


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_bad_chunk_size(chunk):
    inputs = random_inputs()
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ssd_chunked(*inputs, chunk_size=chunk)


# ------------------------------------------------------------------------------ chunks and structure
@pytest.mark.parametrize("j,i", [(1, 0), (3, 0), (3, 2), (2, 1)])
def test_block_factors_multiply_back_to_the_block(j, i):
    x, dt, A, B, C, D, _ = random_inputs(batch=1, seqlen=24, nheads=1, d_state=3, seed=1)
    M = core.semiseparable_matrix(dt, A, B, C)[0, 0]
    left, center, right = core.block_factors(dt[0, :, 0], A, B[0, :, 0], C[0, :, 0], 6, j, i)
    assert left.shape == (6, 3) and right.shape == (3, 6) and center.dim() == 0
    block = M[j * 6:(j + 1) * 6, i * 6:(i + 1) * 6]
    torch.testing.assert_close(left @ (center * right), block, rtol=0, atol=1e-14)
    if j == i + 1:  # adjacent chunks: nothing between them decays
        assert float(center) == 1.0
    else:
        assert float(center) < 1.0


def test_block_factors_reject_diagonal_or_out_of_range_blocks():
    _, dt, A, B, C, _, _ = random_inputs(batch=1, seqlen=24, nheads=1, d_state=3)
    args = (dt[0, :, 0], A, B[0, :, 0], C[0, :, 0], 6)
    with pytest.raises(ValueError, match="need chunks 0 <= col_chunk < row_chunk"):
        core.block_factors(*args, 1, 1)
    with pytest.raises(ValueError, match="need chunks 0 <= col_chunk < row_chunk"):
        core.block_factors(*args, 4, 0)


def test_chunking_bounds_the_cancellation():
    from paperlab.ssd.experiments import cancellation

    out = cancellation(seqlen=1024, chunk_size=32)
    assert out["largest within a chunk"] < out["largest cumulative sum"] / 10
    assert out["within chunks"] < out["whole sequence"] / 5
    assert out["masked sums"] < 1e-4


def test_softmax_attention_has_full_rank_off_diagonal_blocks():
    from paperlab.ssd.experiments import rank_excess, rank_null, softmax_attention_matrix

    _, dt, A, B, C, _, _ = random_inputs(batch=1, seqlen=40, nheads=1, d_state=4, seed=2)
    assert rank_excess(core.semiseparable_matrix(dt, A, B, C)[0, 0], 4) < -10
    scores = softmax_attention_matrix(B[0, :, 0], C[0, :, 0])
    torch.testing.assert_close(scores.sum(-1), torch.ones(40, dtype=scores.dtype))
    assert (scores.triu(1) == 0).all()
    assert min(rank_null(40, 4, draws=20)) > -4


def test_loglog_slope_recovers_an_exponent_with_an_interval():
    from paperlab.ssd.experiments import loglog_slope

    rng = np.random.default_rng(0)
    rounds = {str(T): list(1e-6 * T**2 * (1 + 0.02 * rng.standard_normal(7))) for T in (256, 512, 1024, 2048)}
    estimate = loglog_slope(rounds)
    assert estimate.low <= estimate.value <= estimate.high
    assert 1.9 < estimate.low and estimate.high < 2.1
    assert "timing rounds" in estimate.method
