"""The chapter's tiny models and how each is trained: the base policy (SFT on the demonstrations), a
fine-tuned checker, the weak supervisor, and the reward model. Every trainer is a few lines around
:func:`paperlab.train.train` with a loss from :mod:`paperlab.align`.

The base policy is the expensive part shared by every experiment, so :func:`base_policy` caches its
weights (keyed on this module's code, not on the experiments': editing an experiment does not retrain it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from paperlab import align, cache
from paperlab.config import check_ints, check_type
from paperlab.nn import GPT, GPTConfig, generate, sequence_logprob
from paperlab.survey.task import AdditionTask, Question, TaskConfig
from paperlab.train import TrainConfig, TrainResult, batch_seed, seed_everything, train

__all__ = ["ModelConfig", "BaseConfig", "make_gpt", "sft", "base_policy", "greedy_answers",
           "sample_answers", "check_examples", "verifier_probability", "answer_logprob", "train_reward_model"]


@dataclass(frozen=True)
class ModelConfig:
    """Size of a tiny GPT."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4

    def __post_init__(self) -> None:
        check_ints(self, "d_model", "n_layers", "n_heads")
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelConfig.d_model ({self.d_model}) must be a multiple of n_heads "
                             f"({self.n_heads})")


@dataclass(frozen=True)
class BaseConfig:
    """The base policy: a :class:`ModelConfig` trained by SFT on the task's demonstrations."""

    task: TaskConfig = field(default_factory=lambda: TaskConfig(n_demos=700, n_transfer=1000,
                                                                n_unlabelled=2000, n_test=500))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1200, batch_size=64, lr=3e-3,
                                                                   warmup_steps=50, eval_every=100))
    n_val: int = 256  # the first test questions: their loss is the held-out ``val_loss`` (no selection)

    def __post_init__(self) -> None:
        check_type(self, "task", TaskConfig)
        check_type(self, "model", ModelConfig)
        check_type(self, "train", TrainConfig)
        check_ints(self, "n_val", high=self.task.n_test)


def make_gpt(model: ModelConfig, task: AdditionTask) -> GPT:
    return GPT(GPTConfig(vocab_size=task.tokenizer.vocab_size, context_length=task.context_length,
                         d_model=model.d_model, n_layers=model.n_layers, n_heads=model.n_heads))


def _batches(examples: Sequence[tuple[list[int], list[int]]], batch_size: int, seed: int):
    """``get_batch`` for :func:`paperlab.train.train`: ``batch_size`` (prompt, response) examples drawn
    with replacement by a generator seeded with ``(seed, step, rank)``, made into
    :func:`paperlab.align.sft_batch` tensors."""

    def get_batch(step: int, rank: int, world_size: int):
        rng = random.Random(batch_seed(seed, step, rank))  # the book's per-(step, rank) seed
        chosen = [examples[rng.randrange(len(examples))] for _ in range(batch_size)]
        return align.sft_batch([p for p, _ in chosen], [r for _, r in chosen])

    return get_batch


def sft(model: GPT, examples, config: TrainConfig, *, val_examples=None, device=None,
        desc: str = "sft") -> TrainResult:
    """Supervised fine-tuning on (prompt ids, response ids) pairs: loss on the response tokens only.

    With ``val_examples``, records ``val_loss`` (the same masked loss on them) every ``eval_every`` steps.
    """
    val_batch = align.sft_batch([p for p, _ in val_examples], [r for _, r in val_examples]) \
        if val_examples else None

    def eval_fn(m: GPT) -> dict:
        device_ = next(m.parameters()).device
        return {"val_loss": m.loss(val_batch[0].to(device_), val_batch[1].to(device_)).item()}

    return train(model, _batches(examples, config.batch_size, config.seed), lambda m, b: m.loss(*b), config,
                 eval_fn=eval_fn if val_batch is not None else None, device=device, desc=desc)


def _train_base(config: BaseConfig, seed: int, device) -> dict:
    task = AdditionTask(config.task, seed)
    seed_everything(seed)
    model = make_gpt(config.model, task)
    demos = [(task.prompt_ids(q), task.answer_ids(q.answer)) for q in task.demos]
    val = [(task.prompt_ids(q), task.answer_ids(q.answer)) for q in task.test[: config.n_val]]
    history = sft(model, demos, _with_seed(config.train, seed), val_examples=val, device=device,
                  desc="base SFT")
    return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "history": history.to_dict()}


def _with_seed(config: TrainConfig, seed: int) -> TrainConfig:
    return replace(config, seed=seed)


def base_policy(config: BaseConfig, seed: int, device=None) -> tuple[GPT, AdditionTask, TrainResult]:
    """The base policy of ``seed`` (trained once, then loaded from the cache), its task and its history."""
    artifact = cache.cached("survey-base", config, lambda: _train_base(config, seed, device), seed=seed)
    task = AdditionTask(config.task, seed)
    model = make_gpt(config.model, task)
    model.load_state_dict(artifact["state_dict"])
    if device is not None:
        model.to(device)
    return model.eval(), task, TrainResult.from_dict(artifact["history"])


# --------------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_answers(model: GPT, task: AdditionTask, questions: Sequence[Question]) -> list[str]:
    out = generate(model, [task.prompt_ids(q) for q in questions], task.max_answer_tokens, greedy=True,
                   eos_id=task.tokenizer.eos_id)
    return [task.decode(o) for o in out]


@torch.no_grad()
def sample_answers(model: GPT, task: AdditionTask, questions: Sequence[Question], n: int,
                   generator: torch.Generator, temperature: float = 1.0):
    """``n`` sampled answers per question (one batched call): their texts and their token ids (as
    generated, ``<eos>`` included), each a list per question of ``n`` entries."""
    prompts = [task.prompt_ids(q) for q in questions for _ in range(n)]
    out = generate(model, prompts, task.max_answer_tokens, temperature=temperature,
                   eos_id=task.tokenizer.eos_id, generator=generator)
    texts = [task.decode(o) for o in out]
    return ([texts[i * n:(i + 1) * n] for i in range(len(questions))],
            [out[i * n:(i + 1) * n] for i in range(len(questions))])


# --------------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------------
def check_examples(task: AdditionTask, questions: Sequence[Question], rng: random.Random,
                   labels: Sequence[bool] | None = None):
    """Balanced checks of ``questions``: each gets its true sum or a near miss (coin flip), and the
    response ``"y"`` / ``"n"``. ``labels`` (one per check, True = "y") replaces the true labels, e.g.
    with a weak supervisor's. Returns ``(examples, candidates, truth)``."""
    candidates, truth = [], []
    for q in questions:
        correct = rng.random() < 0.5
        candidates.append(q.answer if correct else task.near_miss(q, rng))
        truth.append(correct)
    said = truth if labels is None else list(labels)
    examples = [(task.check_ids(q, c), task.answer_ids("y" if s else "n"))
                for q, c, s in zip(questions, candidates, said)]
    return examples, candidates, truth


@torch.no_grad()
def verifier_probability(model: GPT, task: AdditionTask, questions: Sequence[Question],
                         candidates: Sequence[str]) -> torch.Tensor:
    """``P(y | "a+b=c?")`` normalised over the two answers y and n: (len(candidates),) on the CPU.

    A candidate that is not a number (:meth:`AdditionTask.parse` gives None) fails a format check first
    and gets 0 without asking the model.
    """
    tok = task.tokenizer
    valid = [i for i, c in enumerate(candidates) if task.parse(c) is not None]
    prompts = [task.check_ids(questions[i], candidates[i]) for i in valid]
    device = next(model.parameters()).device
    out = torch.zeros(len(candidates))
    for start in range(0, len(prompts), 2048):
        chunk = prompts[start:start + 2048]
        batch, lengths, _ = align.pad_right(chunk, [[] for _ in chunk], pad_id=tok.pad_id, device=device)
        logits = model(batch)[torch.arange(len(chunk), device=device), lengths - 1]
        two = logits[:, [tok.token_to_id["y"], tok.token_to_id["n"]]].float()
        out[valid[start:start + 2048]] = torch.softmax(two, -1)[:, 0].cpu()
    return out


@torch.no_grad()
def answer_logprob(model: GPT, task: AdditionTask, questions: Sequence[Question],
                   candidates: Sequence[str]) -> torch.Tensor:
    """``log p(c <eos> | a+b=)``: the model's probability that ``c`` is its whole answer. (len,) CPU.

    A candidate that is not a number gets ``-inf`` (a format check rejects it).
    """
    out = torch.full((len(candidates),), float("-inf"))
    valid = [i for i, c in enumerate(candidates) if task.parse(c) is not None]
    for start in range(0, len(valid), 4096):
        chunk = valid[start:start + 4096]
        out[chunk] = sequence_logprob(model, [task.prompt_ids(questions[i]) for i in chunk],
                                      [task.answer_ids(candidates[i]) for i in chunk]).float().cpu()
    return out


# --------------------------------------------------------------------------------------------------
# The reward model
# --------------------------------------------------------------------------------------------------
def train_reward_model(base: GPT, task: AdditionTask, pairs: Sequence[tuple[Question, str, str]],
                       config: TrainConfig, device=None) -> tuple[align.RewardModel, TrainResult]:
    """A Bradley-Terry reward model initialised from ``base``, trained on (question, chosen response ids,
    rejected response ids)."""
    reward_model = align.RewardModel.from_gpt(base)
    prompts = [task.prompt_ids(q) for q, _, _ in pairs]
    chosen = [list(c) for _, c, _ in pairs]
    rejected = [list(r) for _, _, r in pairs]

    def get_batch(step: int, rank: int, world_size: int):
        rng = random.Random(batch_seed(config.seed, step, rank))
        index = [rng.randrange(len(pairs)) for _ in range(config.batch_size)]
        p = [prompts[i] for i in index]
        return (*align.reward_batch(p, [chosen[i] for i in index]),
                *align.reward_batch(p, [rejected[i] for i in index]))

    def loss_fn(model, batch):
        chosen_idx, chosen_len, rejected_idx, rejected_len = batch
        return align.bradley_terry_loss(model(chosen_idx, chosen_len), model(rejected_idx, rejected_len))

    history = train(reward_model, get_batch, loss_fn, config, device=device, desc="reward model")
    return reward_model.eval(), history
