"""TopK / ReLU sparse autoencoders: the properties the chapter relies on, and input validation."""

from __future__ import annotations

import pytest
import torch

from paperlab.sae.metrics import feature_recovery, nmse, probe_loss
from paperlab.sae.model import (
    ReLUSAE,
    SAEAdam,
    TopKSAE,
    geometric_median,
    normalise_decoder_,
    project_decoder_grad_,
)


def _x(batch=64, d=16, seed=0):
    return torch.randn(batch, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("k", [1, 3, 8])
def test_at_most_k_nonzero_latents_per_token(k):
    sae = TopKSAE(16, 32, k, seed=0)
    sae.init_b_pre(_x())
    z = sae.encode(_x(seed=1))
    assert ((z != 0).sum(1) <= k).all()
    assert ((z != 0).sum(1) == k).float().mean() > 0.5  # and usually exactly k
    assert (z >= 0).all()


def test_tied_init_and_unit_norm_decoder():
    sae = TopKSAE(16, 32, 4, seed=0)
    assert torch.equal(sae.W_enc, sae.W_dec)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))
    untied = TopKSAE(16, 32, 4, tied_init=False, seed=0)
    assert not torch.equal(untied.W_enc, untied.W_dec)


def test_decoder_norms_are_one_after_a_step_and_parallel_gradient_is_removed():
    sae = TopKSAE(16, 32, 4, seed=0)
    optimizer = SAEAdam(sae, lr=1e-2)
    loss, _ = sae.loss(_x())
    loss.backward()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() > 1e-6  # there was a parallel component
    grad_before = sae.W_dec.grad.clone()
    project_decoder_grad_(sae.W_dec)
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert parallel.abs().max() < 1e-6
    # Only the parallel part was removed: the difference is parallel to each row.
    diff = grad_before - sae.W_dec.grad
    cos = (diff * sae.W_dec).sum(1).abs() / (diff.norm(dim=1) + 1e-12)
    assert ((cos > 1 - 1e-4) | (diff.norm(dim=1) < 1e-9)).all()
    optimizer.step()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-6, rtol=0)


def test_normalise_decoder():
    w = torch.randn(5, 3) * 7
    normalise_decoder_(w)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(5))


def test_sparse_decode_equals_dense_values_and_gradients():
    """The Numba sparse decoder against the dense product (the reference twin computes that product
    itself, so it is compared with the kernels in tests/test_kernels_sae.py, not here)."""
    sparse = TopKSAE(16, 32, 4, seed=0, decoder_impl="numba")
    dense = TopKSAE(16, 32, 4, seed=0)
    dense.load_state_dict(sparse.state_dict())
    x = _x()
    out_sparse = sparse(x)
    out_dense = dense.decode(dense.encode(x))  # dense z @ W_dec + b_pre
    torch.testing.assert_close(out_sparse, out_dense, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(x)
    grads_sparse = torch.autograd.grad(out_sparse, list(sparse.parameters()), g, allow_unused=True)
    grads_dense = torch.autograd.grad(out_dense, list(dense.parameters()), g, allow_unused=True)
    for a, b in zip(grads_sparse, grads_dense):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_auxk_is_zero_without_dead_latents_and_positive_with():
    sae = TopKSAE(16, 32, 4, k_aux=8, dead_tokens=1000, seed=0)
    sae.init_b_pre(_x())
    x = _x(seed=1)
    _, info = sae.loss(x)
    assert not sae.dead_mask.any()
    assert info["auxk"] == 0.0
    sae.tokens_since_fired[:10] = 10_000  # make ten latents dead
    x_hat = sae(x)
    aux = sae.auxk_loss(x, x_hat, sae.pre_activations(x))
    assert aux.item() > 0
    assert sae.dead_fraction() == pytest.approx(10 / 32)


def test_dead_latent_counter_counts_tokens():
    sae = TopKSAE(16, 64, 1, dead_tokens=100, seed=0)
    sae.init_b_pre(_x())
    sae.train()
    sae.loss(_x(batch=60))
    fired = sae.tokens_since_fired == 0
    assert fired.any() and (sae.tokens_since_fired[~fired] == 60).all()
    sae.loss(_x(batch=60, seed=2))
    assert ((sae.tokens_since_fired == 0) | (sae.tokens_since_fired >= 60)).all()


def test_nmse_of_mean_predictor_is_one_and_perfect_is_zero():
    x = _x()
    assert nmse(x.mean(0).expand_as(x), x).item() == pytest.approx(1.0, abs=1e-6)
    assert nmse(x, x).item() == 0.0
    with pytest.raises(ValueError, match="zero variance"):
        nmse(x[:1], x[:1])


def test_multi_topk_loss_has_both_terms():
    sae = TopKSAE(16, 32, 2, multi_topk=True, seed=0)
    sae.init_b_pre(_x())
    loss, info = sae.loss(_x(seed=1))
    assert loss.item() == pytest.approx(info["nmse"] + info["nmse_4k"] / 8, rel=1e-5)


def test_relu_sae_same_interface():
    sae = ReLUSAE(16, 32, l1_coefficient=0.1, seed=0)
    sae.init_b_pre(_x(), method="mean")
    x = _x(seed=1)
    z = sae.encode(x)
    assert z.shape == (64, 32) and (z >= 0).all()
    torch.testing.assert_close(sae(x), sae.decode(z))
    loss, info = sae.loss(x)
    assert loss.item() == pytest.approx(info["nmse"] + 0.1 * info["l1"], rel=1e-5)


def test_geometric_median_resists_outliers():
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    x[0] = torch.tensor([1e6, 1e6])  # one outlier moves the mean by 5000, the median hardly
    assert x.mean(0).abs().min() > 1000
    assert geometric_median(x).abs().max() < 0.3


def test_feature_recovery_and_probe():
    features = torch.eye(4, 8)
    score, best = feature_recovery(torch.cat([features, torch.randn(3, 8)]), features)
    assert score == pytest.approx(1.0) and best.shape == (4,)
    labels = (torch.arange(200) % 2)
    z = torch.stack([labels.float() + 0.01 * torch.randn(200), torch.randn(200)], 1)
    loss, latent = probe_loss(z, labels)
    assert latent == 0 and loss < 0.1


@pytest.mark.parametrize("make,match", [
    (lambda: TopKSAE(16, 32, 33), "k must be >= 1 and <= n_latents = 32"),
    (lambda: TopKSAE(16, 32, 0), "k must be >= 1"),
    (lambda: TopKSAE(16, 32, 2.5), "k must be an int"),
    (lambda: TopKSAE(0, 32, 2), "d_model must be >= 1"),
    (lambda: TopKSAE(16, 32, 2, k_aux=64), "k_aux must be"),
    (lambda: ReLUSAE(16, 32, -1.0), "l1_coefficient"),
])
def test_bad_hyperparameters_raise_naming_the_problem(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_inputs_raise_naming_the_problem():
    sae = TopKSAE(16, 32, 4, seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, d_model = 16\)"):
        sae(torch.randn(4, 15))
    bad = torch.randn(4, 16)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        sae(bad)
    bad[1, 3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        sae.loss(bad)
    with pytest.raises(TypeError, match="floating-point"):
        sae(torch.ones(4, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be"):
        sae(torch.randn(4, 16), k=40)


def test_auxk_equals_a_dense_reference_in_value_and_gradients():
    # The reference code's way: zero the pre-activations of live latents, keep the top k_aux of the rest,
    # decode densely; the residual target has no gradient. Ours (top-k_aux among the dead, sparse decode)
    # must agree, so a dead fraction that AuxK does not lower is not a bug in the auxiliary loss.
    sae = TopKSAE(16, 64, 2, k_aux=8, dead_tokens=1000, tied_init=False, seed=0)
    x = _x(seed=3)
    sae.init_b_pre(x)
    sae.tokens_since_fired[:40] = 10_000  # 40 dead latents
    pre = sae.pre_activations(x)
    x_hat = sae(x)
    ours = sae.auxk_loss(x, x_hat, pre)
    top = (pre * sae.dead_mask).topk(8, dim=1)
    z = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
    e = (x - x_hat).detach()
    reference = ((z @ sae.W_dec - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_pre]
    ours_grads = torch.autograd.grad(ours, params, retain_graph=True)
    for a, b in zip(ours_grads, torch.autograd.grad(reference, params)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # only dead latents' encoder rows get a gradient from it
    grad_enc = torch.autograd.grad(sae.auxk_loss(x, sae(x), sae.pre_activations(x)), sae.W_enc)[0]
    assert grad_enc[40:].abs().max() == 0 and grad_enc[:40].abs().max() > 0


def test_relu_l1_warms_up_linearly():
    sae = ReLUSAE(16, 32, l1_coefficient=0.4, l1_warmup_steps=4, seed=0)
    sae.init_b_pre(_x())
    sae.train()
    coefficients = [sae.loss(_x(seed=s))[1]["l1_coefficient"] for s in range(6)]
    assert coefficients == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    sae.eval()  # evaluation neither counts steps nor changes the coefficient
    assert sae.loss(_x())[1]["l1_coefficient"] == 0.4 and int(sae.steps) == 6
    with pytest.raises(ValueError, match="l1_warmup_steps"):
        ReLUSAE(16, 32, 0.1, l1_warmup_steps=-1)


@pytest.mark.parametrize("make", [lambda: ReLUSAE(16, 256, 0.1, seed=0), lambda: TopKSAE(16, 256, 4, seed=0)])
def test_scale_encoder_makes_unit_inputs_reconstruct_with_unit_norm(make):
    sae = make()
    sae.init_b_pre(_x())
    factor = sae.scale_encoder_(seed=1)
    u = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    u = u / u.norm(dim=1, keepdim=True)
    with torch.no_grad():
        norm = (sae(u + sae.b_pre) - sae.b_pre).norm(dim=1).mean()
    assert norm.item() == pytest.approx(1.0, rel=1e-4)
    if isinstance(sae, ReLUSAE):
        assert factor < 0.5  # a ReLU SAE at init fires about half its latents: far too large an output


def test_feature_recovery_over_live_latents_and_its_chance_level():
    from paperlab.sae.metrics import firing_counts, random_dictionary_recovery

    features = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    features /= features.norm(dim=1, keepdim=True)
    z = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.0, 2e-4]])
    assert firing_counts(z).tolist() == [2, 0, 0]  # 2e-4 is below the firing threshold
    score, best = feature_recovery(features[:0], features)  # no live latent: nothing recovered
    assert score == 0.0 and (best == 0).all()
    chance = random_dictionary_recovery(64, features, draws=5, seed=1)  # not the features' seed
    assert all(0.2 < m < 0.8 for m in chance["mean_best_cosine"])  # random directions in 16-d
    assert max(chance["recovered"]) < 0.1
    with pytest.raises(ValueError, match="share d"):
        feature_recovery(torch.randn(3, 8), features)


def test_fraction_of_loss_recovered_and_top_activations():
    from paperlab.sae.metrics import fraction_of_loss_recovered, top_activations

    assert fraction_of_loss_recovered(2.0, clean=2.0, ablated=3.0) == 1.0
    assert fraction_of_loss_recovered(2.75, clean=2.0, ablated=3.0) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="must exceed the clean loss"):
        fraction_of_loss_recovered(2.0, clean=3.0, ablated=3.0)
    z = torch.tensor([[0.0, 1.0], [3.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    assert top_activations(z, 0, count=3) == ([1, 2], [3.0, 2.0])  # only rows where it fires
