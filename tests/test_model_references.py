"""Hand-computed references for the models' and the training signals' equations (the GPT's RoPE,
temperature and sequence log-probabilities; REINFORCE, Bradley-Terry, DPO and the KL-shaped policy gradient;
the MatMul-free LM's masks; the Mamba-2 block's output; the NLLB MoE gate, load-balancing loss and Gumbel
second choice; the TopK SAE's dead latents, Multi-TopK, AuxK and the ReLU baseline's L1; geometry's
token splits and pairs). Each test fails on a one-line bug that the package's other tests let through
(a mutation audit); expected values come by hand, in closed form, or from a slow obvious reference
written here, never read off the code.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from paperlab import align
from paperlab.nn import GPT, GPTConfig, next_token_distribution, rope_cos_sin, sequence_logprob

VOCAB = 12


def _tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, context_length=12, d_model=16, n_layers=1, n_heads=2)).eval()


def _rms(v: torch.Tensor, eps: float) -> torch.Tensor:
    return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)


# =========================================================================================== nn.py
def test_rope_angles_are_position_times_base_to_minus_2i_over_head_dim():
    """theta_{m,i} = m * 10000^(-2i/head_dim): head_dim 8 gives frequencies 1, 0.1, 0.01, 0.001."""
    cos, sin = rope_cos_sin(torch.tensor([3]), 8, dtype=torch.float64)
    angles = torch.tensor([3.0, 0.3, 0.03, 0.003], dtype=torch.float64)
    torch.testing.assert_close(cos.reshape(-1), angles.cos(), rtol=0, atol=1e-12)
    torch.testing.assert_close(sin.reshape(-1), angles.sin(), rtol=0, atol=1e-12)


def test_next_token_distribution_divides_logits_by_the_temperature():
    logits = torch.tensor([0.0, math.log(2.0)])
    p = next_token_distribution(logits, temperature=2.0)  # exp(logit / 2) = 1, sqrt(2)
    r2 = math.sqrt(2.0)
    torch.testing.assert_close(p, torch.tensor([1 / (1 + r2), r2 / (1 + r2)]))
    p_cold = next_token_distribution(logits, temperature=0.5)  # exp(2 logit) = 1, 4
    torch.testing.assert_close(p_cold, torch.tensor([0.2, 0.8]))


def test_sequence_logprob_average_divides_each_row_by_its_own_continuation_length():
    """With continuations of different lengths in one batch, the mean is over each row's own tokens
    (not over the padded width)."""
    model = _tiny_gpt(4)
    prompts, continuations = [[1, 3], [1]], [[4], [5, 6, 7, 8]]
    got = sequence_logprob(model, prompts, continuations, average=True)
    expected = []
    with torch.no_grad():
        for p, c in zip(prompts, continuations):
            tokens = torch.tensor([p + c])
            logp = torch.log_softmax(model(tokens[:, :-1]).double(), -1)[0]
            total = sum(float(logp[len(p) - 1 + j, c[j]]) for j in range(len(c)))
            expected.append(total / len(c))
    torch.testing.assert_close(got.detach().double(), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-5, rtol=0)


# ========================================================================================= align.py
def test_reinforce_loss_is_the_mean_over_sequences_of_advantage_times_logprob():
    logprobs = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    mask = torch.tensor([[True, True], [True, False]])
    advantages = torch.tensor([1.0, 2.0])
    # sequences: -3 and -3; -mean(1 * -3, 2 * -3) = 4.5
    assert align.reinforce_loss(logprobs, mask, advantages).item() == pytest.approx(4.5)


def test_bradley_terry_loss_is_the_mean_negative_log_likelihood():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    expected = (math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2
    assert align.bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


def test_dpo_loss_fn_uses_each_responses_own_reference_logprob():
    """DPO.loss_fn = mean of -log sigma(beta [(log pi(y_w) - log pi_ref(y_w))
    - (log pi(y_l) - log pi_ref(y_l))]), with every term computed here from sequence_logprob of the two
    models."""
    reference = _tiny_gpt(0)
    prompts, chosen, rejected = [[1, 3], [1, 4, 5]], [[6, 2], [7]], [[8, 9, 2], [10, 2]]
    dpo = align.DPO(reference, prompts, chosen, rejected, beta=0.5)
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        policy.lm_head.weight.add_(0.5 * torch.randn(policy.lm_head.weight.shape,
                                                     generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        got = dpo.loss_fn(policy, (torch.tensor([0, 1, 1]),)).item()
        losses = []
        for i in (0, 1, 1):
            pc = sequence_logprob(policy, [prompts[i]], [chosen[i]]).item()
            pr = sequence_logprob(policy, [prompts[i]], [rejected[i]]).item()
            rc = sequence_logprob(reference, [prompts[i]], [chosen[i]]).item()
            rr = sequence_logprob(reference, [prompts[i]], [rejected[i]]).item()
            h = 0.5 * ((pc - rc) - (pr - rr))
            losses.append(math.log(1 + math.exp(-h)))
    assert got == pytest.approx(sum(losses) / 3, abs=1e-5)


def _split(tokens, prompt_lengths, response_lengths):
    rows, responses = [], []
    for t, p, r in zip(tokens.tolist(), prompt_lengths.tolist(), response_lengths.tolist()):
        rows.append(t[:p])
        responses.append(t[p:p + r])
    return rows, responses


def test_policy_gradient_shaped_reward_subtracts_the_kl_penalty():
    """R = r - kl_coef * log(pi/pi_ref): with r = 0 and the batch-mean baseline, the advantage is
    -kl_coef * (kl - mean kl), kl from sequence_logprob of policy and reference."""
    policy = _tiny_gpt(3)
    reference = align.freeze(policy)
    with torch.no_grad():
        policy.lm_head.weight.add_(0.7 * torch.randn(policy.lm_head.weight.shape,
                                                     generator=torch.Generator().manual_seed(2)))
    config = align.PolicyGradientConfig(prompts_per_step=3, n_samples=2, max_new_tokens=3, kl_coef=1.0,
                                        baseline="batch")
    pg = align.PolicyGradient(reference, [[1, 3], [1, 4]], lambda p, r: [0.0] * len(r), config, eos_id=2)
    tokens, prompt_lengths, response_lengths, advantages, _ = pg.sample(policy, 0)
    rows, responses = _split(tokens, prompt_lengths, response_lengths)
    with torch.no_grad():
        kl = torch.tensor([sequence_logprob(policy, [p], [r]).item()
                           - sequence_logprob(reference, [p], [r]).item() for p, r in zip(rows, responses)])
    assert kl.std() > 1e-3  # the check below has something to see
    torch.testing.assert_close(advantages.float(), -(kl - kl.mean()), atol=1e-4, rtol=1e-4)


def test_policy_gradient_leave_one_out_baseline_is_the_mean_of_the_other_samples():
    policy = _tiny_gpt(5)
    config = align.PolicyGradientConfig(prompts_per_step=2, n_samples=3, max_new_tokens=2, kl_coef=0.0,
                                        baseline="loo")
    pg = align.PolicyGradient(policy, [[1, 3]], lambda p, r: [float(i) for i in range(len(r))], config,
                              eos_id=2)
    advantages = pg.sample(policy, 0)[3]
    # rewards 0, 1, 2 | 3, 4, 5: r_i - mean of the two others
    torch.testing.assert_close(advantages.float(), torch.tensor([-1.5, 0.0, 1.5, -1.5, 0.0, 1.5]))


# ====================================================================================== matmulfree
def _padded(x: torch.Tensor, n_pad: int, seed: int = 9):
    pad = 5 * torch.randn(x.shape[0], n_pad, x.shape[2], generator=torch.Generator().manual_seed(seed))
    mask = torch.cat([torch.zeros(x.shape[0], n_pad, dtype=torch.bool),
                      torch.ones(x.shape[0], x.shape[1], dtype=torch.bool)], 1)
    return torch.cat([pad, x], 1), mask


def test_mlgru_left_padding_leaves_the_real_tokens_outputs_unchanged():
    from paperlab.matmulfree import MLGRU

    torch.manual_seed(0)
    layer = MLGRU(12, scan="sequential")
    x = torch.randn(2, 6, 12)
    padded, mask = _padded(x, 3)
    with torch.no_grad():
        torch.testing.assert_close(layer(padded, mask)[:, 3:], layer(x), atol=1e-5, rtol=1e-5)


def test_ternary_attention_with_a_mask_is_causal_and_ignores_left_padding():
    from paperlab.matmulfree.layers import TernaryAttention

    torch.manual_seed(0)
    layer = TernaryAttention(16, 2)
    x = torch.randn(2, 6, 16)
    padded, mask = _padded(x, 3)
    with torch.no_grad():
        alone = layer(x)  # the is_causal path
        torch.testing.assert_close(layer(padded, mask)[:, 3:], alone, atol=1e-5, rtol=1e-5)
        later = padded.clone()
        later[:, 6:] += 1.0  # change real tokens 3.. only: outputs before them must not move
        torch.testing.assert_close(layer(later, mask)[:, 3:6], layer(padded, mask)[:, 3:6], atol=1e-6, rtol=0)


# ============================================================================================= SSD
def test_mamba2_block_output_is_rmsnorm_of_y_times_silu_z_then_out_proj():
    """Step 4 of the block: out_proj(RMSNorm(y * SiLU(z))), the gate applied before the norm."""
    from paperlab.ssd.core import ssd_recurrent
    from paperlab.ssd.model import Mamba2Block, Mamba2Config

    torch.manual_seed(0)
    block = Mamba2Block(Mamba2Config(d_model=16, d_state=4, headdim=8, chunk_size=4), "recurrent").double()
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
    u = torch.randn(2, 7, 16, dtype=torch.float64)
    (x, dt, A, B, C, D), z = block.ssd_inputs(u)
    y, _ = ssd_recurrent(x, dt, A, B, C, D)
    y = y.reshape(2, 7, -1)
    gated = y * z * torch.sigmoid(z)
    expected = (_rms(gated, block.norm.eps) * block.norm.weight) @ block.out_proj.weight.T
    torch.testing.assert_close(block(u), expected, rtol=0, atol=1e-10)


# ============================================================================================ NLLB
def _constant_probs_moe(probs, n_tokens, d=8, **kwargs):
    """An MoEFFN whose router gives every token of ``torch.ones(n_tokens, d)`` the probabilities ``probs``."""
    from paperlab.nllb.model import MoEFFN

    torch.manual_seed(0)
    layer = MoEFFN(d, 6, len(probs), **kwargs)
    with torch.no_grad():
        layer.gate.weight.copy_(torch.log(torch.tensor(probs))[:, None].expand(-1, d) / d)
    return layer, torch.ones(n_tokens, d)


def test_top2_gate_weights_are_the_two_probabilities_renormalised():
    from paperlab.nllb.model import MoEFFN

    torch.manual_seed(0)
    layer = MoEFFN(8, 6, 4).eval()
    x = torch.randn(30, 8)
    expert_index, gate, slot, *_ = layer.route(x, torch.ones(30, dtype=torch.bool))
    assert (slot >= 0).all()  # evaluation: nothing dropped
    probs = torch.softmax(x @ layer.gate.weight.T, -1)
    top = probs.topk(2, dim=-1)
    assert torch.equal(expert_index, top.indices)
    torch.testing.assert_close(gate, top.values / top.values.sum(-1, keepdim=True), atol=1e-6, rtol=1e-6)


def test_load_balancing_loss_uses_the_share_of_first_choices_not_the_mean_probability():
    """p = (0.4, 0.2, 0.2, 0.2) for every token: m = p, c = (1, 0, 0, 0), l_aux = E^2 mean(m c) = 1.6
    (E * sum m^2 would be 1.12)."""
    layer, x = _constant_probs_moe([0.4, 0.2, 0.2, 0.2], 10)
    _, l_aux = layer(x)
    assert l_aux.item() == pytest.approx(1.6, rel=1e-5)


def test_load_balancing_loss_averages_over_real_tokens_only():
    layer, x = _constant_probs_moe([0.4, 0.2, 0.2, 0.2], 12)
    valid = torch.ones(12, dtype=torch.bool)
    valid[8:] = False  # 4 padding tokens
    _, l_aux = layer(x, valid)
    assert l_aux.item() == pytest.approx(1.6, rel=1e-5)


def test_gumbel_second_choice_samples_the_remaining_experts_in_proportion_to_p():
    """e_2 = argmax_{e != e_1}(s_e + G_e) with G ~ Gumbel(0, 1) is a draw from p restricted to e != e_1:
    for p = (0.4, 0.3, 0.2, 0.1), experts 1, 2, 3 with probabilities 1/2, 1/3, 1/6."""
    layer, x = _constant_probs_moe([0.4, 0.3, 0.2, 0.1], 30000, gumbel_second=True)
    layer.train()
    torch.manual_seed(1)
    expert_index = layer.route(x, torch.ones(len(x), dtype=torch.bool))[0]
    assert (expert_index[:, 0] == 0).all()
    share = torch.bincount(expert_index[:, 1], minlength=4).float() / len(x)
    torch.testing.assert_close(share, torch.tensor([0.0, 1 / 2, 1 / 3, 1 / 6]), atol=0.015, rtol=0)


def test_conditional_moe_mean_gate_and_budget_loss_ignore_padding():
    from paperlab.nllb.model import ConditionalMoE, MoEFFN

    torch.manual_seed(0)
    layer = ConditionalMoE(8, 12, MoEFFN(8, 6, 4), budget=0.8)
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.weight[0, 0] = 1.0
        layer.gate.bias.zero_()
    x = torch.randn(10, 8)
    x[:6, 0] = 0.0  # real tokens: g = sigmoid(0) = 0.5
    x[6:, 0] = 20.0  # padding: g ~ 1
    valid = torch.arange(10) < 6
    _, _, budget = layer(x, valid)
    assert layer.last_gate == pytest.approx(0.5, abs=1e-6)
    assert budget.item() == pytest.approx(0.3, abs=1e-6)


# ============================================================================================= SAE
def _x(batch=64, d=16, seed=0):
    return torch.randn(batch, d, generator=torch.Generator().manual_seed(seed))


def _pre(sae, x):
    return (x - sae.b_pre) @ sae.W_enc.T + sae.b_enc


def _nmse(x_hat, x):
    return float(((x_hat - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_a_latent_is_dead_after_exactly_dead_tokens_tokens_without_firing():
    from paperlab.sae.model import TopKSAE

    sae = TopKSAE(16, 32, 4, dead_tokens=100, seed=0)
    none = torch.zeros(32, dtype=torch.bool)
    sae.record_firing(none, 99)
    assert not sae.dead_mask.any()
    sae.record_firing(none, 1)  # 100 tokens without firing
    assert sae.dead_mask.all()


def test_multi_topk_second_term_is_the_nmse_with_4k_latents():
    from paperlab.sae.model import TopKSAE

    sae = TopKSAE(16, 64, 2, multi_topk=True, seed=0)
    sae.init_b_pre(_x())
    x = _x(seed=1)
    with torch.no_grad():
        _, info = sae.loss(x)
        pre = _pre(sae, x)
        top = pre.topk(8, dim=1)  # 4k = 8
        z = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
        expected = _nmse(z @ sae.W_dec + sae.b_pre, x)
    assert info["nmse_4k"] == pytest.approx(expected, rel=1e-4)


def test_multi_topk_marks_only_the_top_k_latents_as_fired():
    from paperlab.sae.model import TopKSAE

    sae = TopKSAE(16, 64, 1, multi_topk=True, seed=0)
    sae.init_b_pre(_x())
    sae.train()
    x = _x(batch=8, seed=2)
    with torch.no_grad():
        pre = _pre(sae, x)
        values, indices = pre.max(dim=1)
        expected = torch.zeros(64, dtype=torch.bool)
        expected[indices[values > 1e-3]] = True
        sae.loss(x)
    assert torch.equal(sae.tokens_since_fired == 0, expected)


def test_relu_sae_marks_latents_that_fire_on_any_token():
    from paperlab.sae.model import ReLUSAE

    sae = ReLUSAE(16, 32, 0.1, seed=0)
    sae.init_b_pre(_x(), method="mean")
    sae.train()
    x = _x(batch=20, seed=3)
    with torch.no_grad():
        sae.b_enc[:8] = -100.0  # latents 0..7 never fire
        expected = (torch.relu(_pre(sae, x)) > 1e-3).any(0)
        sae.loss(x)
    assert 0 < int(expected.sum()) <= 24 and not expected[:8].any()
    assert not (torch.relu(_pre(sae, x)) > 1e-3).all(0).all()  # some latent fires on some tokens only
    assert torch.equal(sae.tokens_since_fired == 0, expected)
    assert (sae.tokens_since_fired[~expected] == 20).all()


def test_auxk_decodes_relu_of_the_dead_pre_activations():
    """k_aux larger than the number of dead latents: every dead latent is used, and those with negative
    pre-activation contribute nothing (ReLU). Here all four are negative: e_hat = 0, L_aux = NMSE(0, e)."""
    from paperlab.sae.model import TopKSAE

    sae = TopKSAE(16, 32, 4, k_aux=8, dead_tokens=10, seed=0)
    sae.init_b_pre(_x())
    with torch.no_grad():
        sae.b_enc[:4] = -50.0
    sae.tokens_since_fired[:4] = 1000  # latents 0..3 dead
    x = _x(seed=4)
    with torch.no_grad():
        x_hat = sae(x)
        aux = sae.auxk_loss(x, x_hat, sae.pre_activations(x)).item()
        e = x - x_hat
    assert aux == pytest.approx(_nmse(torch.zeros_like(e), e), rel=1e-5)


def test_topk_loss_adds_alpha_times_the_auxk_term():
    from paperlab.sae.model import TopKSAE

    sae = TopKSAE(16, 32, 4, k_aux=8, dead_tokens=10, aux_coefficient=1 / 32, seed=0)
    sae.init_b_pre(_x())
    sae.tokens_since_fired[:12] = 1000
    sae.eval()
    loss, info = sae.loss(_x(seed=5))
    assert info["auxk"] > 0.05
    assert loss.item() == pytest.approx(info["nmse"] + info["auxk"] / 32, rel=1e-5)


def test_relu_l1_is_divided_by_the_root_of_the_batch_variance():
    """l1 = mean_b sum_i z_bi / sqrt(mean_b ||x_b - mean(x)||^2); so scaling x, b_pre and b_enc by c
    leaves it unchanged."""
    from paperlab.sae.model import ReLUSAE

    sae = ReLUSAE(16, 32, 0.1, seed=0)
    sae.init_b_pre(_x(), method="mean")
    sae.eval()
    x = _x(seed=6)
    with torch.no_grad():
        z = torch.relu(_pre(sae, x))
        expected = float(z.sum(1).mean() / ((x - x.mean(0)) ** 2).sum(1).mean().sqrt())
        assert sae.loss(x)[1]["l1"] == pytest.approx(expected, rel=1e-5)
        sae.b_pre.mul_(10.0)
        sae.b_enc.mul_(10.0)
        assert sae.loss(10.0 * x)[1]["l1"] == pytest.approx(expected, rel=1e-4)


# ======================================================================================== geometry
def test_split_tokens_keeps_at_least_two_tokens_on_each_side():
    from paperlab.geometry.estimate import split_tokens

    generator = torch.Generator().manual_seed(0)
    for n in range(4, 13):
        index = list(range(100, 100 + n))
        for fraction in (0.1, 0.5, 0.7, 0.9, 0.99):
            train, held = split_tokens(index, fraction, generator)
            assert len(train) >= 2 and len(held) >= 2, (n, fraction, train, held)
            assert sorted(train + held) == index


def test_held_out_random_tokens_are_drawn_outside_the_feature():
    from paperlab.geometry.estimate import held_out_projections

    g = torch.randn(100, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g[:20, 0] += 10.0  # the feature's tokens: far along e_0, so they would dominate a 'random' mean
    result = held_out_projections(g, {"w": list(range(20))}, n_random=10_000)["w"]
    assert len(result["random_all"]) == 80  # every token outside Y(w), and only those
    assert abs(result["random"]) < 0.2


def test_random_pairs_exclude_ancestor_relations_in_both_orders():
    from paperlab.geometry.estimate import random_pairs

    related = {"a": set(), "b": {"a"}, "c": set()}  # a is an ancestor of b
    pairs = random_pairs(["a", "b", "c"], [], 300, torch.Generator().manual_seed(0), related=related)
    assert ("a", "b") not in pairs and ("b", "a") not in pairs
    assert {("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")} == set(pairs)
