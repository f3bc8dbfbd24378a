"""The survey chapter's experiments: one demo per source of alignment signal, on the addition task.

Per seed (:func:`seed_run`, cached; :func:`run_seeds` runs the seeds on both cores), starting from the
base policy of :func:`paperlab.survey.models.base_policy` (SFT on the demonstrations):

1. **inductive bias**, self-consistency: accuracy of the majority vote over ``k`` sampled answers,
   sampled through :class:`paperlab.llm.TinyLM` (so the cost in generated tokens is counted);
2. **mechanism**, the generator-verifier gap: how well the policy checks answers (its own sampled
   answers, and near misses) against how well it produces them. Two checkers: the policy's own
   probability of the candidate (no new labels), and the policy fine-tuned to answer ``"a+b=c?"`` on
   as many labelled checks as it had demonstrations; and a control that checks nothing: keep a sample
   when it equals the policy's greedy answer;
3. **behaviour imitation**, weak-to-strong: the base fine-tuned on a weak supervisor's answers to the
   transfer questions, against the supervisor and against the same fine-tuning on true answers;
4. **model feedback**: preference pairs of the policy's own answers (one right, one wrong, labelled by
   the gold checker); two reward models trained on them with the Bradley-Terry loss (a scalar head on
   the transformer, and DPO's implicit reward ``beta log pi / pi_ref``); best-of-n against each; policy
   gradient against the implicit reward; the DPO policy itself. Each traced as gold reward against KL
   from the base policy. Best-of-n is also run against the untrained base policy's log-likelihood, the
   control a learnt reward has to beat;
5. **environment feedback**: the same policy gradient with the environment's checker as the reward.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from paperlab import align, cache
from paperlab.config import (
    check_int_tuple,
    check_ints,
    check_number_tuple,
    check_numbers,
    check_that,
    check_type,
)
from paperlab.experiments import Experiment, over_seeds
from paperlab.llm import TinyLM
from paperlab.nn import generate, sequence_logprob
from paperlab.survey.models import (
    BaseConfig,
    ModelConfig,
    answer_logprob,
    base_policy,
    check_examples,
    greedy_answers,
    make_gpt,
    sample_answers,
    sft,
    train_reward_model,
    verifier_probability,
)
from paperlab.survey.task import AdditionTask, Question, TaskConfig
from paperlab.train import TrainConfig, auto_device, check_convergence_evaluations, seed_everything, train

__all__ = ["SurveyConfig", "CONFIGS", "check_runnable", "seed_run", "run_seeds", "run", "EXPERIMENT",
           "vote_accuracy", "best_of_n_curve", "environment_reward", "balanced_accuracy", "equals_greedy",
           "likelihood_reward"]


@dataclass(frozen=True)
class SurveyConfig:
    """Everything the chapter's numbers depend on (and so the cache key)."""

    base: BaseConfig = field(default_factory=BaseConfig)
    seeds: tuple[int, ...] = (0, 1, 2)
    # 1. self-consistency
    n_vote_questions: int = 300
    vote_samples: int = 32
    vote_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    # 2. checking
    checker: TrainConfig = field(default_factory=lambda: TrainConfig(steps=400, batch_size=64, lr=1e-3,
                                                                     warmup_steps=20))
    n_test_checks: int = 500
    # 3. weak-to-strong
    weak_model: ModelConfig = field(default_factory=lambda: ModelConfig(d_model=32, n_layers=2, n_heads=2))
    weak: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1200, batch_size=64, lr=3e-3,
                                                                  warmup_steps=50))
    # fine-tuning on the transfer set; its steps are set from transfer_epochs
    transfer: TrainConfig = field(default_factory=lambda: TrainConfig(steps=100, batch_size=64, lr=1e-3,
                                                                      warmup_steps=5))
    transfer_epochs: tuple[int, ...] = (2, 10)  # passes over the transfer set; 2 is Burns et al.'s default
    # 4. model feedback
    pair_samples: int = 4  # answers sampled per unlabelled prompt to find (right, wrong) pairs
    reward: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, batch_size=64, lr=1e-3,
                                                                    warmup_steps=20))
    bon_samples: int = 64
    n_bon_questions: int = 200
    dpo_betas: tuple[float, ...] = (0.5, 0.1)  # the first one's implicit reward is the learnt reward model
    dpo: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, batch_size=32, lr=1e-4,
                                                                 warmup_steps=10, eval_every=20))
    policy_gradient: align.PolicyGradientConfig = field(
        default_factory=lambda: align.PolicyGradientConfig(prompts_per_step=16, n_samples=4, max_new_tokens=4,
                                                           kl_coef=0.02))
    rl: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, batch_size=64, lr=3e-4,
                                                                warmup_steps=30, eval_every=30))
    n_eval_questions: int = 200
    eval_samples: int = 4
    # smallest effect that counts for every accuracy claim (declared before computing)
    min_accuracy_gain: float = 0.02

    def __post_init__(self) -> None:
        check_type(self, "base", BaseConfig)
        check_type(self, "weak_model", ModelConfig)
        check_type(self, "policy_gradient", align.PolicyGradientConfig)
        for name in ("checker", "weak", "transfer", "reward", "dpo", "rl"):
            check_type(self, name, TrainConfig)
        check_int_tuple(self, "seeds", low=0)
        n_test = self.base.task.n_test
        check_ints(self, "n_vote_questions", "n_test_checks", "n_bon_questions", "n_eval_questions",
                   high=n_test)
        check_ints(self, "vote_samples", "bon_samples", "eval_samples")
        check_ints(self, "pair_samples", low=2)
        check_int_tuple(self, "vote_ks", high=self.vote_samples)
        check_int_tuple(self, "transfer_epochs")
        check_number_tuple(self, "dpo_betas", low=0.0, open_low=True)
        check_numbers(self, "min_accuracy_gain", low=0.0, open_low=True)


def check_runnable(config: SurveyConfig) -> None:
    """What :func:`run` needs beyond a valid config: >= 3 seeds (the scorecard's intervals) and >= 5
    evaluations in each traced run (DPO, policy gradient), for the curves and the convergence check. A
    ValueError before any work; ``python -m paperlab run`` calls it up front."""
    check_that(config, len(config.seeds) >= 3, "seeds", "a tuple of >= 3 seeds (95% intervals over seeds)")
    for name in ("dpo", "rl"):
        check_convergence_evaluations(config, name, getattr(config, name))


CONFIGS = {
    "fast": SurveyConfig(
        base=BaseConfig(task=TaskConfig(n_demos=500, n_transfer=200, n_unlabelled=400, n_test=200),
                        model=ModelConfig(d_model=64, n_layers=2, n_heads=4),
                        train=TrainConfig(steps=300, batch_size=64, lr=3e-3, warmup_steps=30, eval_every=50),
                        n_val=128),
        n_vote_questions=60, vote_samples=8, vote_ks=(1, 2, 4, 8),
        checker=TrainConfig(steps=30, batch_size=32, lr=1e-3, warmup_steps=5), n_test_checks=60,
        weak=TrainConfig(steps=60, batch_size=32, lr=3e-3, warmup_steps=5),
        transfer=TrainConfig(steps=100, batch_size=32, lr=1e-3, warmup_steps=2), transfer_epochs=(2, 4),
        reward=TrainConfig(steps=30, batch_size=32, lr=1e-3, warmup_steps=5),
        bon_samples=8, n_bon_questions=40,
        dpo=TrainConfig(steps=30, batch_size=16, lr=1e-4, warmup_steps=5, eval_every=10),
        policy_gradient=align.PolicyGradientConfig(prompts_per_step=8, n_samples=4, max_new_tokens=4,
                                                   kl_coef=0.02),
        rl=TrainConfig(steps=30, batch_size=32, lr=3e-4, warmup_steps=5, eval_every=10),
        n_eval_questions=40, eval_samples=2,
    ),
    "full": SurveyConfig(),
}


# --------------------------------------------------------------------------------------------------
# Small measurements
# --------------------------------------------------------------------------------------------------
def balanced_accuracy(accepted: torch.Tensor, correct: torch.Tensor) -> float | None:
    """Mean of the acceptance rate of correct candidates and the rejection rate of wrong ones: 0.5 for a
    checker that ignores the candidate, whatever the share of correct ones. None (undefined) when all
    candidates are correct or all are wrong."""
    accepted, correct = accepted.bool(), correct.bool()
    if correct.all() or not correct.any():
        return None
    accept_right = (accepted & correct).sum() / correct.sum()
    reject_wrong = (~accepted & ~correct).sum() / (~correct).sum()
    return 0.5 * (accept_right + reject_wrong).item()


def vote_accuracy(task: AdditionTask, questions: Sequence[Question], samples: Sequence[Sequence[str]],
                  k: int) -> float:
    """Accuracy of the majority vote over ``k`` samples, averaged over the disjoint blocks of ``k``
    samples each question has (``len(samples[i]) // k`` of them), so that every ``k`` uses all samples."""
    correct, total = 0.0, 0
    for question, answers in zip(questions, samples):
        blocks = len(answers) // k
        for block in range(blocks):
            vote, _ = align.majority_vote([task.parse(a) for a in answers[block * k:(block + 1) * k]])
            correct += (vote == question.a + question.b) / blocks
        total += 1
    return correct / total


def best_of_n_curve(gold: torch.Tensor, proxy: torch.Tensor, ns: Sequence[int]) -> dict:
    """Best-of-n by ``proxy`` scores for each ``n``: mean gold and proxy of the chosen sample.

    gold, proxy: (questions, samples). Each question's samples are cut into ``samples // n`` disjoint
    blocks; the best of each block is chosen and the results averaged (an unbiased estimate of best-of-n
    from one set of samples). Ties in the proxy go to the first sample.
    """
    out = {"n": [], "gold": [], "proxy": [], "kl": []}
    questions, samples = gold.shape
    for n in ns:
        blocks = samples // n
        g = gold[:, : blocks * n].reshape(questions, blocks, n)
        p = proxy[:, : blocks * n].reshape(questions, blocks, n)
        best = torch.tensor([[align.best_of_n([row])[0] for row in block] for block in p.tolist()])
        out["n"].append(n)
        out["gold"].append(g.gather(2, best[..., None]).mean().item())
        out["proxy"].append(p.gather(2, best[..., None]).mean().item())
        out["kl"].append(align.best_of_n_kl(n))
    return out


def environment_reward(task: AdditionTask):
    """The environment's reward: it reads the question back from the prompt and checks the answer
    (1 if exactly the sum, else 0) -- a calculator, not a model."""

    def reward(prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        out = []
        for prompt, response in zip(prompts, responses):
            a, b = task.tokenizer.decode(prompt).rstrip("=").split("+")
            out.append(task.gold(Question(int(a), int(b)), task.decode(response)))
        return out

    return reward


def equals_greedy(samples: Sequence[Sequence[str]], greedy: Sequence[str]) -> torch.Tensor:
    """The control filter that checks nothing: accept a sample iff it is the policy's greedy answer to its
    question. Flat over ``samples`` (questions x samples per question), like the checkers' decisions."""
    return torch.tensor([a == g for answers, g in zip(samples, greedy, strict=True) for a in answers],
                        dtype=torch.bool)


def likelihood_reward(reference, pad_id: int = 0):
    """The untrained control reward: the reference policy's log-probability of the whole answer."""

    @torch.no_grad()
    def reward(prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        return sequence_logprob(reference, prompts, responses, pad_id=pad_id).tolist()

    return reward


def _checked(accepted: torch.Tensor, correct: torch.Tensor) -> dict:
    """What a checker did to a set of answers: the share of right answers it accepted and of wrong ones
    it rejected, its balanced accuracy (the mean of the two), the share it accepted and the accuracy of
    the accepted answers (None where undefined)."""
    accepted, correct = accepted.bool(), correct.bool()
    right, wrong, kept = int(correct.sum()), int((~correct).sum()), int(accepted.sum())
    return {"accepts_right": (accepted & correct).sum().item() / right if right else None,
            "rejects_wrong": (~accepted & ~correct).sum().item() / wrong if wrong else None,
            "balanced": balanced_accuracy(accepted, correct),
            "accepted_share": kept / len(accepted),
            "accepted_accuracy": (accepted & correct).sum().item() / kept if kept else None}


def greedy_accuracy(model, task: AdditionTask, questions: Sequence[Question]) -> float:
    """Share of ``questions`` the model answers exactly right at temperature 0."""
    answers = greedy_answers(model, task, questions)
    return sum(task.gold(q, a) for q, a in zip(questions, answers)) / len(questions)


def _policy_eval(task: AdditionTask, questions: Sequence[Question], reference, proxy: Callable | None,
                 n_samples: int, seed: int):
    """eval_fn tracing a fine-tuned policy on fixed questions with a fixed sampling seed: mean gold reward
    and proxy reward of its samples (temperature 1) and KL(policy || reference) over whole answers."""
    prompts = [task.prompt_ids(q) for q in questions for _ in range(n_samples)]
    truth = [q for q in questions for _ in range(n_samples)]

    def eval_fn(policy) -> dict:
        device = next(policy.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        responses = generate(policy, prompts, task.max_answer_tokens, eos_id=task.tokenizer.eos_id,
                             generator=generator)
        gold = [task.gold(q, task.decode(r)) for q, r in zip(truth, responses)]
        kl = align.sequence_kl(policy, reference, prompts, responses)
        out = {"gold": sum(gold) / len(gold), "kl": kl.mean().item()}
        if proxy is not None:
            out["proxy"] = sum(proxy(prompts, responses)) / len(responses)
        return out

    return eval_fn


def _curve(history, start: dict) -> dict:
    """The eval trace as lists, with the base policy's point (step 0) first."""
    rows = [{"step": 0, **start}] + history.evals
    return {key: [row[key] for row in rows] for key in rows[-1]}


def implicit_reward(policy, reference, beta: float, pad_id: int = 0):
    """DPO's implicit reward ``r(x, y) = beta * log(pi(y|x) / pi_ref(y|x))`` as a reward function of
    token ids (Rafailov et al. 2023, eq. 5 up to a term that depends on x only)."""

    @torch.no_grad()
    def reward(prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        ratio = sequence_logprob(policy, prompts, responses, pad_id=pad_id) \
            - sequence_logprob(reference, prompts, responses, pad_id=pad_id)
        return (beta * ratio).tolist()

    return reward


def _pairs_of_own_answers(task, questions, texts, ids, rng) -> list[tuple[Question, list[int], list[int]]]:
    """(question, chosen ids, rejected ids): a right and a wrong answer of the policy to the same question."""
    triples = []
    for q, answers, tokens in zip(questions, texts, ids):
        right = [i for i, a in enumerate(answers) if task.gold(q, a)]
        wrong = [i for i, a in enumerate(answers) if not task.gold(q, a)]
        if right and wrong:
            triples.append((q, tokens[right[0]], tokens[wrong[rng.randrange(len(wrong))]]))
    return triples


def _pair_accuracy(score: Callable, task, triples) -> float:
    """Share of (right, wrong) pairs a reward function ranks right above wrong (ties count half)."""
    prompts = [task.prompt_ids(q) for q, _, _ in triples]
    chosen = torch.tensor(score(prompts, [c for _, c, _ in triples]))
    rejected = torch.tensor(score(prompts, [r for _, _, r in triples]))
    return ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean().item()


# --------------------------------------------------------------------------------------------------
# One seed, one stage at a time
# --------------------------------------------------------------------------------------------------
@dataclass
class _Seed:
    """What every stage of one seed shares: the config, the base policy and its task, the device and one
    sampling generator (used in stage order, so each seed's results are reproducible)."""

    config: SurveyConfig
    seed: int
    base: torch.nn.Module
    task: AdditionTask
    device: torch.device
    generator: torch.Generator

    def tuned(self, train_config: TrainConfig, **changes) -> TrainConfig:
        """A training config with this seed (and any other changes)."""
        return replace(train_config, seed=self.seed, **changes)


def _self_consistency(s: _Seed, greedy: list[str]) -> tuple[dict, list[list[str]]]:
    """1. Majority votes over k samples, drawn through the LLM interface (which counts the tokens)."""
    c, task = s.config, s.task
    questions = task.test[: c.n_vote_questions]
    tiny = TinyLM(s.base, task.tokenizer, seed=s.seed)
    completions = tiny.complete([q.prompt for q in questions], n=c.vote_samples, temperature=1.0,
                                max_tokens=task.max_answer_tokens)
    samples = [[task.decode(done.tokens) for done in group] for group in completions]
    votes = [align.majority_vote(answers)[0] for answers in samples]
    greedy = greedy[: len(questions)]
    return {"k": list(c.vote_ks),
            "accuracy": [vote_accuracy(task, questions, samples, k) for k in c.vote_ks],
            "greedy": sum(task.gold(q, a) for q, a in zip(questions, greedy)) / len(questions),
            "vote_equals_greedy": sum(v == g for v, g in zip(votes, greedy)) / len(questions),
            "tokens_per_sample": tiny.usage.generated_tokens / (len(questions) * c.vote_samples)}, samples


def _generator_verifier_gap(s: _Seed, samples: list[list[str]], greedy: list[str]) -> dict:
    """2. Two checkers (the policy's own probability > 1/2, and the policy fine-tuned on as many labelled
    checks as it had demonstrations) on all of the policy's own samples and on balanced near misses; and
    the control that checks nothing (keep a sample iff it equals the greedy answer) on the same samples."""
    c, task = s.config, s.task
    questions = [q for q in task.test[: c.n_vote_questions] for _ in range(c.vote_samples)]
    own = [a for answers in samples for a in answers]
    correct = torch.tensor([task.gold(q, a) for q, a in zip(questions, own)]).bool()
    check_questions = task.test[: c.n_test_checks]
    _, candidates, truth = check_examples(task, check_questions, random.Random(s.seed + 2))
    half = torch.log(torch.tensor(0.5))
    own_likely = answer_logprob(s.base, task, questions, own) > half
    likelihood = {"near_misses": balanced_accuracy(
        answer_logprob(s.base, task, check_questions, candidates) > half, torch.tensor(truth)),
        **_checked(own_likely, correct)}
    control = equals_greedy(samples, greedy[: len(samples)])
    checker = copy.deepcopy(s.base).train()
    labelled, _, _ = check_examples(task, task.transfer[: len(task.demos)], random.Random(s.seed + 1))
    sft(checker, labelled, s.tuned(c.checker), device=s.device, desc="checker")
    checker.eval()
    trained = {"near_misses": balanced_accuracy(
        verifier_probability(checker, task, check_questions, candidates) > 0.5, torch.tensor(truth)),
        **_checked(verifier_probability(checker, task, questions, own) > 0.5, correct)}
    return {"sample_accuracy": correct.float().mean().item(), "likelihood_checker": likelihood,
            "trained_checker": trained, "greedy_filter": _checked(control, correct),
            "likelihood_agrees_with_greedy_filter": (own_likely == control).float().mean().item(),
            "n_labelled_checks": len(labelled)}


def _weak_to_strong(s: _Seed) -> dict:
    """3. The strong base fine-tuned on a weak supervisor's answers to the transfer questions (student) or
    on their true answers (ceiling), for each number of passes."""
    c, task = s.config, s.task
    seed_everything(s.seed + 4)
    weak = make_gpt(c.weak_model, task)
    demos = [(task.prompt_ids(q), task.answer_ids(q.answer)) for q in task.demos]
    sft(weak, demos, s.tuned(c.weak), device=s.device, desc="weak supervisor")
    weak.eval()
    weak_answers = greedy_answers(weak, task, task.transfer)
    out: dict = {"epochs": list(c.transfer_epochs), "student": [], "ceiling": []}
    for epochs in c.transfer_epochs:
        steps = max(1, round(epochs * len(task.transfer) / c.transfer.batch_size))
        for name, answers in (("student", weak_answers), ("ceiling", [q.answer for q in task.transfer])):
            model = copy.deepcopy(s.base).train()
            examples = [(task.prompt_ids(q), task.answer_ids(a)) for q, a in zip(task.transfer, answers)]
            sft(model, examples, s.tuned(c.transfer, steps=steps), device=s.device, desc=name)
            out[name].append(greedy_accuracy(model.eval(), task, task.test))
    out["weak"] = greedy_accuracy(weak, task, task.test)
    out["weak_label_accuracy"] = sum(task.gold(q, a) for q, a in zip(task.transfer, weak_answers)) \
        / len(task.transfer)
    return out


def _reward_models(s: _Seed, reference, curves: dict) -> tuple[dict, Callable, Callable, Callable]:
    """4. Pairs of the policy's own answers (right, wrong), a scalar-head reward model and DPO (one run
    per beta, traced into ``curves``) on them. Returns the pair accuracies, the two learnt rewards and the
    untrained control (the base policy's log-likelihood)."""
    c, task = s.config, s.task
    rng = random.Random(s.seed)
    texts, ids = sample_answers(s.base, task, task.unlabelled, c.pair_samples, s.generator)
    triples = _pairs_of_own_answers(task, task.unlabelled, texts, ids, rng)
    held_texts, held_ids = sample_answers(s.base, task, task.test, c.pair_samples, s.generator)
    held_out = _pairs_of_own_answers(task, task.test, held_texts, held_ids, rng)
    scalar_model, _ = train_reward_model(s.base, task, triples, s.tuned(c.reward), s.device)

    def scalar_reward(prompts, responses):
        return align.score(scalar_model, prompts, responses).tolist()

    gold_only = _policy_eval(task, task.test[: c.n_eval_questions], reference, None, c.eval_samples, s.seed)
    start, dpo_policies = gold_only(s.base), []
    for beta in c.dpo_betas:
        policy = copy.deepcopy(s.base).train()
        dpo = align.DPO(s.base, [task.prompt_ids(q) for q, _, _ in triples], [t[1] for t in triples],
                        [t[2] for t in triples], beta=beta, pad_id=task.tokenizer.pad_id)

        def dpo_batch(step: int, rank: int, world_size: int, dpo=dpo) -> tuple:
            return (dpo.sample_indices(step, c.dpo.batch_size, rank),)

        history = train(policy, dpo_batch, dpo.loss_fn, s.tuned(c.dpo), eval_fn=gold_only, device=s.device,
                        desc=f"DPO beta={beta}")
        curves[f"dpo (beta={beta})"] = _curve(history, start)
        dpo_policies.append(align.freeze(policy))
    learnt_reward = implicit_reward(dpo_policies[0], reference, c.dpo_betas[0], task.tokenizer.pad_id)

    likelihood_score = likelihood_reward(reference, task.tokenizer.pad_id)
    scores = {"scalar head": scalar_reward, "implicit (DPO)": learnt_reward,
              "base likelihood (untrained)": likelihood_score}
    return ({"pairs": len(triples), "prompts": len(task.unlabelled), "held_out_pairs": len(held_out),
             "pair_accuracy": {name: _pair_accuracy(fn, task, held_out) for name, fn in scores.items()}},
            learnt_reward, scalar_reward, likelihood_score)


def _best_of_n(s: _Seed, rewards: dict[str, Callable]) -> dict:
    """4. Best-of-n against each reward (the learnt ones and the untrained control), on ``bon_samples``
    samples per test question."""
    c, task = s.config, s.task
    questions = task.test[: c.n_bon_questions]
    texts, ids = sample_answers(s.base, task, questions, c.bon_samples, s.generator)
    prompts = [task.prompt_ids(q) for q in questions for _ in range(c.bon_samples)]
    flat = [i for group in ids for i in group]
    gold = torch.tensor([[task.gold(q, a) for a in answers] for q, answers in zip(questions, texts)])
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= c.bon_samples]
    return {name: best_of_n_curve(gold, torch.tensor(fn(prompts, flat)).view(len(questions), -1), ns)
            for name, fn in rewards.items()}


def _policy_gradient(s: _Seed, reference, reward_fn: Callable, proxy: Callable, name: str) -> dict:
    """4b and 5. REINFORCE with the KL penalty against ``reward_fn``, traced (gold, proxy, KL)."""
    c, task = s.config, s.task
    eval_fn = _policy_eval(task, task.test[: c.n_eval_questions], reference, proxy, c.eval_samples, s.seed)
    policy = copy.deepcopy(s.base).train()
    tok = task.tokenizer
    method = align.PolicyGradient(s.base, [task.prompt_ids(q) for q in task.unlabelled], reward_fn,
                                  c.policy_gradient, eos_id=tok.eos_id, pad_id=tok.pad_id, seed=s.seed)
    history = train(policy, method.get_batch(policy), method.loss_fn, s.tuned(c.rl), eval_fn=eval_fn,
                    device=s.device, desc=name)
    return _curve(history, eval_fn(s.base))


def _compute_seed(config: SurveyConfig, seed: int, device) -> dict:
    """Every stage for one seed, in order; ``seconds`` records each stage's wall-clock time."""
    device = auto_device(device)
    seconds, cpu_seconds, clock, cpu_clock = {}, {}, time.perf_counter(), time.process_time()

    def lap(name: str) -> None:  # wall-clock and CPU time of each stage (CPU time is less load-dependent)
        nonlocal clock, cpu_clock
        seconds[name], clock = time.perf_counter() - clock, time.perf_counter()
        cpu_seconds[name], cpu_clock = time.process_time() - cpu_clock, time.process_time()

    base, task, history = base_policy(config.base, seed, device)
    lap("base policy (cached separately)")
    s = _Seed(config, seed, base, task, device, torch.Generator(device=device).manual_seed(seed))

    steps, val_loss = history.eval_history("val_loss")
    convergence = history.convergence("val_loss")
    greedy = greedy_answers(base, task, task.test)  # the policy's answers at temperature 0
    out: dict = {"seed": seed, "base": {
        "steps": steps, "val_loss": val_loss, **convergence.record(), "seconds": history.seconds,
        "greedy_accuracy": sum(task.gold(q, a) for q, a in zip(task.test, greedy)) / len(task.test),
        "train_accuracy": greedy_accuracy(base, task, task.demos)}}
    out["vote"], samples = _self_consistency(s, greedy)
    lap("self-consistency")
    out["gap"] = {"generation_accuracy": out["vote"]["greedy"], **_generator_verifier_gap(s, samples, greedy)}
    lap("generator-verifier gap")
    out["w2s"] = {"strong_before": out["base"]["greedy_accuracy"], **_weak_to_strong(s)}
    lap("weak-to-strong")
    reference, curves = align.freeze(base), {}
    out["reward_models"], learnt_reward, scalar_reward, likelihood = _reward_models(s, reference, curves)
    out["best_of_n"] = _best_of_n(s, {"implicit (DPO)": learnt_reward, "scalar head": scalar_reward,
                                      "base likelihood (untrained)": likelihood})
    lap("reward models, DPO, best-of-n")
    curves["rl_reward_model"] = _policy_gradient(s, reference, learnt_reward, learnt_reward,
                                                 "rl_reward_model")
    lap("policy gradient, reward model")
    curves["rl_environment"] = _policy_gradient(s, reference, environment_reward(task), learnt_reward,
                                                "rl_environment")
    lap("policy gradient, environment")
    out["curves"], out["seconds"], out["cpu_seconds"] = curves, seconds, cpu_seconds
    return out


def seed_run(seed: int, config: SurveyConfig, device: str | None = None) -> dict:
    """Every experiment of one seed (cached by config, seed and code)."""
    return cache.cached("survey-seed", config, lambda: _compute_seed(config, seed, device), seed=seed)


def run_seeds(config: SurveyConfig, device: str | None = None) -> list[dict]:
    """:func:`seed_run` for every seed of the config, side by side on the CPU cores (on a GPU, one after
    the other in this process: worker processes would each start CUDA). The device is checked first."""
    check_runnable(config)
    device = None if device is None else str(auto_device(device))
    workers = 1 if device is not None and device.startswith("cuda") else None
    return over_seeds(seed_run, config.seeds, config, device, workers=workers, desc="survey seeds")


def run(config: SurveyConfig, device: str | None = None) -> dict:
    """For ``python -m paperlab run survey``: every seed's results."""
    return {"seeds": run_seeds(config, device)}


EXPERIMENT = Experiment(name="survey", chapter="book/07-alignment.md", configs=CONFIGS, run=run,
                        check=check_runnable)
