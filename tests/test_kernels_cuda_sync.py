"""No kernel call synchronises the host with the GPU on its hot path (issue 19).

Each case runs once to compile, then again under ``torch.cuda.set_sync_debug_mode("error")``, which turns
every synchronising CUDA call made through PyTorch (``.item()``, ``.tolist()``, ``bool(tensor)``,
``nonzero``, a copy from pageable memory, ...) into an error. The value checks that would need a sync run
on CPU tensors or in debug mode only (``paperlab_kernels._dispatch.value_checks``), so they stay out of
this test. Needs a CUDA device; skipped elsewhere (``tools/gpu-check.sh`` runs it on a GPU).
"""

from __future__ import annotations

import pytest
import torch

from paperlab_kernels import _dispatch, mlgru, moe, rmsnorm, sae, ssd, ternary

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and _dispatch.HAS_TRITON),
                                reason="needs a CUDA device and triton")

IMPLS = ["triton", "reference"]


# Each case builds its inputs (copies from the host synchronise, legitimately) and returns the hot path.
def _rmsnorm(impl):
    x = torch.randn(64, 256, device="cuda", requires_grad=True)
    w = torch.ones(256, device="cuda", requires_grad=True)

    def run():
        y = rmsnorm.rms_norm(x, w, impl=impl)
        torch.autograd.grad(y, (x, w), torch.ones_like(y))
        with torch.no_grad():
            rmsnorm.rms_norm(x, w, impl=impl)
        rmsnorm.rms_norm_quant(x, w, impl=impl)
        fake = rmsnorm.rms_norm_fake_quant(x, w, impl=impl)
        torch.autograd.grad(fake.sum(), x)

    return run


def _ssd(impl):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 100, 4, 16, device="cuda", generator=g, requires_grad=True)
    dt = torch.rand(2, 100, 4, device="cuda", generator=g)
    A = -torch.rand(4, device="cuda", generator=g)
    B = torch.randn(2, 100, 2, 16, device="cuda", generator=g)
    C = torch.randn(2, 100, 2, 16, device="cuda", generator=g)
    D = torch.ones(4, device="cuda")

    def run():
        y, h = ssd.ssd_chunked(x, dt, A, B, C, D, chunk_size=32, impl=impl)
        torch.autograd.grad(y.sum() + h.sum(), x)

    return run


def _sae(impl):
    values = torch.randn(32, 8, device="cuda", requires_grad=True)
    indices = torch.randint(0, 1024, (32, 8), device="cuda")
    weight = torch.randn(1024, 64, device="cuda", requires_grad=True)

    def run():
        y = sae.sparse_decode(values, indices, weight, impl=impl)
        torch.autograd.grad(y.sum(), (values, weight))

    return run


def _ternary(impl):
    w = torch.randint(-1, 2, (96, 130), dtype=torch.int8)
    packed = ternary.pack_ternary(w).cuda()  # packing is done once per model, outside the hot path
    q = torch.randint(-128, 128, (3, 130), dtype=torch.int8, device="cuda")
    s_x = torch.rand(3, 1, device="cuda") + 1
    s_w = torch.full((), 0.5, device="cuda")

    def run():
        ternary.ternary_matmul_int(q, packed, 130, impl=impl)
        ternary.ternary_linear(q, s_x, packed, 0.5, 130, impl=impl)
        ternary.ternary_linear(q, s_x, packed, s_w, 130, impl=impl)

    return run


def _mlgru(impl):
    f = torch.rand(2, 50, 64, device="cuda", requires_grad=True)
    c = torch.randn(2, 50, 64, device="cuda", requires_grad=True)

    def run():
        h = mlgru.mlgru_scan(f, c, impl=impl)
        torch.autograd.grad(h.sum(), (f, c))

    return run


def _moe(impl):
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(500, 8, device="cuda", generator=g)
    gate, expert_index = logits.softmax(-1).topk(2, dim=1)
    gate = gate.contiguous().requires_grad_()
    valid = torch.rand(500, device="cuda", generator=g) > 0.1
    capacity = moe.capacity_for(500, 8, 2, 1.25)
    x = torch.randn(500, 32, device="cuda", generator=g, requires_grad=True)

    def run():
        slot = moe.assign_slots(expert_index, 8, capacity, valid=valid)
        buffer = moe.dispatch(x, expert_index, slot, 8, capacity, impl=impl)
        y = moe.combine(buffer * 2, expert_index, slot, gate, impl=impl)
        torch.autograd.grad(y.sum(), (x, gate))

    return run


CASES = {"rmsnorm": _rmsnorm, "ssd": _ssd, "sae": _sae, "ternary": _ternary, "mlgru": _mlgru, "moe": _moe}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(CASES))
def test_no_host_sync_on_the_hot_path(name, impl):
    run = CASES[name](impl)
    run()  # compile and warm up (loading a module may synchronise)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()


def test_debug_mode_runs_the_value_checks_on_a_gpu():
    """The value checks still exist on a GPU: in debug mode a bad index is an error before any work."""
    values = torch.randn(2, 2, device="cuda")
    weight = torch.randn(4, 3, device="cuda")
    indices = torch.tensor([[0, 9], [1, 2]], device="cuda")
    with _dispatch.check_values(), pytest.raises(ValueError, match="indices must lie in"):
        sae.sparse_decode(values, indices, weight)
    with pytest.raises(ValueError, match="A must be <= 0"), _dispatch.check_values():
        x = torch.randn(1, 4, 2, 3, device="cuda")
        ssd.ssd_chunked(x, torch.rand(1, 4, 2, device="cuda"), torch.ones(2, device="cuda"),
                        torch.randn(1, 4, 1, 5, device="cuda"), torch.randn(1, 4, 1, 5, device="cuda"))
