"""The ways to adapt a model to one user's demonstrations: prompting, SFT, SPIN and DITTO.

All of them start from a model and a handful of demonstrations ``(prompt, message)``:

- **few-shot prompting**: the demonstrations go into the context (:func:`few_shot_prompts`); nothing trains;
- **SFT**: next-token loss on the demonstrations' messages (:func:`sft`, :func:`paperlab.align.sft_batch`);
- **DITTO** (Shaikh et al. 2024, Algorithm 1): from the SFT model ``pi_0`` (also the frozen DPO reference),
  repeat: sample ``n_samples`` messages per demonstration prompt from the current policy ``pi_t``; build
  comparisons in which the demonstration beats the current samples (``D_E > D_t``, "expert"), beats samples
  of earlier iterations (``D_E > D_{t-k}``, "replay") and in which later samples beat earlier ones
  (``D_t > D_{t-k}``, "inter"); take DPO steps on a 70/20/10 mix of them (:class:`OnlineDPO`);
- **SPIN** (Chen et al. 2024): the same loop with expert comparisons only, and the reference moved to the
  policy at the start of each iteration (``OnlineDPOConfig(mix=(1, 0, 0), reference="previous")``).

The pairs and the batch mix are pure functions (:func:`build_pairs`, :func:`mix_counts`, :func:`draw_pairs`)
so that the tests can check them; the loss is :func:`paperlab.align.dpo_loss`. Every model answers through
:class:`paperlab.llm.TinyLM` (:func:`answer`), so all methods are sampled the same way.
The chapter (``book/10-ditto.md``, sec-ditto-method) derives the objective; here are the contracts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from paperlab import align, llm
from paperlab.config import (
    check_choice,
    check_ints,
    check_number_tuple,
    check_numbers,
    check_that,
    check_type,
)
from paperlab.ditto.data import SEPARATOR, Example, few_shot_prompt
from paperlab.nn import GPT, generate, sequence_logprob
from paperlab.tokenizers import Tokenizer
from paperlab.train import TrainConfig, TrainResult, batch_seed, seeded_batches, train

__all__ = [
    "KINDS", "Response", "Pair", "build_pairs", "mix_counts", "draw_pairs", "encode_examples",
    "check_demonstrations", "sft", "OnlineDPOConfig", "OnlineDPO", "answer", "few_shot_prompts",
]

KINDS = ("expert", "replay", "inter")  # D_E > D_t, D_E > D_{t-k}, D_t > D_{t-k}


# --------------------------------------------------------------------------------------------------
# Comparisons: which responses are preferred to which
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Response:
    """A response to demonstration prompt ``prompt``: the demonstration itself (``iteration=None``) or
    sample ``index`` drawn from the policy at iteration ``iteration`` (0 = from ``pi_0``)."""

    prompt: int
    iteration: int | None = None
    index: int = 0

    @property
    def is_demonstration(self) -> bool:
        return self.iteration is None


@dataclass(frozen=True)
class Pair:
    """One comparison for prompt ``prompt``: ``chosen`` is preferred to ``rejected``; ``kind`` is one of
    :data:`KINDS`."""

    kind: str
    prompt: int
    chosen: Response
    rejected: Response


def build_pairs(samples: Sequence[Sequence[Sequence[Sequence[int]]]], demonstrations: Sequence[Sequence[int]],
                prompts: Sequence[int] | None = None) -> dict[str, list[Pair]]:
    """DITTO's comparisons after iteration ``T = len(samples) - 1`` (sec. 3 of the paper; the authors'
    ``DPODataCollatorWithPadding``).

    ``samples[t][p][j]``: token ids of sample ``j`` for prompt ``p`` drawn at iteration ``t``;
    ``demonstrations[p]``: the demonstration's token ids. For each prompt in ``prompts`` (default all):

    - ``expert``: the demonstration over every sample of iteration ``T``        (``D_E > D_T``);
    - ``replay``: the demonstration over every sample of iterations ``t < T``    (``D_E > D_t``);
    - ``inter``:  every sample of iteration ``a`` over every sample of ``b < a``  (``D_a > D_b``).

    A pair whose two responses are the same tokens carries no preference (its DPO gradient is zero) and
    is left out.
    """
    if not samples:
        raise ValueError("build_pairs needs the samples of at least one iteration")
    n_prompts = len(demonstrations)
    for t, iteration in enumerate(samples):
        if len(iteration) != n_prompts:
            raise ValueError(f"iteration {t} has samples for {len(iteration)} prompts, but there are "
                             f"{n_prompts} demonstrations")
    prompts = range(n_prompts) if prompts is None else prompts
    last = len(samples) - 1
    pairs: dict[str, list[Pair]] = {kind: [] for kind in KINDS}

    def add(kind, p, chosen, chosen_tokens, rejected, rejected_tokens):
        if list(chosen_tokens) != list(rejected_tokens):
            pairs[kind].append(Pair(kind, p, chosen, rejected))

    for p in prompts:
        demo = Response(p)
        for t in range(last + 1):
            for j, tokens in enumerate(samples[t][p]):
                kind = "expert" if t == last else "replay"
                add(kind, p, demo, demonstrations[p], Response(p, t, j), tokens)
        for a in range(1, last + 1):  # later iteration a over earlier iteration b
            for b in range(a):
                for i, later in enumerate(samples[a][p]):
                    for j, earlier in enumerate(samples[b][p]):
                        add("inter", p, Response(p, a, i), later, Response(p, b, j), earlier)
    return pairs


def mix_counts(mix: Sequence[float], n_pairs: int) -> dict[str, int]:
    """How many pairs of each kind a batch of ``n_pairs`` asks for: ``round(n_pairs * fraction)``
    (the authors' rule; with 21 pairs and 0.7/0.2/0.1: 15 expert, 4 replay, 2 inter)."""
    if len(mix) != len(KINDS) or any(f < 0 for f in mix) or not sum(mix) > 0:
        raise ValueError(f"mix must be {len(KINDS)} non-negative fractions for {KINDS}, not all 0; got {mix}")
    return {kind: round(n_pairs * fraction) for kind, fraction in zip(KINDS, mix)}


def draw_pairs(pairs: dict[str, list[Pair]], counts: dict[str, int], rng: random.Random) -> list[Pair]:
    """Each kind's count drawn without replacement (all of them when fewer exist: early iterations have
    no replay or inter pairs yet, and the batch is smaller, as in the authors' code)."""
    out = []
    for kind in KINDS:
        pool = pairs.get(kind, [])
        out += rng.sample(pool, min(counts.get(kind, 0), len(pool)))
    return out


# --------------------------------------------------------------------------------------------------
# Demonstrations as token ids; SFT
# --------------------------------------------------------------------------------------------------
def encode_examples(examples: Sequence[Example],
                    tokenizer: Tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """``(prompt ids, response ids)`` for each example: ``<bos> prompt`` and ``message |``."""
    prompts = [tokenizer.encode(e.prompt, add_bos=True) for e in examples]
    responses = [tokenizer.encode(f"{e.message} {SEPARATOR}") for e in examples]
    return prompts, responses


def check_demonstrations(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                         context_length: int, max_new_tokens: int = 0) -> None:
    """A ValueError naming the problem unless there is at least one demonstration and each one (and each
    of its prompts followed by ``max_new_tokens`` sampled tokens) fits the model's context."""
    if len(prompts) == 0:
        raise ValueError("no demonstrations: DITTO, SFT and few-shot prompting need at least one")
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if len(p) + len(r) > context_length + 1:
            raise ValueError(f"demonstration {i} has {len(p) + len(r)} tokens with its prompt, longer than "
                             f"the model's context of {context_length} tokens")
        if len(p) + max_new_tokens > context_length + 1:
            raise ValueError(f"demonstration {i}'s prompt ({len(p)} tokens) leaves no room for "
                             f"max_new_tokens = {max_new_tokens} in a context of {context_length} tokens")


def sft(model: GPT, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], config: TrainConfig,
        *, pad_id: int = 0, device=None, desc: str = "SFT") -> TrainResult:
    """Supervised fine-tuning on the demonstrations, in place: each step, ``config.batch_size`` of them
    (all, when there are fewer), loss on the response tokens only (``L_SFT = -1/|y| sum_t log pi(y_t | x,
    y_<t)``, :func:`paperlab.align.sft_batch`)."""
    check_demonstrations(prompts, responses, model.config.context_length)
    n = len(prompts)

    def sample(generator: torch.Generator) -> tuple:
        chosen = torch.randperm(n, generator=generator)[:config.batch_size].tolist()
        return align.sft_batch([prompts[i] for i in chosen], [responses[i] for i in chosen], pad_id=pad_id)

    return train(model, seeded_batches(sample, config.seed), lambda m, batch: m.loss(*batch), config,
                 device=device, desc=desc)


# --------------------------------------------------------------------------------------------------
# DITTO and SPIN: DPO on comparisons made online from the policy's own samples
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnlineDPOConfig:
    """DITTO's loop (defaults: the authors' ``ditto-mistral-7b-instruct.yaml``, learning rate aside).

    - ``train``: the DPO steps (``steps``: 40 in the paper's config; constant learning rate after a
      warmup of a quarter of the steps: ``min_lr_ratio=1``); ``train.batch_size``: demonstration prompts
      per step (8 there); each step draws ``pairs_per_prompt`` pairs per prompt (their ``rescale_batch`` = 3).
    - ``beta``: DPO's beta (0.05). ``n_samples``: samples per prompt and iteration (10).
      ``resample_every``: steps per iteration (10: samples are drawn at steps 1, 11, 21, 31).
    - ``mix``: fractions of expert, replay and inter pairs in a batch (0.7, 0.2, 0.1).
    - ``reference``: ``"sft"`` (DITTO: the reference is ``pi_0`` and stays frozen) or ``"previous"`` (SPIN:
      the policy at the start of each iteration).
    - ``max_new_tokens``, ``temperature``: sampling (1.0 as in the paper).
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=40, batch_size=8, lr=1e-4, warmup_steps=10, min_lr_ratio=1.0, weight_decay=0.0))
    beta: float = 0.05
    n_samples: int = 10
    resample_every: int = 10
    mix: tuple[float, float, float] = (0.7, 0.2, 0.1)
    pairs_per_prompt: int = 3
    reference: str = "sft"
    max_new_tokens: int = 32
    temperature: float = 1.0

    def __post_init__(self):
        check_type(self, "train", TrainConfig)
        check_ints(self, "n_samples", "resample_every", "pairs_per_prompt", "max_new_tokens")
        check_numbers(self, "beta", "temperature", low=0, open_low=True)
        check_number_tuple(self, "mix", low=0)
        check_that(self, len(self.mix) == len(KINDS) and abs(sum(self.mix) - 1) < 1e-6, "mix",
                   f"{len(KINDS)} fractions for {KINDS} that sum to 1")
        check_choice(self, "reference", ("sft", "previous"))

    @property
    def n_iterations(self) -> int:
        return -(-self.train.steps // self.resample_every)


class OnlineDPO:
    """DITTO (or SPIN) for :func:`paperlab.train.train`: ``train(policy, dpo.get_batch(policy),
    dpo.loss_fn, config.train)``.

    ``reference``: ``pi_0``, the SFT model (copied and frozen here). At steps ``1, 1 + resample_every,
    ...`` :meth:`get_batch` samples from the policy being trained (a new iteration), computes the
    reference log-probabilities of the new samples once, and rebuilds the comparisons
    (:func:`build_pairs`); every step draws a batch of them in the config's mix (:func:`draw_pairs`).
    :meth:`loss_fn` is the mean :func:`paperlab.align.dpo_loss` of the batch.
    ``log``: per iteration, the number of pairs of each kind, the pairs left out as identical, the share
    of samples that ended (emitted the separator) within ``max_new_tokens``, and the steps that drew no
    pair (every sample equalled its demonstration; such a step has zero gradient).
    """

    def __init__(self, reference: GPT, prompts: Sequence[Sequence[int]],
                 demonstrations: Sequence[Sequence[int]], config: OnlineDPOConfig, *, stop_id: int,
                 pad_id: int = 0, seed: int = 0):
        if not isinstance(config, OnlineDPOConfig):
            raise TypeError(f"config must be an OnlineDPOConfig, got {type(config).__name__}")
        check_demonstrations(prompts, demonstrations, reference.config.context_length, config.max_new_tokens)
        self.prompts = [list(p) for p in prompts]
        self.demonstrations = [list(d) for d in demonstrations]
        self.config, self.stop_id, self.pad_id, self.seed = config, stop_id, pad_id, seed
        self.reference = align.freeze(reference)
        self.samples: list[list[list[list[int]]]] = []  # [iteration][prompt][j]
        self.reference_logps: dict[Response, float] = {}
        self.pairs: dict[str, list[Pair]] = {kind: [] for kind in KINDS}
        self.batch: list[Pair] = []
        self.log: list[dict] = []
        demos = [Response(p) for p in range(len(self.prompts))]
        self.reference_logps.update(self._logps(self.reference, demos))

    # ---------------------------------------------------------------- responses and their log-probabilities
    def tokens(self, response: Response) -> list[int]:
        if response.is_demonstration:
            return self.demonstrations[response.prompt]
        return self.samples[response.iteration][response.prompt][response.index]

    def _logps(self, model: GPT, responses: list[Response], batch_size: int = 512) -> dict[Response, float]:
        out = {}
        with torch.no_grad():
            for start in range(0, len(responses), batch_size):
                chunk = responses[start:start + batch_size]
                values = sequence_logprob(model, [self.prompts[r.prompt] for r in chunk],
                                          [self.tokens(r) for r in chunk], pad_id=self.pad_id)
                out.update(zip(chunk, values.float().cpu().tolist()))
        return out

    # ---------------------------------------------------------------- one iteration: sample, re-pair
    def resample(self, policy: GPT, step: int) -> None:
        """Iteration ``t = len(self.samples)``: ``n_samples`` samples per prompt from ``policy``, their
        reference log-probabilities, and the comparisons rebuilt (SPIN: the reference becomes ``policy``)."""
        c = self.config
        rows = [p for p in self.prompts for _ in range(c.n_samples)]
        device = next(policy.parameters()).device
        generator = torch.Generator(device=device).manual_seed(batch_seed(self.seed, step) % 2**63)
        out = generate(policy, rows, c.max_new_tokens, temperature=c.temperature, eos_id=self.stop_id,
                       pad_id=self.pad_id, generator=generator)
        t = len(self.samples)
        self.samples.append([out[p * c.n_samples:(p + 1) * c.n_samples] for p in range(len(self.prompts))])
        new = [Response(p, t, j) for p in range(len(self.prompts)) for j in range(c.n_samples)]
        if c.reference == "previous":  # SPIN: compare against the policy as it is now
            self.reference = align.freeze(policy)
            demos = [Response(p) for p in range(len(self.prompts))]
            self.reference_logps = self._logps(self.reference, demos + new)
        else:
            self.reference_logps.update(self._logps(self.reference, new))
        self.pairs = build_pairs(self.samples, self.demonstrations)
        kept = {kind: len(v) for kind, v in self.pairs.items()}
        possible = self._possible_pairs(t)
        self.log.append({"iteration": t, "step": step, "pairs": kept,
                         "identical_left_out": sum(possible[k] - kept[k] for k in KINDS),
                         "steps_without_pairs": 0,
                         "ended": sum(bool(s) and s[-1] == self.stop_id for s in out) / len(out)})

    def _possible_pairs(self, last: int) -> dict[str, int]:
        n, p = self.config.n_samples, len(self.prompts)
        return {"expert": p * n, "replay": p * n * last, "inter": p * n * n * last * (last + 1) // 2}

    # ---------------------------------------------------------------- the batch and the loss
    def get_batch(self, policy: GPT) -> Callable[[int, int, int], tuple]:
        """The ``get_batch(step, rank, world_size)`` of :func:`paperlab.train.train` for ``policy``."""

        def get_batch(step: int, rank: int = 0, world_size: int = 1) -> tuple:
            if (step - 1) % self.config.resample_every == 0:
                self.resample(policy, step)
            rng = random.Random(batch_seed(self.seed, step, rank))
            n_prompts = len(self.prompts)
            chosen_prompts = rng.sample(range(n_prompts), min(self.config.train.batch_size, n_prompts))
            pool = build_pairs(self.samples, self.demonstrations, prompts=sorted(chosen_prompts)) \
                if len(chosen_prompts) < n_prompts else self.pairs
            counts = mix_counts(self.config.mix, self.config.pairs_per_prompt * len(chosen_prompts))
            self.batch = draw_pairs(pool, counts, rng)
            return (torch.arange(len(self.batch)),)

        return get_batch

    def loss_fn(self, policy: GPT, batch: tuple) -> torch.Tensor:
        """Mean DPO loss of the pairs drawn for this step (``batch[0]`` indexes them)."""
        pairs = [self.batch[i] for i in batch[0].tolist()]
        if not pairs:  # every sample equalled its demonstration: identical pairs have zero DPO gradient
            self.log[-1]["steps_without_pairs"] += 1
            return sum(p.sum() for p in policy.parameters() if p.requires_grad) * 0.0
        prompts = [self.prompts[p.prompt] for p in pairs]
        logps = sequence_logprob(policy, prompts + prompts, [self.tokens(p.chosen) for p in pairs]
                                 + [self.tokens(p.rejected) for p in pairs], pad_id=self.pad_id)
        policy_chosen, policy_rejected = logps[:len(pairs)], logps[len(pairs):]
        reference = torch.tensor([[self.reference_logps[p.chosen], self.reference_logps[p.rejected]]
                                  for p in pairs], device=logps.device, dtype=logps.dtype)
        return align.dpo_loss(policy_chosen, policy_rejected, reference[:, 0], reference[:, 1],
                              self.config.beta).mean()


# --------------------------------------------------------------------------------------------------
# Answers: every method samples through paperlab.llm
# --------------------------------------------------------------------------------------------------
def answer(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], *, seed: int, max_tokens: int = 32,
           temperature: float = 1.0) -> list[str]:
    """One message per prompt, sampled at ``temperature`` through :class:`paperlab.llm.TinyLM` and cut at
    the separator (what the judge reads)."""
    model_llm = llm.TinyLM(model, tokenizer, seed=seed)
    completions = model_llm.complete(list(prompts), n=1, temperature=temperature, max_tokens=max_tokens,
                                     stop=SEPARATOR)
    return [c[0].text.strip() for c in completions]


def few_shot_prompts(demos: Sequence[Example], prompts: Sequence[str], tokenizer: Tokenizer,
                     context_length: int, max_tokens: int) -> tuple[list[str], int]:
    """Few-shot prompts (demonstrations, then the prompt) with as many demonstrations as the context
    holds together with ``max_tokens`` new tokens (the latest ones kept); returns the prompts and that
    number."""
    if not demos:
        raise ValueError("no demonstrations: few-shot prompting needs at least one")
    for k in range(len(demos), 0, -1):
        texts = [few_shot_prompt(list(demos[-k:]), p) for p in prompts]
        if max(len(tokenizer.encode(t, add_bos=True)) for t in texts) + max_tokens <= context_length + 1:
            return texts, k
    raise ValueError(f"not even one demonstration fits the context of {context_length} tokens with "
                     f"max_tokens = {max_tokens}")
