"""paperlab.matmulfree: quantisers, STE, BitLinear, MLGRU forms, the LM, packing and add-only inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import nn as pnn
from paperlab.matmulfree import (
    MLGRU,
    BitLinear,
    MatMulFreeConfig,
    MatMulFreeLM,
    activation_quant,
    activation_quant_int8,
    pack_model,
    parallel_scan,
    sequential_scan,
    ste,
    ternary_weight,
    weight_bytes,
    weight_quant,
)
from paperlab.matmulfree import experiments as E
from paperlab.utils import cpu_threads
from paperlab_kernels import rmsnorm as R


@given(n=st.integers(1, 9), k=st.integers(1, 13), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 20))
@settings(max_examples=30, deadline=None)
def test_ternary_values_after_scaling(n, k, scale, seed):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * scale
    w_t, s = ternary_weight(w)
    assert w_t.dtype == torch.int8 and set(w_t.unique().tolist()) <= {-1, 0, 1}
    assert torch.allclose(s, 1 / w.abs().mean())
    wq = weight_quant(w)
    assert set((wq * s).round().unique().tolist()) <= {-1.0, 0.0, 1.0}
    torch.testing.assert_close(wq * s, w_t.float(), rtol=1e-5, atol=1e-5)


@given(rows=st.integers(1, 5), d=st.integers(1, 17), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 20))
@settings(max_examples=30, deadline=None)
def test_activations_in_int8_range(rows, d, scale, seed):
    x = torch.randn(rows, d, generator=torch.Generator().manual_seed(seed)) * scale
    q, s = activation_quant_int8(x)
    assert q.dtype == torch.int8 and int(q.min()) >= -128 and int(q.max()) <= 127
    assert (q.abs().amax(-1) == 127).all()  # absmax maps to +-127
    xq = activation_quant(x)
    levels = xq * s
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127 + 1e-3
    assert ((xq - x).abs() <= 0.5 / s + 1e-6 * x.abs()).all()  # within half a step


def test_zero_inputs_have_finite_scales():
    assert torch.equal(weight_quant(torch.zeros(3, 4)), torch.zeros(3, 4))
    assert torch.equal(activation_quant(torch.zeros(2, 5)), torch.zeros(2, 5))


def test_ste_value_and_gradient():
    x = torch.randn(4, 6, requires_grad=True)
    y = ste(x, activation_quant(x))
    assert torch.equal(y.detach(), activation_quant(x.detach()))
    (g,) = torch.autograd.grad((y * torch.arange(6.0)).sum(), x)
    assert torch.equal(g, torch.arange(6.0).expand(4, 6))


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_bitlinear_ste_gradients_equal_unquantised_linear(impl):
    """STE: gradients of BitLinear equal those of the same computation with the quantisers removed,
    evaluated at the quantised values (d/dx through the norm, d/dW of the linear at W_q)."""
    torch.manual_seed(0)
    layer = BitLinear(11, 7, impl=impl)
    with torch.no_grad():
        layer.weight.normal_()
        layer.norm_weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 11, requires_grad=True)
    dy = torch.randn(3, 5, 7)
    gx, gw, gn = torch.autograd.grad(layer(x), (x, layer.weight, layer.norm_weight), dy)
    # Unquantised linear: y = xq_const + (rmsnorm(x) - rmsnorm(x).detach()) ... i.e. identity quantisers
    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    n2 = layer.norm_weight.detach().clone().requires_grad_()
    xn = R.rms_norm_reference(x2, n2, 1e-8)
    xq = activation_quant(xn.detach())
    wq = weight_quant(w2.detach())
    # gradient of F.linear(a, b) w.r.t. a is dy @ b and w.r.t. b is dy^T a, with the quantised values
    y_x = F.linear(xn, wq)  # d/dx flows through the norm, weight at its quantised value
    y_w = F.linear(xq, w2)  # d/dW at the quantised activations
    ref_gx, ref_gn = torch.autograd.grad(y_x, (x2, n2), dy)
    (ref_gw,) = torch.autograd.grad(y_w, (w2,), dy)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gn, ref_gn, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-4, atol=1e-5)


def test_bitlinear_fused_equals_unfused():
    torch.manual_seed(1)
    fused, unfused = BitLinear(13, 6, impl="auto"), BitLinear(13, 6, impl="reference")
    unfused.load_state_dict(fused.state_dict())
    x = torch.randn(4, 13, requires_grad=True)
    y1, y2 = fused(x), unfused(x)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(y1.sum(), x)[0]
    g2 = torch.autograd.grad(y2.sum(), x)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_fused_rmsnorm_quant_equals_unfused():
    """The foundation's fused kernel == RMSNorm followed by our activation quantiser."""
    x = torch.randn(6, 37)
    w = torch.rand(37) + 0.5
    q, s = R.rms_norm_quant(x, w, 1e-8)
    q_ref, s_ref = activation_quant_int8(R.rms_norm_reference(x, w, 1e-8))
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
    assert (q.int() - q_ref.int()).abs().max() <= 1
    assert (q != q_ref).float().mean() <= 0.01


@given(batch=st.integers(1, 3), seq=st.integers(1, 19), d=st.integers(1, 6), seed=st.integers(0, 9))
@settings(max_examples=25, deadline=None)
def test_sequential_equals_parallel_scan(batch, seq, d, seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(batch, seq, d, generator=g, dtype=torch.float64).requires_grad_()
    c = torch.randn(batch, seq, d, generator=g, dtype=torch.float64).requires_grad_()
    dh = torch.randn(batch, seq, d, generator=g, dtype=torch.float64)
    h1, h2 = sequential_scan(f, c), parallel_scan(f, c)
    torch.testing.assert_close(h1, h2)
    for a, b in zip(torch.autograd.grad(h1, (f, c), dh), torch.autograd.grad(h2, (f, c), dh)):
        torch.testing.assert_close(a, b)


def test_mlgru_forms_agree_and_are_causal():
    torch.manual_seed(2)
    layers = {scan: MLGRU(12, scan=scan) for scan in ("kernel", "sequential", "parallel")}
    for layer in layers.values():
        layer.load_state_dict(layers["kernel"].state_dict())
    x = torch.randn(2, 9, 12)
    outs = {scan: layer(x) for scan, layer in layers.items()}
    torch.testing.assert_close(outs["kernel"], outs["sequential"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs["parallel"], outs["sequential"], rtol=1e-5, atol=1e-6)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(2, 4, 12)
    torch.testing.assert_close(layers["kernel"](x2)[:, :5], outs["kernel"][:, :5])  # no peeking ahead


@pytest.mark.parametrize("kind", ["mlgru", "attention"])
@pytest.mark.parametrize("quantise", [True, False])
def test_lm_shapes_loss_and_backward(kind, quantise):
    torch.manual_seed(0)
    model = MatMulFreeLM(MatMulFreeConfig(vocab_size=23, context_length=10, d_model=16, token_mixer=kind,
                                          quantise=quantise))
    idx = torch.randint(0, 23, (3, 10))
    assert model(idx).shape == (3, 10, 23)
    loss = model.loss(idx, idx)
    assert abs(loss.item() - torch.log(torch.tensor(23.0)).item()) < 0.5
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_lm_trains_on_a_pattern():
    torch.manual_seed(0)
    model = MatMulFreeLM(MatMulFreeConfig(vocab_size=8, context_length=16, d_model=24, n_layers=1))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    seq = torch.arange(17) % 4
    x, y = seq[:-1][None].repeat(4, 1), seq[1:][None].repeat(4, 1)
    first = model.loss(x, y).item()
    with cpu_threads(1):  # tiny model: one thread is fastest on a busy machine
        for _ in range(40):
            loss = model.loss(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert loss.item() < 0.3 * first


def test_packed_inference_matches_float_path():
    torch.manual_seed(3)
    model = MatMulFreeLM(MatMulFreeConfig(vocab_size=31, context_length=12, d_model=20, d_hidden=30)).eval()
    for p in model.parameters():  # spread the weights so ternary codes are mixed
        torch.nn.init.normal_(p, std=0.5)
    packed = pack_model(model)
    assert not any(isinstance(m, BitLinear) for m in packed.modules())
    idx = torch.randint(0, 31, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(packed(idx), model(idx), rtol=1e-4, atol=1e-4)
    prompts = [[1, 2, 3], [4]]
    assert pnn.generate(packed, prompts, 8, greedy=True) == pnn.generate(model, prompts, 8, greedy=True)


def test_weight_bytes_packed_is_16x_smaller():
    model = MatMulFreeLM(MatMulFreeConfig(vocab_size=11, context_length=8, d_model=32))
    sizes = weight_bytes(model)
    n_ternary = sum(m.weight.numel() for m in model.bitlinears().values())
    n_other = sum(p.numel() for p in model.parameters()) - n_ternary
    assert n_other == model.token_embedding.weight.numel() + sum(  # embedding and norm gains only:
        p.numel() for name, p in model.named_parameters() if "norm" in name)  # the LM head is ternary
    assert sizes["other_fp32"] == 4 * n_other
    n = sum(m.weight.numel() for m in model.bitlinears().values())
    assert sizes["ternary_fp32"] == 4 * n
    assert sizes["ternary_fp32"] / sizes["ternary_packed"] > 15


def test_bad_inputs():
    with pytest.raises(TypeError, match="floating"):
        ternary_weight(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="floating"):
        activation_quant_int8(torch.ones(2, 2, dtype=torch.int8))
    with pytest.raises(ValueError, match="in_features"):
        BitLinear(0, 3)
    with pytest.raises(ValueError, match="scan"):
        MLGRU(4, scan="fft")
    with pytest.raises(ValueError, match="token_mixer"):
        MatMulFreeConfig(vocab_size=5, context_length=4, token_mixer="conv")
    with pytest.raises(ValueError, match="kind"):
        E.RunConfig(kind="rnn", d_model=8, corpus=E.CONFIGS["fast"].corpus, train=E.CONFIGS["fast"].train)
    with pytest.raises(ValueError, match="quantised"):
        from paperlab.matmulfree import PackedBitLinear
        PackedBitLinear(BitLinear(4, 4, quantise=False))


def test_experiment_configs():
    for profile in ("fast", "full"):
        config = E.EXPERIMENT.config(profile)
        assert len(config.sizes) >= 2 and len(config.seeds) >= 3 and len(config.mqar.seeds) >= 3
        assert config.sweep_d_model in config.sizes
        assert config is E.CONFIGS[profile]
    with pytest.raises(ValueError, match="sweep_d_model"):
        E.MatMulFreeExperimentConfig(sizes=(32, 64), sweep_d_model=48)
    with pytest.raises(ValueError, match="n_pairs"):
        E.MQARSettings(seq_len=8, n_pairs=4)
    full = E.CONFIGS["full"]  # each family's grid: equally many rates, the smallest the flip claim's
    assert full.lrs("transformer") == full.transformer_lrs and full.lrs("fp") == full.lrs("matmulfree")
    assert len(full.transformer_lrs) == len(full.sweep_lrs)
    with pytest.raises(ValueError, match="transformer_lrs"):
        E.MatMulFreeExperimentConfig(transformer_lrs=(1e-2,))


def test_jobs_start_longest_first():
    config = E.CONFIGS["full"]
    runs = [config.run_config(kind, d, 1e-2) for kind in E.KINDS for d in config.sizes]
    runs += [config.mqar_run(kind, 1e-2, 0) for kind in ("mlgru", "attention")]
    cost = {r: E._cost(r) for r in runs}
    assert all(v > 0 for v in cost.values())
    # a wider model of a family costs more; the MatMul-free LM more than the Transformer++ at one width
    assert cost[config.run_config("matmulfree", 64, 1e-2)] > cost[config.run_config("matmulfree", 32, 1e-2)]
    assert cost[config.run_config("matmulfree", 48, 1e-2)] > cost[config.run_config("transformer", 48, 1e-2)]
    assert cost[config.mqar_run("mlgru", 1e-2, 0)] > cost[config.mqar_run("attention", 1e-2, 0)]


def test_mlgru_output_follows_the_reference_gate():
    """o_t = BitLinear_o(RMSNorm(g_t) * SiLU(h_t)): the gate projection is normalised, the state is gated
    (hgrn_bit's FusedRMSNormSwishGate(g_proj(x), h))."""
    torch.manual_seed(5)
    layer = MLGRU(10, scan="sequential")
    x = torch.randn(2, 7, 10)
    f, c = torch.sigmoid(layer.f_proj(x)), F.silu(layer.c_proj(x))
    h = sequential_scan(f, c)
    g = layer.g_proj(x)
    expected = layer.o_proj(layer.g_norm(g) * F.silu(h))
    torch.testing.assert_close(layer(x), expected)
    swapped = layer.o_proj(layer.g_norm(h) * F.silu(g))  # the other order is a different function
    assert not torch.allclose(layer(x), swapped, atol=1e-3)


def test_glu_shares_one_ternary_projection_for_gate_and_up():
    torch.manual_seed(6)
    glu = E.MatMulFreeLM(E.MatMulFreeConfig(vocab_size=7, context_length=4, d_model=16)).blocks[0].glu
    assert glu.gate_up.out_features == 2 * glu.down.in_features
    x = torch.randn(3, 16)
    gate, up = glu.gate_up(x).chunk(2, -1)
    torch.testing.assert_close(glu(x), glu.down(F.silu(gate) * up))
    w = glu.gate_up.quantised_weight().detach()
    assert len(set((1 / w[w != 0].abs()).round(decimals=3).tolist())) == 1  # one scale s_w for both halves


def test_lm_head_is_ternary_and_packed_model_has_no_float_linear():
    model = MatMulFreeLM(MatMulFreeConfig(vocab_size=13, context_length=6, d_model=16))
    assert isinstance(model.lm_head, BitLinear) and model.lm_head.quantise
    assert model.lm_head.weight.data_ptr() != model.token_embedding.weight.data_ptr()  # untied
    packed = pack_model(model)
    assert not any(isinstance(m, (torch.nn.Linear, BitLinear)) for m in packed.modules())
    fp = MatMulFreeLM(MatMulFreeConfig(vocab_size=13, context_length=6, d_model=16, quantise=False))
    assert not fp.lm_head.quantise


def test_flip_counter_counts_changed_ternary_values():
    torch.manual_seed(7)
    model = MatMulFreeLM(MatMulFreeConfig(vocab_size=5, context_length=4, d_model=8, n_layers=1))
    counter = E.FlipCounter(model, log_every=2)
    n = counter.initial.numel()
    assert n == sum(m.weight.numel() for m in model.bitlinears().values())
    counter.step(1)  # nothing changed
    layer = model.lm_head
    codes, scale = ternary_weight(layer.weight.detach())
    i = int((codes == 0).flatten().nonzero()[0])
    with torch.no_grad():  # push one zero weight far past the +1 threshold (the mean |W| barely moves)
        layer.weight.view(-1)[i] = 3 / scale
    counter.step(2)
    flipped = int((counter.codes() != counter.initial).sum())
    assert flipped >= 1
    summary = counter.summary()
    assert summary["steps"] == [2] and summary["rate"][0] == pytest.approx(flipped / (2 * n))
    assert summary["ever"] == pytest.approx(flipped / n) and summary["net"] == pytest.approx(flipped / n)


def test_add_only_check_counts_agreement(tmp_path):
    from paperlab import toolkit
    corpus = toolkit.build_corpus(E.CONFIGS["fast"].corpus)
    torch.manual_seed(8)
    model = MatMulFreeLM(MatMulFreeConfig(vocab_size=corpus.tokenizer.vocab_size, context_length=32,
                                          d_model=16, n_layers=1)).eval()
    out = E.add_only_check(model, corpus, n_prompts=3)
    assert out["n_sentences"] == 3 and len(out["max_logit_difference"]) == 3
    # the packed add-only path is the float model: every argmax, code and greedy generation the same
    # (this untrained model's weights sit away from the rounding thresholds; the chapter shows a trained
    # model's few codes that round the other way)
    assert out["positions"] > 0 and out["argmax_agree"] == out["positions"]
    assert out["codes_total"] > 0 and out["codes_changed"] == 0 and out["largest_code_change"] == 0
    assert out["n_equal_generations"] == out["n_sentences"]
    assert max(out["max_logit_difference"]) < 1e-5


def test_best_rates_use_the_sentence_loss_for_every_family():
    """One rule for every family: the lowest validation sentence loss, not the window loss (on which the
    Transformer++'s 1e-2 and 3e-3 were a near tie, and which disagreed with the sentence loss)."""
    sweep = [
        {"kind": "transformer", "lr": 3e-3, "sentence_loss": 2.3748, "final_val_loss": 2.4280},
        {"kind": "transformer", "lr": 1e-2, "sentence_loss": 2.3782, "final_val_loss": 2.4266},
        {"kind": "matmulfree", "lr": 3e-3, "sentence_loss": 2.3862, "final_val_loss": 2.4338},
        {"kind": "matmulfree", "lr": 1e-2, "sentence_loss": 2.3954, "final_val_loss": 2.4421},
    ]
    assert E.best_rates(sweep, ("transformer", "matmulfree")) == {"transformer": 3e-3, "matmulfree": 3e-3}


def test_larger_lr_of_the_learning_rate_claim():
    config = E.CONFIGS["full"]  # grid 1e-3, 3e-3, 1e-2 for every family
    # the ternary model's own best rate when it is above the Transformer++'s
    assert E.larger_lr(config, {"matmulfree": 1e-2, "transformer": 3e-3}) == 1e-2
    # equal best rates (or the ternary one below): the next rate of the ternary grid above the Transformer++'s
    assert E.larger_lr(config, {"matmulfree": 3e-3, "transformer": 3e-3}) == 1e-2
    assert E.larger_lr(config, {"matmulfree": 1e-3, "transformer": 3e-3}) == 1e-2
    assert E.larger_lr(config, {"matmulfree": 1e-3, "transformer": 1e-3}) == 3e-3
    # no rate above the Transformer++'s best: the claim cannot be tested
    assert E.larger_lr(config, {"matmulfree": 1e-3, "transformer": 1e-2}) is None


def test_mqar_recipe_and_shortcut():
    """The SSD chapter's MQAR recipe (batches of 128, one grid for both models), and the shortcut that
    needs no recall as the recall claim's null: 1/4, 1/3, 1/2, 1 at the four queries, 0.521 on average."""
    mqar = E.CONFIGS["full"].mqar
    assert mqar.train.batch_size == 128 and mqar.train.steps == 1500 and len(mqar.lrs) >= 2
    assert E.shortcut_accuracy(mqar) == pytest.approx((1 / 4 + 1 / 3 + 1 / 2 + 1) / 4)
    assert E.shortcut_accuracy(mqar) == pytest.approx(0.5208, abs=1e-4)
    # the shortcut's accuracy, simulated: guess uniformly among the values not asked for yet
    generator = torch.Generator().manual_seed(0)
    right = 0
    for _ in range(4000):
        values = torch.randperm(mqar.n_pairs, generator=generator).tolist()
        left = list(values)
        for v in values:
            guess = left[int(torch.randint(len(left), (1,), generator=generator))]
            right += guess == v
            left.remove(v)
    assert right / (4000 * mqar.n_pairs) == pytest.approx(E.shortcut_accuracy(mqar), abs=0.02)


def test_mqar_run_scores_every_query(tmp_path, monkeypatch):
    monkeypatch.setenv("PAPERLAB_CACHE", str(tmp_path))
    config = E.CONFIGS["fast"]
    result = E.mqar_run(config.mqar_run("mlgru", 1e-2, 0), "cpu")
    by_query = result["test_accuracy_by_query"]
    assert len(by_query) == config.mqar.n_pairs and all(0 <= a <= 1 for a in by_query)
    # the test accuracy is the mean over queries (every sequence asks every key once)
    assert sum(by_query) / len(by_query) == pytest.approx(result["test_accuracy"], abs=1e-6)
    assert result["val_curve"]["steps"][-1] == config.mqar.train.steps
