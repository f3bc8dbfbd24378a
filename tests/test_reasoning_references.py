"""Hand-computed references and boundary cases for the reasoning chapters' metrics, rewards and losses
(SaySelf, Buffer of Thoughts, DITTO, AgentGym, the survey) and the data split. Each test fails on a
one-line bug that the package's other tests let through (a mutation audit); expected values are worked
out by hand, from a closed form, or by a slow obvious reference written here, never read off the code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from paperlab.utils import cpu_threads


# --------------------------------------------------------------------------------------------------
# helpers: slow, obvious references
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def _logprob_by_hand(model, prompt, continuation) -> float:
    """sum_j log p(c_j | p, c_<j), one sequence at a time, no padding, from the raw logits."""
    ids = list(prompt) + list(continuation)
    logits = model(torch.tensor([ids[:-1]]))[0].double()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[len(prompt) - 1 + j, c] for j, c in enumerate(continuation)))


def _pairwise_auroc(conf, correct) -> float:
    """P(conf of a right answer > conf of a wrong one), ties half: the definition, over all pairs."""
    right = [c for c, k in zip(conf, correct) if k]
    wrong = [c for c, k in zip(conf, correct) if not k]
    wins = sum(1.0 if r > w else 0.5 if r == w else 0.0 for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


# --------------------------------------------------------------------------------------------------
# SaySelf: reward, calibration metrics, parser, Stage 1
# --------------------------------------------------------------------------------------------------
def test_sayself_reward_rejects_confidence_zero():
    """Confidences are 1..10; 0 is malformed input, not a valid stated level (R(0) would be 2(0.5-1)=-1)."""
    from paperlab.sayself.calibration import reward

    for bad in (0, -1, 11):
        with pytest.raises(ValueError, match="1..10"):
            reward(True, bad)
    assert reward(False, 1) == pytest.approx(2 * (0.5 - 0.1 ** 2))  # the lowest valid level is accepted


def test_sayself_reliability_puts_every_stated_level_in_its_own_bin():
    """With 10 bins, level c (confidence c/10) falls in bin c-1; the bin index tolerates floating-point
    noise of ~1e-9 (the implementation's own ``- 1e-9``), so a level computed with rounding error stays in
    its bin instead of slipping into the next one."""
    from paperlab.sayself.calibration import reliability

    for c in range(1, 11):
        expected = [0] * 10
        expected[c - 1] = 1
        assert reliability([c / 10], [1])["count"] == expected, c
    # a level that picked up rounding error on its way (0.1 + 0.2 = 0.30000000000000004) is still level 3
    assert reliability([0.1 + 0.2], [1])["count"] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]


def test_sayself_binned_ece_weights_bins_by_their_counts():
    """ECE = sum_b (n_b / n) |acc_b - conf_b|. By hand: 3 at 0.2 all right (|1 - 0.2| = 0.8), 1 at 0.9
    wrong (|0 - 0.9| = 0.9): 3/4 * 0.8 + 1/4 * 0.9 = 0.825 (an unweighted mean of bins would give 0.85)."""
    from paperlab.sayself.calibration import binned_ece

    assert binned_ece([0.2, 0.2, 0.2, 0.9], [1, 1, 1, 0]) == pytest.approx(0.825)


def test_sayself_binned_ece_matches_a_per_level_reference():
    from paperlab.sayself.calibration import binned_ece

    rng = np.random.default_rng(3)
    levels = rng.choice([2, 3, 3, 3, 6, 7, 7, 10], size=300)
    correct = rng.random(300) < 0.5
    n, ece = len(levels), 0.0
    for c in set(levels.tolist()):  # with 10 bins each level is one bin
        sel = levels == c
        ece += sel.sum() / n * abs(correct[sel].mean() - c / 10)
    assert binned_ece(levels / 10, correct) == pytest.approx(ece, abs=1e-12)


def test_sayself_unbinned_ece_is_the_mean_absolute_error_not_brier():
    """mean |c - corr|: |0.7 - 1| = 0.3 and |0.2 - 0| = 0.2, mean 0.25 (the Brier score would be 0.065)."""
    from paperlab.sayself.calibration import unbinned_ece

    assert unbinned_ece([0.7, 0.2], [1, 0]) == pytest.approx(0.25)


def test_sayself_auroc_ranks_the_confidences_themselves():
    """Right answers at 0.9 and 0.4, wrong ones at 0.3 and 0.2: every right answer is above every wrong
    one, AUROC 1. (Thresholding the confidence at 0.5 first would give 0.75.)"""
    from paperlab.sayself.calibration import auroc

    assert auroc([0.9, 0.4, 0.3, 0.2], [1, 1, 0, 0]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    conf = rng.integers(1, 11, 200) / 10
    correct = rng.random(200) < conf
    assert auroc(conf, correct) == pytest.approx(_pairwise_auroc(conf, correct), abs=1e-12)


def test_sayself_parser_accepts_a_rationale_when_not_required():
    """``reflection`` is optional unless needs_reflection: a full SaySelf response is well formed anyway."""
    from paperlab.sayself.calibration import parse

    text = ("reasoning: Kalo was born in Dalford. answer: Dalford. reflection: i am sure of the birthplace. "
            "confidence: 7")
    parsed = parse(text)
    assert parsed.well_formed and parsed.confidence == 7
    assert parsed.reflection == "i am sure of the birthplace"


def test_sayself_consistency_confidence_rounds_to_nearest():
    """c = clip(round(10 * size / N), 1, 10): 7 of 9 -> round(7.78) = 8; 2 of 3 -> round(6.67) = 7."""
    from paperlab.sayself.method import consistency_confidence

    assert consistency_confidence(7, 9) == 8
    assert consistency_confidence(2, 3) == 7
    assert consistency_confidence(1, 3) == 3  # round(3.33)


def test_sayself_correct_is_normalised_exact_match():
    """Case, surrounding spaces and a final "." do not count (the docstring's normalised match)."""
    from paperlab.sayself.method import correct
    from paperlab.sayself.world import World, WorldConfig

    world = World(WorldConfig(n_people=40, qa_per_kind=5, qa_ood_per_kind=2))
    q = world.question("born_in", world.train_people[0])
    assert correct(q, q.answer) and correct(q, q.answer.lower()) and correct(q, f" {q.answer.upper()}. ")
    other = next(c for c in world.cities if c.lower() != q.answer.lower())
    assert not correct(q, other) and not correct(q, None)


# --------------------------------------------------------------------------------------------------
# Buffer of Thoughts: thresholds are inclusive/exclusive as documented
# --------------------------------------------------------------------------------------------------
def test_bot_retrieval_uses_a_template_exactly_at_the_threshold():
    """Retrieval uses the nearest template when sim >= delta: at delta == sim it is used."""
    from paperlab.bot import buffer

    held = buffer.MetaBuffer(buffer.book_templates(["game24", "word_sorting"]))
    task = "make 24 with the four numbers"
    sim = held.retrieve(task, 0.0).similarity
    assert 0.0 < sim < 1.0
    assert held.retrieve(task, sim).template is not None
    assert held.retrieve(task, min(1.0, np.nextafter(sim, 2.0))).template is None


def test_bot_buffer_manager_refuses_a_candidate_exactly_at_the_novelty_threshold():
    """Admitted only if max sim < novelty: a candidate at exactly the threshold is not novel."""
    from paperlab.bot import buffer

    held = buffer.MetaBuffer(buffer.book_templates(["game24"]))
    candidate = buffer.write_template("game of 24 with four numbers", "another 24")
    sim = held.retrieve(candidate.task, 0.0).similarity
    assert 0.0 < sim < 1.0
    decision = buffer.BufferManager(held, novelty=sim).consider(candidate)
    assert not decision.admitted and len(held) == 1
    assert buffer.BufferManager(held, novelty=float(np.nextafter(sim, 2.0))).consider(candidate).admitted


def test_bot_game24_checker_counts_repeated_numbers():
    """Each number exactly once: with 2 2 3 4, "2 * 3 * 4" = 24 leaves one 2 unused."""
    from paperlab.bot import tasks

    unused_two = tasks.why_wrong_24([2, 2, 3, 4], "2 * 3 * 4")
    assert unused_two is not None and "uses" in unused_two
    assert tasks.why_wrong_24([2, 2, 3, 4], "(2 * 2 + 4) * 3") is None  # every number once: 24
    reused_one = tasks.why_wrong_24([1, 2, 3, 4], "1 * 2 * 3 * 4 * 1")  # 1 used twice
    assert reused_one is not None and "uses" in reused_one


# --------------------------------------------------------------------------------------------------
# DITTO: the loss the loop optimises prefers the chosen response
# --------------------------------------------------------------------------------------------------
def test_ditto_online_dpo_loss_is_the_dpo_formula_for_a_moved_policy():
    """loss = mean -log sigma(beta [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]), with the
    log-probabilities summed by hand from raw logits; policy != reference so the sign matters."""
    from paperlab.ditto import data, methods
    from paperlab.nn import GPT, GPTConfig
    from paperlab.train import TrainConfig

    tok = data.make_tokenizer()
    cast = data.make_cast(data.CastConfig(n_pretrain_authors=12, n_dev_authors=1, n_target_authors=2))

    def tiny(seed):
        torch.manual_seed(seed)
        return GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=48, d_model=16, n_layers=1,
                             n_heads=2)).eval()

    with cpu_threads(1):
        prompts, responses = methods.encode_examples(data.demonstrations(cast.target[0], 3, seed=0), tok)
        reference, policy = tiny(0), tiny(1)
        config = methods.OnlineDPOConfig(train=TrainConfig(steps=2, batch_size=8, lr=1e-3, min_lr_ratio=1.0),
                                         beta=1.0, n_samples=3, resample_every=2, max_new_tokens=6)
        dpo = methods.OnlineDPO(reference, prompts, responses, config, stop_id=tok.encode("|")[0],
                                pad_id=tok.pad_id, seed=0)
        dpo.resample(policy, step=1)
        dpo.batch = dpo.pairs["expert"][:5]
        assert dpo.batch
        loss = dpo.loss_fn(policy, (torch.arange(len(dpo.batch)),)).item()
        expected = []
        for pair in dpo.batch:
            p = prompts[pair.prompt]
            yw, yl = dpo.tokens(pair.chosen), dpo.tokens(pair.rejected)
            margin = (_logprob_by_hand(policy, p, yw) - _logprob_by_hand(reference, p, yw)) \
                - (_logprob_by_hand(policy, p, yl) - _logprob_by_hand(reference, p, yl))
            expected.append(math.log1p(math.exp(-config.beta * margin)))  # -log sigma(x) = log(1 + e^-x)
    assert loss == pytest.approx(sum(expected) / len(expected), abs=1e-4)


# --------------------------------------------------------------------------------------------------
# AgentGym: rewards, the filter's notion of "the same trajectory", the BC loss per token
# --------------------------------------------------------------------------------------------------
def test_agentgym_shop_price_must_be_strictly_under_the_limit():
    """"under 40": a product at exactly 40 misses the price requirement (3 of 4 met: 0.75), and every
    instruction has exactly one product of its description that meets all four."""
    from paperlab.agentgym import shop
    from paperlab.agentgym.envs import make_env

    env = make_env("shop")
    env.reset(options={"instruction_id": 0})
    env.task = {"colour": "red", "material": "wool", "kind": "hat", "limit": 40}
    at_limit = {"colour": "red", "material": "wool", "kind": "hat", "price": 40}
    assert env.reward(at_limit) == 0.75
    assert env.reward({**at_limit, "price": 35}) == 1.0
    for i in range(env.n_train + env.n_test):
        env.reset(options={"instruction_id": i})
        perfect = [p for p in shop.PRODUCTS if env.reward(p) == 1.0]
        assert len(perfect) == 1, (i, env.task)


def test_agentgym_filter_keeps_the_same_replies_on_different_instructions():
    """The same replies on two instructions are two trajectories (the key is the episode and the replies)."""
    from paperlab.agentgym.agent import Trajectory, Turn
    from paperlab.agentgym.evol import filter_trajectories

    def trajectory(instruction_id, seed=0):
        turn = Turn("Thought: a. Action: get sand", "get sand", "ok.", 1.0)
        return Trajectory("craft", instruction_id, seed, "first.", [turn], 1.0, "done")

    kept = filter_trajectories([trajectory(1), trajectory(2), trajectory(2, seed=5), trajectory(2)])
    assert [(t.instruction_id, t.seed) for t in kept] == [(1, 0), (2, 0), (2, 5)]


def test_agentgym_conversation_loss_is_per_agent_token_whatever_the_batch_size():
    """Mean loss per agent token over all conversations, summed by hand; batching must not change it."""
    from paperlab.agentgym.agent import agent_tokenizer, encode_conversation, expert_trajectory
    from paperlab.agentgym.evol import AgentModelConfig, conversation_loss, initial_model

    tok = agent_tokenizer()
    trajectories = [expert_trajectory("shop", 0), expert_trajectory("grid", 5), expert_trajectory("craft", 3)]
    conversations = [encode_conversation(tok, t) for t in trajectories]
    model = initial_model(AgentModelConfig(d_model=16, n_layers=1, n_heads=2), tok.vocab_size, 0).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large random weights: per-token losses far from the uniform log V
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    total, count, means = 0.0, 0, []
    with torch.no_grad():
        for conversation in conversations:
            tokens = [t for ids, _ in conversation for t in ids]
            target = [flag for ids, flag in conversation for _ in ids]
            logp = torch.log_softmax(model(torch.tensor([tokens[:-1]]))[0].double(), -1)
            losses = [-float(logp[t - 1, tokens[t]]) for t in range(1, len(tokens)) if target[t]]
            total, count = total + sum(losses), count + len(losses)
            means.append(sum(losses) / len(losses))
    # conversations of different sizes and losses: a mean of per-batch means would differ from this
    assert len({len(c) for c in conversations}) > 1 and max(means) - min(means) > 0.05
    with cpu_threads(1):
        for batch_size in (1, 2, 256):
            assert conversation_loss(model, conversations, pad_id=tok.pad_id, batch_size=batch_size) == \
                pytest.approx(total / count, rel=1e-5), batch_size


# --------------------------------------------------------------------------------------------------
# Survey: gold reward, implicit reward, pair accuracy, best-of-n ties
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def addition():
    from paperlab.survey.task import AdditionTask, TaskConfig

    return AdditionTask(TaskConfig(n_demos=50, n_transfer=40, n_unlabelled=30, n_test=20), seed=3)


def test_survey_gold_reward_accepts_the_widest_sum(addition):
    """Two-digit operands sum to at most 198, three digits: 99 + 99 = 198 is right."""
    from paperlab.survey.task import Question

    assert addition.parse("198") == 198
    assert addition.gold(Question(99, 99), "198") == 1.0
    assert addition.gold(Question(50, 50), "100") == 1.0


def test_survey_implicit_reward_is_beta_log_ratio_by_hand(addition):
    """r = beta (log pi(y|x) - log pi_ref(y|x)): sign and scale against log-probabilities summed by hand."""
    from paperlab.nn import GPT, GPTConfig
    from paperlab.survey import experiments as E

    def tiny(seed):
        torch.manual_seed(seed)
        return GPT(GPTConfig(vocab_size=addition.tokenizer.vocab_size, context_length=addition.context_length,
                             d_model=16, n_layers=1, n_heads=2)).eval()

    policy, reference = tiny(1), tiny(0)
    questions = addition.test[:4]
    prompts = [addition.prompt_ids(q) for q in questions]
    responses = [addition.answer_ids(q.answer) for q in questions]
    got = E.implicit_reward(policy, reference, 0.5)(prompts, responses)
    expected = [0.5 * (_logprob_by_hand(policy, p, r) - _logprob_by_hand(reference, p, r))
                for p, r in zip(prompts, responses)]
    assert got == pytest.approx(expected, abs=1e-4)
    assert any(abs(e) > 1e-2 for e in expected)  # the two models differ: the sign is tested


def test_survey_pair_accuracy_counts_ties_as_half(addition):
    from paperlab.survey import experiments as E
    from paperlab.survey.task import Question

    triples = [(Question(1, 2), addition.answer_ids("3"), addition.answer_ids("4")),
               (Question(5, 5), addition.answer_ids("10"), addition.answer_ids("9"))]

    def constant(prompts, responses):
        return [0.0] * len(responses)

    def length(prompts, responses):  # ranks "10" over "9", ties "3" with "4"
        return [float(len(r)) for r in responses]

    assert E._pair_accuracy(constant, addition, triples) == pytest.approx(0.5)
    assert E._pair_accuracy(length, addition, triples) == pytest.approx((0.5 + 1.0) / 2)


def test_survey_best_of_n_ties_go_to_the_first_sample():
    """Equal proxy scores: the first sample of the block is chosen (the docstring's rule)."""
    from paperlab.survey import experiments as E

    gold = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    proxy = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    curve = E.best_of_n_curve(gold, proxy, [2, 4])
    assert curve["gold"] == [pytest.approx(0.5), pytest.approx(0.0)]  # blocks pick 0 and 2; n=4 picks 0


# --------------------------------------------------------------------------------------------------
# data: split sizes
# --------------------------------------------------------------------------------------------------
def test_split_train_val_rounds_the_validation_size():
    """round(len * val_fraction): 9 * 0.3 = 2.7 -> 3 validation items (truncation would give 2)."""
    from paperlab.data import split_train_val

    train, val = split_train_val(list(range(9)), 0.3, seed=0)
    assert len(val) == 3 and sorted(train + val) == list(range(9))
    train_t, val_t = split_train_val(torch.arange(9), 0.3, shuffle=False)
    assert val_t.tolist() == [6, 7, 8] and train_t.tolist() == list(range(6))
