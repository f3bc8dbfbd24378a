"""Alignment training signals, from scratch, on the toolkit's GPT: SFT with prompt masking, a
Bradley-Terry reward model, DPO, policy-gradient fine-tuning with a KL penalty, best-of-n and
self-consistency voting. The chapter "Automated alignment: a map" (``book/07-alignment.md``) derives
each one; this module states the contracts.

Prompts and responses are token-id lists (encode text with the chapter's tokenizer). How to use::

    from paperlab import align
    from paperlab.train import TrainConfig, train

    # SFT: next-token loss on the response tokens only (the prompt is context, not a target)
    idx, targets = align.sft_batch(prompts, responses, pad_id=tok.pad_id)
    loss = model.loss(idx, targets)

    # multi-turn SFT (an agent's turns between an environment's): loss on the trainable turns only
    idx, targets = align.sft_turns_batch([[(obs, False), (reply, True), (obs2, False), (reply2, True)]])

    # Reward model from preference pairs (Bradley-Terry), initialised from a GPT
    rm = align.RewardModel.from_gpt(sft_model)
    idx, lengths = align.reward_batch(prompts, responses)
    rewards = rm(idx, lengths)                                      # (batch,)
    loss = align.bradley_terry_loss(rewards_chosen, rewards_rejected)

    # DPO on fixed pairs against a frozen reference (reference log-probs computed once)
    dpo = align.DPO(reference=sft_model, prompts=p, chosen=c, rejected=r, beta=0.1)
    train(policy, lambda step, rank, world: (dpo.sample_indices(step, 32),), dpo.loss_fn, config)

    # Policy gradient (REINFORCE, leave-one-out baseline, KL penalty to the frozen reference)
    pg = align.PolicyGradient(reference=sft_model, prompts=prompt_pool, reward_fn=reward_fn,
                              config=align.PolicyGradientConfig(kl_coef=0.05), eos_id=tok.eos_id)
    train(policy, pg.get_batch(policy), pg.loss_fn, config)

    # Inference-time signals
    best = align.best_of_n(scores)                 # index of the highest-scoring candidate per prompt
    answer, votes = align.majority_vote(["12", "12", "13", None])

Every reference model is copied and frozen (:func:`freeze`): training a policy never changes it.
"""

from __future__ import annotations

import copy
import math
import random
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from paperlab.config import check_choice, check_flags, check_ints, check_numbers, check_that
from paperlab.nn import GPT, GPTConfig, generate, sequence_logprob
from paperlab.train import batch_seed

__all__ = [
    "freeze",
    "pad_right",
    "token_logprobs",
    "sequence_kl",
    "sft_batch",
    "sft_turns_batch",
    "PreferencePair",
    "RewardModel",
    "reward_batch",
    "score",
    "bradley_terry_loss",
    "dpo_loss",
    "DPO",
    "reinforce_loss",
    "kl_penalty",
    "PolicyGradientConfig",
    "PolicyGradient",
    "best_of_n",
    "best_of_n_kl",
    "rejection_sample",
    "majority_vote",
]

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------
# Shared pieces: frozen references, padding, per-token log-probabilities
# --------------------------------------------------------------------------------------------------
def freeze(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model``: same weights, ``requires_grad=False`` everywhere, eval mode.

    The reference policy of DPO and of the KL penalty is such a copy, so no optimizer can reach it.
    """
    frozen = copy.deepcopy(model)
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    return frozen.eval()


def _token_lists(name: str, lists, allow_empty: bool) -> list[list[int]]:
    if isinstance(lists, torch.Tensor):
        lists = lists.tolist()
    if isinstance(lists, (str, bytes)) or not isinstance(lists, Sequence) or len(lists) == 0:
        raise ValueError(f"{name} must be a non-empty list of token-id lists")
    out = []
    for i, tokens in enumerate(lists):
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        if isinstance(tokens, str) or not isinstance(tokens, Sequence):
            raise ValueError(f"{name}[{i}] must be a list of token ids, got {type(tokens).__name__}")
        if not tokens and not allow_empty:
            raise ValueError(f"{name}[{i}] is empty; every entry needs at least one token")
        out.append([int(t) for t in tokens])
    return out


def _pairs(prompts, responses) -> tuple[list[list[int]], list[list[int]]]:
    prompts = _token_lists("prompts", prompts, allow_empty=False)
    responses = _token_lists("responses", responses, allow_empty=True)
    if len(prompts) != len(responses):
        raise ValueError(f"prompts ({len(prompts)}) and responses ({len(responses)}) differ in length")
    return prompts, responses


def pad_right(prompts, responses, *, pad_id: int = 0, device=None):
    """Concatenate each prompt and response and right-pad the batch.

    Returns ``tokens: (batch, longest)`` int64, ``prompt_lengths: (batch,)`` and ``response_lengths:
    (batch,)``. Causal attention means real tokens never see the padding after them.
    """
    prompts, responses = _pairs(prompts, responses)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    tokens = torch.full((len(prompts), max(lengths)), pad_id, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        tokens[i, : lengths[i]] = torch.tensor(p + r, dtype=torch.long)
    prompt_lengths = torch.tensor([len(p) for p in prompts])
    response_lengths = torch.tensor([len(r) for r in responses])
    return tokens.to(device), prompt_lengths.to(device), response_lengths.to(device)


def _response_positions(prompt_lengths, response_lengths, n_positions):
    """Index (batch, T) of the logit row that predicts response token j, and the mask j < len(response)."""
    steps = torch.arange(int(response_lengths.max().clamp(min=1)), device=prompt_lengths.device)
    positions = prompt_lengths[:, None] - 1 + steps[None, :]  # input t predicts token t + 1
    mask = steps[None, :] < response_lengths[:, None]
    return positions.clamp(max=n_positions - 1), mask


def _logprobs_of_padded(model: GPT, tokens, prompt_lengths, response_lengths):
    """Per-token log p(response token | everything before it): ``(batch, T)`` and its mask."""
    if tokens.shape[1] > model.config.context_length + 1:
        raise ValueError(f"prompt + response has up to {tokens.shape[1]} tokens; at most context_length + 1 "
                         f"= {model.config.context_length + 1} fit")
    logits = model(tokens[:, :-1])
    log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    positions, mask = _response_positions(prompt_lengths, response_lengths, tokens.shape[1] - 1)
    targets = tokens.gather(1, (positions + 1).clamp(max=tokens.shape[1] - 1))
    rows = log_probs.gather(1, positions[..., None].expand(-1, -1, log_probs.shape[-1]))  # (batch, T, vocab)
    token_logprob = rows.gather(-1, targets[..., None]).squeeze(-1)
    return torch.where(mask, token_logprob, 0.0), mask, rows


def token_logprobs(model: GPT, prompts, responses, *, pad_id: int = 0):
    """``log pi(y_t | x, y_<t)`` for every response token, differentiable.

    Returns ``(logprobs, mask)``, both ``(batch, T)`` with ``T`` the longest response; ``mask`` is True on
    real response tokens and ``logprobs`` is 0 elsewhere. Sum over ``t`` for the sequence log-probability
    (equal to :func:`paperlab.nn.sequence_logprob`).
    """
    tokens, prompt_lengths, response_lengths = pad_right(prompts, responses, pad_id=pad_id,
                                                         device=_device(model))
    if tokens.shape[1] < 2:
        empty = torch.zeros(len(tokens), 1, device=tokens.device)
        return empty, empty.bool()
    logprobs, mask, _ = _logprobs_of_padded(model, tokens, prompt_lengths, response_lengths)
    return logprobs, mask


@torch.no_grad()
def sequence_kl(policy: GPT, reference: GPT, prompts, responses, *, pad_id: int = 0) -> torch.Tensor:
    """``sum_t KL(pi(. | x, y_<t) || pi_ref(. | x, y_<t))`` along each response: ``(batch,)`` in nats.

    Averaged over responses sampled from ``pi`` this is ``KL(pi || pi_ref)`` over whole sequences (the
    chain rule of KL), with far less variance than the sampled log-ratio, and never negative.
    """
    tokens, prompt_lengths, response_lengths = pad_right(prompts, responses, pad_id=pad_id,
                                                         device=_device(policy))
    _, mask, rows = _logprobs_of_padded(policy, tokens, prompt_lengths, response_lengths)
    _, _, reference_rows = _logprobs_of_padded(reference, tokens, prompt_lengths, response_lengths)
    per_token = (rows.exp() * (rows - reference_rows)).sum(-1)  # KL of the next-token distributions
    return torch.where(mask, per_token, 0.0).sum(1)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------------
# 1. Supervised fine-tuning with prompt masking
# --------------------------------------------------------------------------------------------------
def sft_batch(prompts, responses, *, pad_id: int = 0, ignore_index: int = IGNORE_INDEX):
    """``(idx, targets)`` for :meth:`paperlab.nn.GPT.loss` that trains on the response tokens only.

    ``L_SFT = -1/|y| sum_t log pi(y_t | x, y_<t)``: targets at prompt and padding positions are
    ``ignore_index``, so those positions get exactly zero gradient. Both tensors are ``(batch, longest - 1)``.
    """
    tokens, prompt_lengths, response_lengths = pad_right(prompts, responses, pad_id=pad_id)
    if int(response_lengths.max()) == 0:
        raise ValueError("every response is empty: SFT needs response tokens to train on")
    idx, targets = tokens[:, :-1], tokens[:, 1:].clone()
    position = torch.arange(targets.shape[1])[None, :] + 1  # the position of each target token
    ends = (prompt_lengths + response_lengths)[:, None]
    is_response = (position >= prompt_lengths[:, None]) & (position < ends)
    targets[~is_response] = ignore_index
    return idx, targets


def sft_turns_batch(conversations, *, pad_id: int = 0, ignore_index: int = IGNORE_INDEX):
    """``(idx, targets)`` for :meth:`paperlab.nn.GPT.loss` on multi-turn conversations, trained on the
    trainable turns only (an agent's replies; the user's or environment's turns are context).

    ``conversations``: one list per conversation of ``(token_ids, trainable)`` turns, in order. A token is
    a target iff its turn is trainable, so ``L = -1/N sum_{t in trainable turns} log pi(x_t | x_<t)``
    and every other position (other turns, padding) gets exactly zero gradient. :func:`sft_batch` is the
    case ``[(prompt, False), (response, True)]``. Both tensors are ``(batch, longest - 1)``, right-padded.
    """
    if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence) \
            or len(conversations) == 0:
        raise ValueError("conversations must be a non-empty list of conversations")
    rows, flags = [], []
    for i, turns in enumerate(conversations):
        if isinstance(turns, (str, bytes)) or not isinstance(turns, Sequence) or len(turns) == 0:
            raise ValueError(f"conversation {i} must be a non-empty list of (token_ids, trainable) turns")
        tokens, trainable = [], []
        for j, turn in enumerate(turns):
            if not (isinstance(turn, (tuple, list)) and len(turn) == 2 and isinstance(turn[1], bool)):
                raise ValueError(f"conversation {i}, turn {j} must be a (token_ids, trainable: bool) pair")
            ids = _token_lists(f"conversation {i}, turn {j}", [turn[0]], allow_empty=True)[0]
            tokens += ids
            trainable += [turn[1]] * len(ids)
        if len(tokens) < 2:
            raise ValueError(f"conversation {i} has {len(tokens)} token(s); it needs at least 2")
        if not any(trainable[1:]):
            raise ValueError(f"conversation {i} has no trainable token after its first: nothing to train on")
        rows.append(tokens)
        flags.append(trainable)
    longest = max(map(len, rows))
    idx = torch.full((len(rows), longest - 1), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), longest - 1), ignore_index, dtype=torch.long)
    for i, (tokens, trainable) in enumerate(zip(rows, flags)):
        row = torch.tensor(tokens, dtype=torch.long)
        idx[i, : len(tokens) - 1] = row[:-1]
        keep = torch.tensor(trainable[1:], dtype=torch.bool)  # target t is token t + 1
        targets[i, : len(tokens) - 1] = torch.where(keep, row[1:], ignore_index)
    return idx, targets


# --------------------------------------------------------------------------------------------------
# 2. A reward model from preference pairs (Bradley-Terry)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreferencePair:
    """One comparison: for ``prompt``, ``chosen`` was preferred to ``rejected`` (texts)."""

    prompt: str
    chosen: str
    rejected: str

    def __post_init__(self) -> None:
        for name in ("prompt", "chosen", "rejected"):
            if not isinstance(getattr(self, name), str):
                kind = type(getattr(self, name)).__name__
                raise ValueError(f"PreferencePair.{name} must be a str, got {kind}")
        if self.chosen == self.rejected:
            raise ValueError(f"preference pair for prompt {self.prompt!r} has identical chosen and rejected "
                             f"texts ({self.chosen!r}): it carries no preference")


class RewardModel(nn.Module):
    """``r_phi(x, y)``: the toolkit's transformer with a scalar head.

    The reward is a linear function of the final (normalised) hidden state at the last token of
    ``x + y``: ``r = w^T RMSNorm(h_last) + b``. ``from_gpt`` starts from a language model's weights (as
    InstructGPT starts its reward model from the SFT model); the head starts at zero, so every reward
    starts at 0.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.body = GPT(config)  # its LM head is unused: it gets no gradient, and AdamW skips it
        self.head = nn.Linear(config.d_model, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_gpt(cls, gpt: GPT) -> RewardModel:
        model = cls(gpt.config)
        model.body.load_state_dict(gpt.state_dict())
        return model.to(_device(gpt))

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """idx: (batch, seq) right-padded token ids; lengths: (batch,) real tokens per row -> (batch,)."""
        if idx.dim() != 2 or lengths.shape != idx.shape[:1]:
            raise ValueError(f"idx must be (batch, seq) and lengths (batch,), got {tuple(idx.shape)} and "
                             f"{tuple(lengths.shape)}")
        if int(lengths.min()) < 1 or int(lengths.max()) > idx.shape[1]:
            raise ValueError(f"lengths must be in [1, {idx.shape[1]}], got {lengths.tolist()[:8]}")
        _, hidden = self.body(idx, return_hidden=True)
        h = self.body.final_norm(hidden[-1])
        last = h[torch.arange(len(idx), device=idx.device), lengths.to(idx.device) - 1]
        return self.head(last).squeeze(-1)


def reward_batch(prompts, responses, *, pad_id: int = 0, device=None):
    """``(idx, lengths)`` for :class:`RewardModel`: prompt + response, right-padded."""
    tokens, prompt_lengths, response_lengths = pad_right(prompts, responses, pad_id=pad_id, device=device)
    return tokens, prompt_lengths + response_lengths


@torch.no_grad()
def score(reward_model: RewardModel, prompts, responses, *, pad_id: int = 0, batch_size: int = 1024):
    """Rewards of (prompt, response) pairs, in batches, without gradients: (batch,) on the CPU."""
    prompts, responses = _pairs(prompts, responses)
    was_training = reward_model.training
    reward_model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        idx, lengths = reward_batch(prompts[start:start + batch_size], responses[start:start + batch_size],
                                    pad_id=pad_id, device=_device(reward_model))
        out.append(reward_model(idx, lengths).float().cpu())
    reward_model.train(was_training)
    return torch.cat(out)


def bradley_terry_loss(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor) -> torch.Tensor:
    """``-mean log sigma(r(x, y_w) - r(x, y_l))``: the negative log-likelihood of the observed preferences
    under the Bradley-Terry model ``P(y_w > y_l | x) = sigma(r(x, y_w) - r(x, y_l))``."""
    if rewards_chosen.shape != rewards_rejected.shape:
        raise ValueError(f"rewards differ in shape: {tuple(rewards_chosen.shape)} and "
                         f"{tuple(rewards_rejected.shape)}")
    return -F.logsigmoid(rewards_chosen - rewards_rejected).mean()


# --------------------------------------------------------------------------------------------------
# 3. Direct preference optimisation
# --------------------------------------------------------------------------------------------------
def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             beta: float) -> torch.Tensor:
    """Per-pair DPO loss (Rafailov et al. 2023, eq. 7), shape (batch,):

    ``-log sigma(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])``

    The implicit reward of a response is ``beta * log(pi / pi_ref)``; the loss is the Bradley-Terry loss
    of those rewards. Equal to ``log 2`` when the policy equals the reference.
    """
    if not (isinstance(beta, (int, float)) and beta > 0):
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    chosen_ratio = policy_chosen_logps - reference_chosen_logps  # log pi(y_w)/pi_ref(y_w)
    rejected_ratio = policy_rejected_logps - reference_rejected_logps
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))


class DPO:
    """DPO on a fixed set of preference pairs (token ids), ready for :func:`paperlab.train.train`.

    The reference is frozen (:func:`freeze`), so its log-probabilities of every chosen and rejected
    response are computed once here. A training batch is a tensor of pair indices
    (:meth:`sample_indices`); :meth:`loss_fn` computes the policy's log-probabilities of those pairs and
    the mean :func:`dpo_loss`.
    """

    def __init__(self, reference: GPT, prompts, chosen, rejected, *, beta: float = 0.1, pad_id: int = 0,
                 batch_size: int = 1024):
        prompts = _token_lists("prompts", prompts, allow_empty=False)
        chosen = _token_lists("chosen", chosen, allow_empty=True)
        rejected = _token_lists("rejected", rejected, allow_empty=True)
        if not len(prompts) == len(chosen) == len(rejected):
            raise ValueError(f"prompts, chosen and rejected differ in length: {len(prompts)}, {len(chosen)}, "
                             f"{len(rejected)}")
        for i, (c, r) in enumerate(zip(chosen, rejected)):
            if c == r:
                raise ValueError(f"pair {i} has identical chosen and rejected responses: it carries no "
                                 "preference")
        if not (isinstance(beta, (int, float)) and beta > 0):
            raise ValueError(f"beta must be a positive number, got {beta!r}")
        self.reference = freeze(reference)
        self.prompts, self.chosen, self.rejected = prompts, chosen, rejected
        self.beta, self.pad_id = float(beta), pad_id
        everything = range(len(prompts))
        with torch.no_grad():
            self.reference_chosen = self._logps(self.reference, everything, self.chosen, batch_size)
            self.reference_rejected = self._logps(self.reference, everything, self.rejected, batch_size)

    def __len__(self) -> int:
        return len(self.prompts)

    def _logps(self, model, indices, responses, batch_size=None):
        indices = list(indices)
        size = batch_size or len(indices)
        parts = [sequence_logprob(model, [self.prompts[i] for i in indices[s:s + size]],
                                  [responses[i] for i in indices[s:s + size]], pad_id=self.pad_id)
                 for s in range(0, len(indices), size)]
        return torch.cat(parts)

    def sample_indices(self, step: int, batch_size: int, rank: int = 0) -> torch.Tensor:
        """``batch_size`` pair indices drawn with replacement, seeded by ``(step, rank)``."""
        generator = torch.Generator().manual_seed(step * 7919 + rank)
        return torch.randint(len(self), (batch_size,), generator=generator)

    def loss_fn(self, policy: GPT, batch) -> torch.Tensor:
        """Mean DPO loss over the pairs whose indices are ``batch[0]``."""
        indices = batch[0].tolist()
        device = self.reference_chosen.device
        policy_chosen = self._logps(policy, indices, self.chosen)
        policy_rejected = self._logps(policy, indices, self.rejected)
        index = torch.tensor(indices, device=device)
        return dpo_loss(policy_chosen, policy_rejected, self.reference_chosen[index].to(policy_chosen.device),
                        self.reference_rejected[index].to(policy_chosen.device), self.beta).mean()


# --------------------------------------------------------------------------------------------------
# 4. Policy-gradient fine-tuning: REINFORCE with a baseline and a KL penalty
# --------------------------------------------------------------------------------------------------
def reinforce_loss(logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """``-mean_i A_i * sum_t m_it log pi(y_it | x_i, y_i<t)``: the REINFORCE surrogate (Williams 1992).

    Its gradient is ``-E[A * grad log pi(y | x)]``, the policy gradient with advantage ``A = R - b``.
    ``mask`` (batch, T) selects the sampled (chosen) tokens: every other position gets exactly zero
    gradient. ``advantages`` (batch,) are constants (detached here).
    """
    if logprobs.shape != mask.shape or advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, mask {tuple(mask.shape)} and advantages "
                         f"{tuple(advantages.shape)} do not fit: need (batch, T), (batch, T), (batch,)")
    sequence = torch.where(mask, logprobs, 0.0).sum(1)
    return -(advantages.detach() * sequence).mean()


def kl_penalty(logprobs: torch.Tensor, reference_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sampled KL estimate per sequence, ``sum_t m_t (log pi(y_t) - log pi_ref(y_t))``: (batch,).

    Its mean over samples from ``pi`` is ``KL(pi || pi_ref)``; it is 0 when the policy is the reference.
    """
    return torch.where(mask, logprobs - reference_logprobs, 0.0).sum(1)


@dataclass(frozen=True)
class PolicyGradientConfig:
    """Sampling and objective of :class:`PolicyGradient`.

    prompts_per_step: prompts drawn per update; n_samples: responses sampled per prompt (>= 2 for the
    leave-one-out baseline); max_new_tokens, temperature: sampling; kl_coef: beta in
    ``R = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x))``; baseline: ``"loo"`` (mean reward of the other
    samples of the same prompt, Kool et al. 2019) or ``"batch"`` (mean over the batch); use_cache: sample
    with a key-value cache (:func:`paperlab.nn.generate`; the same distributions up to floating-point
    rounding, at a fraction of the cost for long responses).
    """

    prompts_per_step: int = 16
    n_samples: int = 4
    max_new_tokens: int = 8
    temperature: float = 1.0
    kl_coef: float = 0.05
    baseline: str = "loo"
    use_cache: bool = False

    def __post_init__(self) -> None:
        check_ints(self, "prompts_per_step", "n_samples", "max_new_tokens")
        check_numbers(self, "temperature", low=0, open_low=True)
        check_numbers(self, "kl_coef", low=0)
        check_choice(self, "baseline", ("loo", "batch"))
        check_flags(self, "use_cache")
        check_that(self, self.baseline == "batch" or self.n_samples >= 2, "n_samples",
                   "at least 2 for the leave-one-out baseline")


class PolicyGradient:
    """On-policy REINFORCE against any reward function, with a KL penalty to a frozen reference.

    Each step (run by :func:`paperlab.train.train`, which supplies the optimizer, schedule and clipping):

    1. draw ``prompts_per_step`` prompts, sample ``n_samples`` responses each from the current policy;
    2. reward them: ``r = reward_fn(prompts, responses)`` (token-id lists -> floats);
    3. shape: ``R = r - kl_coef * sum_t (log pi(y_t) - log pi_ref(y_t))`` (the KL-regularised objective
       ``E[r] - beta KL(pi || pi_ref)`` of InstructGPT);
    4. advantage ``A = R - b`` with the baseline ``b`` of the config, and the loss :func:`reinforce_loss`
       over the sampled tokens only (prompt and padding are masked out).

    ``optimise(prompt, response) -> list[bool]`` (token-id lists in, one flag per response token out)
    restricts steps 3 and 4 to the flagged tokens: the KL penalty sums over them only, and every other
    token's log-probability gets exactly zero gradient (e.g. SaySelf trains only the tokens of a stated
    confidence). By default every response token is optimised.

    The sampling happens in :meth:`get_batch`, before the update, so every batch is on-policy; the
    returned tensors carry the samples, advantages and token mask to :meth:`loss_fn`. (The loop is
    :func:`paperlab.train.train` itself: only the batch depends on the model.)
    """

    def __init__(self, reference: GPT, prompts, reward_fn: Callable[[list, list], Sequence[float]],
                 config: PolicyGradientConfig, *, eos_id: int, pad_id: int = 0, seed: int = 0,
                 optimise: Callable[[list, list], Sequence[bool]] | None = None):
        self.prompts = _token_lists("prompts", prompts, allow_empty=False)
        if not isinstance(config, PolicyGradientConfig):
            raise TypeError(f"config must be a PolicyGradientConfig, got {type(config).__name__}")
        if not callable(reward_fn):
            raise TypeError("reward_fn must be callable: (prompts, responses) -> rewards")
        if optimise is not None and not callable(optimise):
            raise TypeError("optimise must be None or callable: (prompt, response) -> one bool per token")
        self.reference = freeze(reference)
        self.reward_fn, self.config, self.optimise = reward_fn, config, optimise
        self.eos_id, self.pad_id, self.seed = eos_id, pad_id, seed
        self.last: dict[str, float] = {}

    def get_batch(self, policy: GPT) -> Callable[[int, int, int], tuple]:
        """The ``get_batch(step, rank, world_size)`` for :func:`paperlab.train.train` that samples from
        ``policy`` (the model being trained)."""

        def get_batch(step: int, rank: int, world_size: int) -> tuple:
            return self.sample(policy, step, rank)

        return get_batch

    @torch.no_grad()
    def sample(self, policy: GPT, step: int, rank: int = 0) -> tuple:
        c = self.config
        rng = random.Random(batch_seed(self.seed, step, rank))  # the book's per-(step, rank) seed
        chosen = [self.prompts[rng.randrange(len(self.prompts))] for _ in range(c.prompts_per_step)]
        rows = [p for p in chosen for _ in range(c.n_samples)]
        device = _device(policy)
        generator = torch.Generator(device=device).manual_seed(rng.randrange(2**62))
        responses = generate(policy, rows, c.max_new_tokens, temperature=c.temperature, eos_id=self.eos_id,
                             pad_id=self.pad_id, generator=generator, use_cache=c.use_cache)
        rewards = torch.tensor([float(r) for r in self.reward_fn(rows, responses)], device=device)
        if rewards.shape != (len(rows),):
            raise ValueError(f"reward_fn returned {tuple(rewards.shape)} rewards for {len(rows)} responses")
        batch = pad_right(rows, responses, pad_id=self.pad_id, device=device)
        tokens, prompt_lengths, response_lengths = batch
        was_training = policy.training
        policy.eval()
        logprobs, mask, _ = _logprobs_of_padded(policy, *batch)
        policy.train(was_training)
        if self.optimise is not None:
            mask = mask & self._optimised(rows, responses, mask)
        reference_logprobs, _, _ = _logprobs_of_padded(self.reference, *batch)
        kl = kl_penalty(logprobs, reference_logprobs, mask)
        shaped = rewards - c.kl_coef * kl  # R = r - beta * log(pi / pi_ref)
        if c.baseline == "loo":
            grouped = shaped.view(c.prompts_per_step, c.n_samples)
            baseline = (grouped.sum(1, keepdim=True) - grouped) / (c.n_samples - 1)  # mean of the others
            advantages = (grouped - baseline).flatten()
        else:
            advantages = shaped - shaped.mean()
        self.last = {"reward": rewards.mean().item(), "kl": kl.mean().item()}
        return tokens, prompt_lengths, response_lengths, advantages, mask

    def _optimised(self, prompts: list, responses: list, mask: torch.Tensor) -> torch.Tensor:
        """The ``optimise`` flags of each response, padded to ``mask``'s (batch, T) shape."""
        flags = torch.zeros_like(mask)
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            row = [bool(f) for f in self.optimise(prompt, response)]
            if len(row) != len(response):
                raise ValueError(f"optimise returned {len(row)} flags for a response of {len(response)} "
                                 "tokens")
            flags[i, :len(row)] = torch.tensor(row, dtype=torch.bool)
        return flags

    def loss_fn(self, policy: GPT, batch: tuple) -> torch.Tensor:
        tokens, prompt_lengths, response_lengths, advantages, optimised = batch
        logprobs, mask, _ = _logprobs_of_padded(policy, tokens, prompt_lengths, response_lengths)
        return reinforce_loss(logprobs, mask & optimised, advantages)


# --------------------------------------------------------------------------------------------------
# 5. Inference-time signals: best-of-n, rejection sampling, self-consistency
# --------------------------------------------------------------------------------------------------
def best_of_n(scores) -> list[int]:
    """For each prompt, the index of its highest-scoring candidate (the first on ties).

    ``scores``: one list of candidate scores per prompt (a list of lists, or a (prompts, n) tensor).
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.tolist()
    if not scores:
        raise ValueError("best_of_n needs at least one prompt's scores")
    out = []
    for i, row in enumerate(scores):
        if len(row) == 0:
            raise ValueError(f"prompt {i} has no candidates to choose from")
        out.append(max(range(len(row)), key=lambda j: (row[j], -j)))
    return out


def best_of_n_kl(n: int) -> float:
    """``KL(best-of-n || base) = log n - (n - 1) / n`` nats (Stiennon et al. 2020; Gao et al. 2022 eq. 1):
    exact for continuous scores without ties, an upper bound otherwise."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return math.log(n) - (n - 1) / n


def rejection_sample(candidates: Sequence, scores: Sequence[float], threshold: float) -> list:
    """The candidates whose score is at least ``threshold`` (rejection sampling / filtering, as in
    expert iteration, RAFT and STaR)."""
    if len(candidates) != len(scores):
        raise ValueError(f"candidates ({len(candidates)}) and scores ({len(scores)}) differ in length")
    return [c for c, s in zip(candidates, scores) if s >= threshold]


def majority_vote(answers: Sequence[Hashable | None]) -> tuple[Hashable | None, int]:
    """Self-consistency (Wang et al. 2023): the most frequent answer and its vote count.

    ``None`` entries (unparseable answers) do not vote; ties go to the answer that appeared first.
    Returns ``(None, 0)`` when no answer votes.
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None, 0
    first = {}
    for i, a in enumerate(answers):
        if a is not None:
            first.setdefault(a, i)
    answer = max(votes, key=lambda a: (votes[a], -first[a]))
    return answer, votes[answer]
