"""MoE routing, dispatch and combine: slot assignment rules (capacity, first-choice priority, padding), every
implementation against the naive per-token loop (values) and the PyTorch twin (gradients), bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paperlab_kernels import _dispatch
from paperlab_kernels import moe as M

CUDA = torch.cuda.is_available()
IMPLS = ["reference"]
if _dispatch.HAS_NUMBA:
    IMPLS.append("numba")
if _dispatch.HAS_TRITON and (CUDA or _dispatch.triton_interpreted()):
    IMPLS.append("triton")
KERNELS = [impl for impl in IMPLS if impl != "reference"]


def _device(impl: str) -> str:
    return "cuda" if impl == "triton" and CUDA else "cpu"


def _routing(n_tokens, n_experts, k, capacity, seed=0, pad=0.0, device="cpu"):
    """Top-k routing of random logits (distinct experts per token), its slots, and gate values."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_tokens, n_experts, generator=g)
    expert_index = logits.topk(k, dim=1).indices
    valid = torch.rand(n_tokens, generator=g) >= pad
    slot = M.assign_slots(expert_index, n_experts, capacity, valid=valid)
    gate = torch.rand(n_tokens, k, generator=g, dtype=torch.float64)
    return expert_index.to(device), slot.to(device), gate.to(device), valid.to(device)


def _expert_fn(n_experts, d, seed=1, dtype=torch.float64):
    """Distinct affine experts, so that a token sent to the wrong expert or slot changes the output."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_experts, d, d, generator=g, dtype=dtype) / d**0.5
    b = torch.randn(n_experts, d, generator=g, dtype=dtype)
    return w, b


# ========================================================================================= routing
def _slots_by_rule(expert_index, n_experts, capacity, valid):
    """assign_slots written as the plain rule: choices in (choice, token) order, count per expert."""
    n_tokens, k = expert_index.shape
    count = [0] * n_experts
    slot = torch.full((n_tokens, k), -1, dtype=torch.long)
    for j in range(k):
        for t in range(n_tokens):
            if not valid[t]:
                continue
            e = int(expert_index[t, j])
            if count[e] < capacity:
                slot[t, j] = count[e]
            count[e] += 1
    return slot


@settings(max_examples=40, deadline=None)
@given(
    n_tokens=st.integers(0, 40),
    n_experts=st.integers(1, 6),
    k=st.integers(1, 3),
    capacity=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    pad=st.sampled_from([0.0, 0.3]),
)
def test_assign_slots_matches_the_rule(n_tokens, n_experts, k, capacity, seed, pad):
    g = torch.Generator().manual_seed(seed)
    expert_index = torch.randint(0, n_experts, (n_tokens, k), generator=g)  # repeats allowed
    valid = torch.rand(n_tokens, generator=g) >= pad
    slot = M.assign_slots(expert_index, n_experts, capacity, valid=valid)
    assert slot.dtype == torch.long and slot.shape == (n_tokens, k)
    assert torch.equal(slot, _slots_by_rule(expert_index, n_experts, capacity, valid))


def test_capacity_respected_and_slots_unique():
    expert_index, slot, _, _ = _routing(500, 8, 2, capacity=40, seed=3)
    for e in range(8):
        used = slot[(expert_index == e) & (slot >= 0)]
        assert used.numel() <= 40
        assert torch.equal(used.sort().values, torch.arange(used.numel()))  # 0..n-1, each once
    assert int(slot.max()) == 39 and (slot == -1).any()  # over-subscribed: some choices dropped


def test_first_choices_take_priority_over_second_choices():
    # Tokens 0-2 pick expert 1 second; tokens 3-5 pick expert 1 first. With capacity 3 the three later
    # first choices win, and every earlier second choice is dropped.
    expert_index = torch.tensor([[0, 1], [0, 1], [2, 1], [1, 0], [1, 2], [1, 0]])
    slot = M.assign_slots(expert_index, 3, 3)
    assert slot[:, 1][:3].tolist() == [-1, -1, -1]
    assert slot[3:, 0].tolist() == [0, 1, 2]
    assert slot[:3, 0].tolist() == [0, 1, 0]  # expert 0, 0, 2 first choices
    assert slot[3:, 1].tolist() == [2, 1, -1]  # experts 0, 2, 0 after the first choices (0: 2 taken)


def test_padding_is_never_routed_and_takes_no_capacity():
    expert_index = torch.zeros(6, 1, dtype=torch.long)
    valid = torch.tensor([False, True, False, True, True, False])
    slot = M.assign_slots(expert_index, 1, 2, valid=valid)
    assert slot[:, 0].tolist() == [-1, 0, -1, 1, -1, -1]
    assert torch.equal(
        M.assign_slots(expert_index, 1, 10, valid=torch.zeros(6, dtype=torch.bool)), torch.full((6, 1), -1)
    )


def test_capacity_for():
    assert M.capacity_for(8192, 8, 2, 1.25) == 2560  # the benchmark shape
    assert M.capacity_for(10, 4, 2, 1.0) == 5
    assert M.capacity_for(0, 4) == 1
    assert M.capacity_for(10, 4, 2, 1.25) == 7  # ceil(6.25): a fraction of a slot rounds up
    assert M.capacity_for(10, 3) == 7  # ceil(20 / 3)
    with pytest.raises(ValueError, match="capacity_factor"):
        M.capacity_for(10, 4, 2, 0.0)


# ================================================================= values against the per-token loop
def _check_against_loop(impl, n_tokens, d, n_experts, k, capacity, seed=0, pad=0.0, dtype=torch.float64):
    device = _device(impl)
    expert_index, slot, gate, _ = _routing(n_tokens, n_experts, k, capacity, seed, pad, device)
    gate = gate.to(dtype)
    x = torch.randn(n_tokens, d, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype).to(device)
    w, b = (t.to(device=device, dtype=dtype) for t in _expert_fn(n_experts, d, seed + 2, dtype))
    want = M.dispatch_combine_loop(x, expert_index, slot, gate, lambda e, row: row @ w[e] + b[e])
    buffer = M.dispatch(x, expert_index, slot, n_experts, capacity, impl=impl)
    assert buffer.shape == (n_experts, capacity, d) and buffer.dtype == dtype
    expert_out = torch.einsum("ecd,edf->ecf", buffer, w) + b[:, None, :]
    got = M.combine(expert_out, expert_index, slot, gate, impl=impl)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # Unused buffer slots are zero: the number of non-zero rows is the number of kept choices.
    assert int((buffer.abs().sum(-1) > 0).sum()) == int((slot >= 0).sum())
    return slot


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "n_tokens,d,n_experts,k,capacity",
    [
        (1, 1, 1, 1, 1),
        (13, 7, 1, 1, 20),
        (37, 10, 4, 2, 9),
        (37, 10, 4, 2, 100),
        (50, 33, 5, 1, 4),
        (29, 130, 3, 3, 7),
    ],
)
def test_dispatch_combine_match_the_loop(impl, n_tokens, d, n_experts, k, capacity):
    _check_against_loop(impl, n_tokens, d, n_experts, k, capacity)


@pytest.mark.parametrize("impl", IMPLS)
def test_dropped_tokens_and_padding_get_zero(impl):
    slot = _check_against_loop(impl, 41, 6, 4, 2, 3, seed=5, pad=0.3)
    assert (slot == -1).all(dim=1).any()  # some tokens lost both choices; the loop gives them zeros


@pytest.mark.parametrize("impl", IMPLS)
def test_float32(impl):
    _check_against_loop(impl, 31, 17, 4, 2, 12, seed=7, dtype=torch.float32)


@pytest.mark.parametrize("impl", KERNELS)
def test_empty_token_batch(impl):
    device = _device(impl)
    x = torch.zeros(0, 4, device=device)
    idx = torch.zeros(0, 2, dtype=torch.long, device=device)
    buffer = M.dispatch(x, idx, idx, 3, 2, impl=impl)
    assert buffer.shape == (3, 2, 4) and not buffer.any()
    assert M.combine(buffer, idx, idx, torch.zeros(0, 2, device=device), impl=impl).shape == (0, 4)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_tokens=st.integers(1, 40),
    d=st.integers(1, 20),
    n_experts=st.integers(1, 6),
    capacity=st.integers(1, 15),
    seed=st.integers(0, 1000),
)
def test_numba_matches_reference_hypothesis(n_tokens, d, n_experts, capacity, seed):
    if "numba" not in IMPLS:
        pytest.skip("numba is not installed")
    k = min(2, n_experts)
    expert_index, slot, gate, _ = _routing(n_tokens, n_experts, k, capacity, seed)
    x = torch.randn(n_tokens, d, dtype=torch.float64)
    buf_ref = M.dispatch_reference(x, expert_index, slot, n_experts, capacity)
    buf = M.dispatch_numba(x, expert_index, slot, n_experts, capacity)
    assert torch.equal(buf, buf_ref)
    torch.testing.assert_close(
        M.combine_numba(buf, expert_index, slot, gate), M.combine_reference(buf_ref, expert_index, slot, gate)
    )


# ======================================================================================== gradients
@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("n_tokens,d,n_experts,k,capacity", [(9, 3, 3, 2, 4), (6, 5, 1, 1, 4)])
def test_gradcheck(impl, n_tokens, d, n_experts, k, capacity):
    device = _device(impl)
    expert_index, slot, gate, _ = _routing(n_tokens, n_experts, k, capacity, seed=2, pad=0.2, device=device)
    x = torch.randn(n_tokens, d, dtype=torch.float64, device=device, requires_grad=True)
    out = torch.randn(n_experts, capacity, d, dtype=torch.float64, device=device, requires_grad=True)
    gate = gate.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: M.dispatch(x, expert_index, slot, n_experts, capacity, impl=impl), (x,)
    )
    assert torch.autograd.gradcheck(lambda o, g: M.combine(o, expert_index, slot, g, impl=impl), (out, gate))


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_match_reference_through_a_moe_layer(impl, dtype):
    """x -> dispatch -> per-expert linear -> combine, gradients for x, expert weights and gates."""
    device = _device(impl)
    n_tokens, d, n_experts, k = 45, 12, 4, 2
    expert_index, slot, gate0, _ = _routing(n_tokens, n_experts, k, 14, seed=4, pad=0.1, device=device)
    w0, _ = _expert_fn(n_experts, d, dtype=dtype)
    x0 = torch.randn(n_tokens, d, dtype=dtype)
    grad_y = torch.randn(n_tokens, d, dtype=dtype).to(device)
    results = {}
    for which in ("reference", impl):
        x = x0.clone().to(device).requires_grad_()
        w = w0.clone().to(device).requires_grad_()
        gate = gate0.to(dtype).clone().requires_grad_()
        buffer = M.dispatch(x, expert_index, slot, n_experts, 14, impl=which)
        y = M.combine(torch.einsum("ecd,edf->ecf", buffer, w), expert_index, slot, gate, impl=which)
        results[which] = (y, *torch.autograd.grad(y, (x, w, gate), grad_y))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for got, want in zip(results[impl], results["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    dropped = slot < 0
    assert dropped.any() and not results[impl][3][dropped].any()  # no gate gradient for dropped choices


def test_loop_is_differentiable():
    expert_index, slot, gate, _ = _routing(5, 2, 1, 5)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = M.dispatch_combine_loop(x, expert_index, slot, gate, lambda e, row: (e + 1.0) * row)
    (grad,) = torch.autograd.grad(y.sum(), x)
    want = ((expert_index[:, 0] + 1.0) * gate[:, 0] * (slot[:, 0] >= 0)).unsqueeze(1).expand(5, 3)
    torch.testing.assert_close(grad, want)


# ======================================================================================= bad input
def _good(device="cpu"):
    x = torch.randn(6, 4)
    expert_index = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 2], [1, 0], [2, 1]])
    slot = M.assign_slots(expert_index, 3, 3)
    return tuple(t.to(device) for t in (x, expert_index, slot, torch.rand(6, 2)))


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input_errors_name_the_problem(impl):
    x, ei, slot, gate = _good(_device(impl))
    buffer = M.dispatch(x, ei, slot, 3, 3, impl=impl)
    with _dispatch.check_values():  # value checks: always on CPU tensors, in debug mode on a GPU
        with pytest.raises(ValueError, match=r"expert_index must lie in \[0, n_experts = 3\)"):
            M.dispatch(x, ei + 1, slot, 3, 3, impl=impl)
        with pytest.raises(ValueError, match=r"expert_index must lie in \[0, n_experts = 3\)"):
            M.combine(buffer, ei - 1, slot, gate, impl=impl)
        with pytest.raises(ValueError, match=r"slot must lie in \[-1, capacity = 2\)"):
            M.dispatch(x, ei, slot, 3, 2, impl=impl)
        with pytest.raises(ValueError, match=r"slot must lie in \[-1, capacity = 3\)"):
            M.combine(buffer, ei, slot.clamp(max=2) - 2, gate, impl=impl)
        with pytest.raises(ValueError, match="share the buffer slot"):
            M.dispatch(x, ei, torch.zeros_like(slot), 3, 3, impl=impl)
    with pytest.raises(ValueError, match="must have 5 rows"):
        M.dispatch(x[:5], ei, slot, 3, 3, impl=impl)
    with pytest.raises(ValueError, match="slot must have the shape of expert_index"):
        M.dispatch(x, ei, slot[:, :1], 3, 3, impl=impl)
    with pytest.raises(ValueError, match="gate must have the shape of expert_index"):
        M.combine(buffer, ei, slot, gate[:, :1], impl=impl)
    with pytest.raises(ValueError, match="expert_out must be 3-D"):
        M.combine(buffer[0], ei, slot, gate, impl=impl)
    with pytest.raises(ValueError, match="x must be 2-D"):
        M.dispatch(x[None], ei, slot, 3, 3, impl=impl)
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        M.dispatch(x, ei, slot, 3, 0, impl=impl)
    with pytest.raises(ValueError, match="n_experts must be a positive integer"):
        M.dispatch(x, ei, slot, -1, 3, impl=impl)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        M.dispatch(x.long(), ei, slot, 3, 3, impl=impl)
    with pytest.raises(TypeError, match="gate must be a floating-point tensor"):
        M.combine(buffer, ei, slot, gate > 0.5, impl=impl)
    with pytest.raises(TypeError, match="expert_index must be an int32 or int64 tensor"):
        M.dispatch(x, ei.float(), slot, 3, 3, impl=impl)
    with pytest.raises(TypeError, match="slot must be an int32 or int64 tensor"):
        M.combine(buffer, ei, slot.float(), gate, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_out_of_range_routing_without_value_checks_poisons_with_nan(impl):
    """With the value checks off (the default for GPU tensors, so that no call synchronises), an
    out-of-range expert or slot is never read or written: the outputs that depend on it are NaN, the
    others are unchanged (combine), and dispatch's whole buffer is NaN (it has no row for the pair)."""
    x, ei, slot, gate = _good(_device(impl))
    good_buffer = M.dispatch(x, ei, slot, 3, 3, impl=impl)
    good_y = M.combine(good_buffer, ei, slot, gate, impl=impl)
    bad_ei = ei.clone()
    bad_ei[2, 0] = 7  # expert 7 of 3
    with _dispatch.check_values(False):
        assert torch.isnan(M.dispatch(x, bad_ei, slot, 3, 3, impl=impl)).all()
        y = M.combine(good_buffer, bad_ei, slot, gate, impl=impl)
        bad_slot = slot.clone()
        bad_slot[4, 1] = 99
        y_slot = M.combine(good_buffer, ei, bad_slot, gate, impl=impl)
        slots = M.assign_slots(bad_ei, 3, 3)  # no error, no device assert: the pair takes no capacity
    assert torch.isnan(y[2]).all() and torch.isnan(y_slot[4]).all()
    others = [t for t in range(x.shape[0]) if t != 2]
    torch.testing.assert_close(y[others], good_y[others])
    assert slots[2, 0] == -1 and (slots >= -1).all()


def test_assign_slots_bad_input():
    _, ei, _, _ = _good()
    with pytest.raises(ValueError, match="capacity must be a positive integer"):
        M.assign_slots(ei, 3, 0)
    with pytest.raises(ValueError, match=r"expert_index must lie in \[0, n_experts = 2\)"):
        M.assign_slots(ei, 2, 4)
    with pytest.raises(ValueError, match="valid must be 1-D of length"):
        M.assign_slots(ei, 3, 4, valid=torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="valid must be a bool tensor"):
        M.assign_slots(ei, 3, 4, valid=torch.ones(6))
    with pytest.raises(ValueError, match="expert_index must be 2-D"):
        M.assign_slots(ei[:, 0], 3, 4)


def test_unknown_impl_and_wrong_device():
    x, ei, slot, _ = _good()
    with pytest.raises(ValueError, match="impl must be one of"):
        M.dispatch(x, ei, slot, 3, 3, impl="cuda")
    if CUDA and _dispatch.HAS_NUMBA:
        with pytest.raises(ValueError, match="runs on CPU tensors"):
            M.dispatch(x.cuda(), ei.cuda(), slot.cuda(), 3, 3, impl="numba")


def test_auto_matches_reference():
    x, ei, slot, gate = _good()
    auto = M.combine(M.dispatch(x, ei, slot, 3, 3), ei, slot, gate)
    ref = M.combine_reference(M.dispatch_reference(x, ei, slot, 3, 3), ei, slot, gate)
    torch.testing.assert_close(auto, ref)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_assign_slots_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    ei = torch.randint(0, 8, (1000, 2), generator=g)
    valid = torch.rand(1000, generator=g) > 0.1
    want = M.assign_slots(ei, 8, 200, valid=valid)
    assert torch.equal(M.assign_slots(ei.cuda(), 8, 200, valid=valid.cuda()).cpu(), want)
