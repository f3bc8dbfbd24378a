"""paperlab.align: each training signal checked against its definition, on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from paperlab import align
from paperlab.nn import GPT, GPTConfig, sequence_logprob
from paperlab.train import TrainConfig, train

VOCAB = 12  # 0 pad, 1 bos, 2 eos, 3.. content


def tiny_gpt(seed: int = 0, context_length: int = 12) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, context_length=context_length, d_model=16, n_layers=1, n_heads=2))


PROMPTS = [[1, 3, 4], [1, 5], [1, 6, 7, 8]]
RESPONSES = [[9, 10, 2], [11], [3, 4]]


def test_token_logprobs_sum_to_sequence_logprob():
    model = tiny_gpt()
    logprobs, mask = align.token_logprobs(model, PROMPTS, RESPONSES)
    assert logprobs.shape == mask.shape == (3, 3)
    assert mask.sum(1).tolist() == [3, 1, 2]
    expected = sequence_logprob(model, PROMPTS, RESPONSES)
    torch.testing.assert_close(logprobs.sum(1), expected, atol=1e-5, rtol=0)


def test_sft_batch_trains_on_response_tokens_only():
    model = tiny_gpt()
    idx, targets = align.sft_batch(PROMPTS, RESPONSES)
    # targets are exactly the response tokens, in place
    assert [[t for t in row if t != -100] for row in targets.tolist()] == RESPONSES
    # the loss equals the mean negative response log-likelihood
    expected = -sequence_logprob(model, PROMPTS, RESPONSES).sum() / sum(map(len, RESPONSES))
    torch.testing.assert_close(model.loss(idx, targets), expected, atol=1e-5, rtol=0)
    # masked (prompt and padding) positions get exactly zero gradient
    logits = model(idx).detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()
    masked = targets == -100
    assert torch.count_nonzero(logits.grad[masked]) == 0
    assert torch.count_nonzero(logits.grad[~masked].abs().sum(-1)) == int((~masked).sum())


def test_sft_turns_batch_trains_on_trainable_turns_only():
    model = tiny_gpt()
    conversations = [[([1, 5, 6], False), ([7, 8, 2], True), ([9, 10], False), ([11, 2], True)],
                     [([1, 4], False), ([3, 2], True)]]
    idx, targets = align.sft_turns_batch(conversations)
    assert [[t for t in row if t != -100] for row in targets.tolist()] == [[7, 8, 2, 11, 2], [3, 2]]
    # the first conversation's context tokens (environment turns) are inputs, never targets
    assert idx[0].tolist() == [1, 5, 6, 7, 8, 2, 9, 10, 11]
    # two turns is exactly sft_batch
    single = align.sft_batch([[1, 4]], [[3, 2]])
    pair = align.sft_turns_batch([[([1, 4], False), ([3, 2], True)]])
    assert all(torch.equal(a, b) for a, b in zip(single, pair))
    # environment turns contribute zero loss: they are no target, and their logits get no gradient
    logits = model(idx).detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()
    masked = targets == -100
    assert torch.count_nonzero(logits.grad[masked]) == 0
    assert torch.count_nonzero(logits.grad[~masked].abs().sum(-1)) == int((~masked).sum())
    with pytest.raises(ValueError, match="no trainable token"):
        align.sft_turns_batch([[([1, 5], False), ([6], False)]])
    with pytest.raises(ValueError, match="trainable: bool"):
        align.sft_turns_batch([[([1, 5], 1)]])
    with pytest.raises(ValueError, match="non-empty list of conversations"):
        align.sft_turns_batch([])


def test_sft_rejects_bad_input():
    with pytest.raises(ValueError, match="every response is empty"):
        align.sft_batch([[1, 3]], [[]])
    with pytest.raises(ValueError, match="differ in length"):
        align.sft_batch([[1, 3]], [[4], [5]])
    with pytest.raises(ValueError, match="prompts must be a non-empty list"):
        align.sft_batch([], [])


def test_dpo_loss_is_log2_at_the_reference_and_its_gradient_moves_the_right_way():
    policy = tiny_gpt()
    reference = align.freeze(policy)
    prompts, chosen, rejected = [[1, 3], [1, 4]], [[5, 2], [6, 2]], [[7, 2], [8, 8, 2]]
    pc = sequence_logprob(policy, prompts, chosen)
    pr = sequence_logprob(policy, prompts, rejected)
    with torch.no_grad():
        rc, rr = sequence_logprob(reference, prompts, chosen), sequence_logprob(reference, prompts, rejected)
    losses = align.dpo_loss(pc, pr, rc, rr, beta=0.1)
    torch.testing.assert_close(losses, torch.full((2,), math.log(2)), atol=1e-6, rtol=0)
    # d loss / d log pi(y_w) = -beta sigma(-beta h) < 0 and d loss / d log pi(y_l) > 0 ...
    logp_c, logp_r = pc.detach().requires_grad_(True), pr.detach().requires_grad_(True)
    align.dpo_loss(logp_c, logp_r, rc, rr, beta=0.1).sum().backward()
    torch.testing.assert_close(logp_c.grad, torch.full((2,), -0.05), atol=1e-6, rtol=0)
    torch.testing.assert_close(logp_r.grad, torch.full((2,), 0.05), atol=1e-6, rtol=0)
    # ... so a small gradient step on the model raises log p(chosen) and lowers log p(rejected)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    align.dpo_loss(pc, pr, rc, rr, beta=0.1).mean().backward()
    optimizer.step()
    with torch.no_grad():
        assert (sequence_logprob(policy, prompts, chosen) > pc.detach()).all()
        assert (sequence_logprob(policy, prompts, rejected) < pr.detach()).all()


def test_dpo_training_widens_the_margin_and_never_touches_the_reference():
    policy = tiny_gpt(1)
    reference_before = {k: v.clone() for k, v in policy.state_dict().items()}
    prompts = [[1, 3 + i % 5] for i in range(20)]
    chosen = [[9, 2] for _ in prompts]
    rejected = [[10, 2] for _ in prompts]
    dpo = align.DPO(policy, prompts, chosen, rejected, beta=0.5)
    assert all(not p.requires_grad for p in dpo.reference.parameters())
    result = train(policy, lambda step, rank, world: (dpo.sample_indices(step, 8, rank),), dpo.loss_fn,
                   TrainConfig(steps=30, batch_size=8, lr=1e-2, warmup_steps=0), device="cpu")
    assert result.loss[-1] < math.log(2) - 0.2
    for name, value in dpo.reference.state_dict().items():
        assert torch.equal(value, reference_before[name]), f"reference parameter {name} changed"
    assert any(not torch.equal(v, reference_before[k]) for k, v in policy.state_dict().items())


def test_dpo_rejects_identical_pairs_and_bad_beta():
    policy = tiny_gpt()
    with pytest.raises(ValueError, match="identical chosen and rejected"):
        align.DPO(policy, [[1, 3]], [[4, 2]], [[4, 2]])
    with pytest.raises(ValueError, match="beta must be a positive number"):
        align.DPO(policy, [[1, 3]], [[4, 2]], [[5, 2]], beta=0)
    with pytest.raises(ValueError, match="identical chosen and rejected texts"):
        align.PreferencePair("2+2=", "4", "4")


def test_kl_is_zero_at_the_reference_and_positive_away_from_it():
    policy = tiny_gpt()
    reference = align.freeze(policy)
    logprobs, mask = align.token_logprobs(policy, PROMPTS, RESPONSES)
    reference_logprobs, _ = align.token_logprobs(reference, PROMPTS, RESPONSES)
    assert torch.equal(align.kl_penalty(logprobs, reference_logprobs, mask), torch.zeros(3))
    assert torch.allclose(align.sequence_kl(policy, reference, PROMPTS, RESPONSES), torch.zeros(3), atol=1e-7)
    with torch.no_grad():
        policy.lm_head.weight.add_(0.3 * torch.randn_like(policy.lm_head.weight))
    kl = align.sequence_kl(policy, reference, PROMPTS, RESPONSES)
    assert (kl > 1e-4).all()
    # the per-position KL sum equals the explicit sum over the vocabulary at each response position
    tokens, prompt_lengths, response_lengths = align.pad_right(PROMPTS, RESPONSES)
    with torch.no_grad():
        p = torch.log_softmax(policy(tokens[:, :-1]), -1)
        q = torch.log_softmax(reference(tokens[:, :-1]), -1)
    explicit = [sum(float((p[i, t].exp() * (p[i, t] - q[i, t])).sum())
                    for t in range(len(PROMPTS[i]) - 1, len(PROMPTS[i]) + len(RESPONSES[i]) - 1))
                for i in range(3)]
    torch.testing.assert_close(kl, torch.tensor(explicit), atol=1e-5, rtol=1e-5)


def test_reinforce_gives_masked_tokens_zero_gradient():
    model = tiny_gpt()
    tokens, prompt_lengths, response_lengths = align.pad_right(PROMPTS, RESPONSES)
    logits = model(tokens[:, :-1]).detach().requires_grad_(True)
    log_probs = torch.log_softmax(logits, -1)
    positions, mask = align._response_positions(prompt_lengths, response_lengths, tokens.shape[1] - 1)
    chosen = log_probs.gather(1, positions[..., None].expand(-1, -1, VOCAB)).gather(
        -1, tokens.gather(1, (positions + 1).clamp(max=tokens.shape[1] - 1))[..., None]).squeeze(-1)
    align.reinforce_loss(chosen, mask, torch.tensor([1.0, -2.0, 0.5])).backward()
    is_response = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        is_response[i, len(p) - 1:len(p) + len(r) - 1] = True
    assert torch.count_nonzero(logits.grad[~is_response]) == 0
    assert (logits.grad[is_response].abs().sum(-1) > 0).all()


def test_reinforce_with_a_baseline_solves_a_bandit():
    torch.manual_seed(0)
    arm_rewards = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.2])
    logits = torch.zeros(5, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(300):
        arms = torch.multinomial(torch.softmax(logits, 0), 16, replacement=True)
        rewards = torch.bernoulli(arm_rewards[arms])  # noisy 0/1 rewards
        logprobs = torch.log_softmax(logits, 0)[arms][:, None]  # one "token" per sample
        mask = torch.ones_like(logprobs, dtype=torch.bool)
        loss = align.reinforce_loss(logprobs, mask, rewards - rewards.mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.softmax(logits, 0)[2] > 0.9


def test_policy_gradient_learns_a_token_reward_and_keeps_the_reference():
    policy = tiny_gpt(2)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    target = 7

    def reward_fn(prompts, responses):  # 1 when the first generated token is the target
        return [float(bool(r) and r[0] == target) for r in responses]

    pg = align.PolicyGradient(policy, [[1, 3], [1, 4], [1, 5]], reward_fn,
                              align.PolicyGradientConfig(prompts_per_step=8, n_samples=4, max_new_tokens=2,
                                                         kl_coef=0.01), eos_id=2)
    first = pg.sample(policy, 0)
    initial_rate = (first[0].gather(1, first[1][:, None]).squeeze(1) == target).float().mean().item()
    train(policy, pg.get_batch(policy), pg.loss_fn, TrainConfig(steps=60, batch_size=32, lr=2e-2,
                                                                warmup_steps=0), device="cpu")
    tokens, prompt_lengths, *_ = pg.sample(policy, 10_000)
    final_rate = (tokens.gather(1, prompt_lengths[:, None]).squeeze(1) == target).float().mean().item()
    assert initial_rate < 0.3 and final_rate > 0.8
    for name, value in pg.reference.state_dict().items():
        assert torch.equal(value, before[name]), f"reference parameter {name} changed"
    assert pg.last["kl"] > 0


def test_policy_gradient_optimise_mask_reaches_only_the_flagged_tokens():
    """With optimise flagging the last response token, every other token's log-probability gets exactly
    zero gradient, and the KL penalty sums over the flagged token only."""
    policy = tiny_gpt(3)
    with torch.no_grad():  # move the policy away from its reference, so the KL is not zero
        reference = align.freeze(policy)
        policy.lm_head.weight.add_(0.5 * torch.randn_like(policy.lm_head.weight))

    def last_only(prompt, response):
        return [i == len(response) - 1 for i in range(len(response))]

    config = align.PolicyGradientConfig(prompts_per_step=4, n_samples=3, max_new_tokens=4, kl_coef=0.1)
    rewards = lambda prompts, responses: [float(len(r)) for r in responses]  # noqa: E731
    masked = align.PolicyGradient(reference, [[1, 3], [1, 4]], rewards, config, eos_id=2, optimise=last_only)
    tokens, prompt_lengths, response_lengths, advantages, optimised = masked.sample(policy, 5)
    assert optimised.sum(1).tolist() == [1 if n > 0 else 0 for n in response_lengths.tolist()]
    logprobs, mask, _ = align._logprobs_of_padded(policy, tokens, prompt_lengths, response_lengths)
    leaf = logprobs.detach().requires_grad_(True)
    align.reinforce_loss(leaf, mask & optimised, advantages).backward()
    assert torch.count_nonzero(leaf.grad[~optimised]) == 0
    assert torch.count_nonzero(leaf.grad[optimised]) > 0 or torch.count_nonzero(advantages) == 0
    # the KL penalty of the masked sampler is the full one restricted to the last tokens
    with torch.no_grad():
        reference_logprobs, _, _ = align._logprobs_of_padded(masked.reference, tokens, prompt_lengths,
                                                             response_lengths)
    kl_last = align.kl_penalty(logprobs.detach(), reference_logprobs, mask & optimised)
    assert masked.last["kl"] == pytest.approx(kl_last.mean().item(), abs=1e-6)
    full = align.PolicyGradient(reference, [[1, 3], [1, 4]], rewards, config, eos_id=2)
    assert full.sample(policy, 5)[4].sum() == response_lengths.sum()  # default: every response token
    with pytest.raises(TypeError, match="optimise must be None or callable"):
        align.PolicyGradient(reference, [[1, 3]], rewards, config, eos_id=2, optimise=3)


def test_policy_gradient_use_cache_samples_the_same_batch(monkeypatch):
    """use_cache samples through the key-value cache: with the same seed, the same responses, rewards and
    advantages as the uncached path (the cache changes the cost, not the distribution)."""
    seen = []
    real_generate = align.generate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("use_cache", False))
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(align, "generate", spy)
    policy = tiny_gpt(4)
    rewards = lambda prompts, responses: [float(len(r)) for r in responses]  # noqa: E731
    batches = []
    for use_cache in (False, True):
        config = align.PolicyGradientConfig(prompts_per_step=4, n_samples=3, max_new_tokens=6,
                                            use_cache=use_cache)
        batches.append(align.PolicyGradient(policy, [[1, 3], [1, 4, 5]], rewards, config, eos_id=2,
                                            seed=3).sample(policy, 2))
    assert set(seen) == {False, True}  # the flag reaches the sampler
    for plain, cached in zip(*batches):
        assert torch.allclose(plain.float(), cached.float(), atol=1e-5)


def test_reward_model_recovers_a_planted_preference():
    """Preferred responses contain more 9s: after Bradley-Terry training the reward ranks held-out pairs."""
    generator = torch.Generator().manual_seed(0)

    def pairs(n):
        prompts, chosen, rejected = [], [], []
        for _ in range(n):
            prompt = [1] + torch.randint(3, 9, (2,), generator=generator).tolist()
            a, b = torch.randint(3, 10, (2, 4), generator=generator).tolist()
            if a.count(9) == b.count(9):
                continue
            good, bad = (a, b) if a.count(9) > b.count(9) else (b, a)
            prompts.append(prompt)
            chosen.append(good)
            rejected.append(bad)
        return prompts, chosen, rejected

    train_pairs, test_pairs = pairs(600), pairs(200)
    reward_model = align.RewardModel(GPTConfig(vocab_size=VOCAB, context_length=8, d_model=16, n_layers=1,
                                               n_heads=2))
    initial = align.score(reward_model, test_pairs[0], test_pairs[1])
    assert torch.equal(initial, torch.zeros(len(test_pairs[0])))  # the head starts at zero

    def get_batch(step, rank, world):
        index = torch.randint(len(train_pairs[0]), (32,), generator=torch.Generator().manual_seed(step))
        p = [train_pairs[0][i] for i in index]
        c_idx, c_len = align.reward_batch(p, [train_pairs[1][i] for i in index])
        r_idx, r_len = align.reward_batch(p, [train_pairs[2][i] for i in index])
        return c_idx, c_len, r_idx, r_len

    def loss_fn(model, batch):
        c_idx, c_len, r_idx, r_len = batch
        return align.bradley_terry_loss(model(c_idx, c_len), model(r_idx, r_len))

    train(reward_model, get_batch, loss_fn, TrainConfig(steps=150, batch_size=32, lr=5e-3, warmup_steps=10),
          device="cpu")
    chosen = align.score(reward_model, test_pairs[0], test_pairs[1])
    rejected = align.score(reward_model, test_pairs[0], test_pairs[2])
    assert (chosen > rejected).float().mean() > 0.9


def test_reward_model_from_gpt_copies_the_body():
    gpt = tiny_gpt()
    reward_model = align.RewardModel.from_gpt(gpt)
    for name, value in gpt.state_dict().items():
        assert torch.equal(reward_model.body.state_dict()[name], value)
    with pytest.raises(ValueError, match="lengths must be in"):
        reward_model(torch.ones(2, 3, dtype=torch.long), torch.tensor([0, 3]))


def test_best_of_n_rejection_sampling_and_voting():
    assert align.best_of_n([[0.1, 0.7, 0.7], [3.0, -1.0, 2.0]]) == [1, 0]
    assert align.best_of_n(torch.tensor([[1.0, 2.0]])) == [1]
    assert align.best_of_n_kl(1) == 0.0
    assert align.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError, match="no candidates"):
        align.best_of_n([[]])
    assert align.rejection_sample(["a", "b", "c"], [0.2, 0.9, 0.5], 0.5) == ["b", "c"]
    assert align.majority_vote(["12", "13", "12", None, "13"]) == ("12", 2)  # tie: first seen wins
    assert align.majority_vote([None, None]) == (None, 0)
    assert align.majority_vote(["7", None, "8", "8"]) == ("8", 2)


def test_best_of_n_kl_matches_the_distribution_it_describes():
    """For continuous scores the best-of-n sample's density is n F^(n-1) f; its KL to the base is
    log n - (n-1)/n. Check by numerical integration over u = F(x) in [0, 1]."""
    n = 8
    u = torch.linspace(1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)
    density = n * u ** (n - 1)
    kl = torch.trapezoid(density * torch.log(density), u).item()
    assert kl == pytest.approx(align.best_of_n_kl(n), abs=1e-4)


@pytest.mark.parametrize("field, value, message", [
    ("n_samples", 1, "n_samples must be at least 2 for the leave-one-out baseline"),
    ("kl_coef", -1.0, "kl_coef must be a finite number >= 0"),
    ("kl_coef", float("nan"), "kl_coef must be a finite number >= 0"),
    ("temperature", 0.0, "temperature must be a finite number > 0"),
    ("prompts_per_step", True, "prompts_per_step must be a positive integer, got True"),
    ("max_new_tokens", 0, "max_new_tokens must be a positive integer"),
    ("baseline", "mean", "baseline must be one of 'loo', 'batch'"),
    ("use_cache", 1, "use_cache must be True or False"),
])
def test_policy_gradient_config_checks(field, value, message):
    with pytest.raises(ValueError, match=message):
        align.PolicyGradientConfig(**{field: value})
