"""SaySelf (Xu et al. 2024), from scratch: the two stages that teach a model to state a calibrated
confidence with a self-reflective rationale, on the toolkit's GPT (``paperlab.nn``), its language-model
interface (``paperlab.llm``) and the alignment toolkit (``paperlab.align``).

Stage 1, supervised fine-tuning data (sec. 3.1 of the paper):

1. sample ``N`` reasoning chains per training question from the model (:func:`sample_chains`);
2. cluster the answers, here by normalised exact match (:func:`cluster`; the paper clusters by semantic
   similarity of instructor embeddings);
3. confidence = share of the largest cluster, mapped to 1..10 (:func:`consistency_confidence`);
4. a self-reflective rationale that names the disagreement among the samples (:func:`rationale`; a
   template: the labelled stand-in for the paper's GPT-4 summaries);
5. supervised fine-tuning on ``question -> reasoning, answer, rationale, confidence``
   (:func:`sayself_examples`, :func:`fine_tune`).

Stage 2, reinforcement learning on the confidence only (sec. 3.2): REINFORCE with a leave-one-out
baseline and a KL penalty to the Stage-1 model (:class:`paperlab.align.PolicyGradient`), the reward
:func:`paperlab.sayself.calibration.reward`, and a mask that lets the update reach only the confidence
tokens (:func:`confidence_span`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from paperlab import align, llm
from paperlab.data import lm_batches
from paperlab.nn import GPT
from paperlab.sayself.calibration import parse, reward
from paperlab.sayself.world import KINDS, RELATIONS, Question, World
from paperlab.tokenizers import Tokenizer
from paperlab.train import TrainConfig, TrainResult, seeded_batches, train

__all__ = ["Chain", "read_chain", "sample_chains", "cluster", "consistency_confidence", "rationale",
           "named_values", "Stage1", "stage1", "sayself_examples", "plain_examples", "response_text",
           "fine_tune", "confidence_span", "correct", "reward_fn", "MAX_NEW_TOKENS"]

MAX_NEW_TOKENS = 48  # longest response: a two-hop chain, a rationale naming two alternatives, a confidence


# --------------------------------------------------------------------------------------------------
# Reading a sampled chain
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chain:
    """One sampled answer: the response ``text``, its ``answer`` (normalised; None if unreadable) and
    ``hops``, the entity its reasoning reached at each hop (None where a step does not read as the
    relation's statement about the previous entity)."""

    text: str
    answer: str | None
    hops: tuple[str | None, ...]


def _normalise(answer: str | None) -> str | None:
    """Normalised exact match: case, surrounding spaces and a final "." do not count."""
    if answer is None:
        return None
    answer = answer.strip().rstrip(".").strip().lower()
    return answer or None


def read_chain(question: Question, text: str) -> Chain:
    """The answer and the per-hop entities of a response to ``question``."""
    fields = parse(text)
    steps = [s.strip() for s in (fields.reasoning or "").split(".") if s.strip()]
    hops: list[str | None] = []
    subject = question.person
    for i, relation in enumerate(KINDS[question.kind][1]):
        statement = RELATIONS[relation][2].rstrip(".")  # steps were split at "."
        pattern = re.escape(statement).replace(re.escape("{s}"), re.escape(subject or "?"))
        pattern = pattern.replace(re.escape("{o}"), r"(\w+)")
        match = re.fullmatch(pattern, steps[i]) if i < len(steps) and subject else None
        subject = match.group(1) if match else None
        hops.append(_normalise(subject))
    return Chain(text, _normalise(fields.answer), tuple(hops))


def sample_chains(model: llm.LLM, questions: Sequence[Question], n_samples: int, *,
                  temperature: float = 1.0, max_tokens: int = MAX_NEW_TOKENS) -> list[list[Chain]]:
    """``n_samples`` responses per question from ``model`` (any :class:`paperlab.llm.LLM`), read."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples (N) must be an integer >= 2: consistency needs several samples to "
                         f"compare, got {n_samples!r}")
    if not questions:
        raise ValueError("the question set is empty: give at least one question to sample")
    outs = model.complete([q.prompt for q in questions], n=n_samples, temperature=temperature,
                          max_tokens=max_tokens)
    return [[read_chain(q, c.text) for c in group] for q, group in zip(questions, outs)]


# --------------------------------------------------------------------------------------------------
# Stage 1: consistency, confidence, rationale
# --------------------------------------------------------------------------------------------------
def cluster(answers: Sequence[str | None]) -> list[tuple[str, int]]:
    """Clusters of equal (normalised) answers, largest first (ties: first seen first), as ``(answer,
    size)``; unreadable answers (None) join no cluster. Uses :func:`paperlab.align.majority_vote`'s rule
    for the largest."""
    counts = Counter(a for a in answers if a is not None)
    first = {a: i for i, a in reversed(list(enumerate(answers))) if a is not None}
    return sorted(counts.items(), key=lambda item: (-item[1], first[item[0]]))


def consistency_confidence(size: int, n_samples: int) -> int:
    """``c = clip(round(10 * size / N), 1, 10)``: the share of the N samples in the chosen answer's
    cluster, on the 1..10 scale the model states (sec. 3.1)."""
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples (N) must be an integer >= 2, got {n_samples!r}")
    if not 0 <= size <= n_samples:
        raise ValueError(f"cluster size must be in [0, N = {n_samples}], got {size}")
    return min(10, max(1, round(10 * size / n_samples)))


_DOUBT = {"born_in": "the birthplace", "works_for": "the employer"}


def rationale(question: Question, chains: Sequence[Chain], max_named: int = 2) -> str:
    """The self-reflective rationale for ``question`` from its sampled ``chains`` (the template that
    stands in for the paper's GPT-4 summary): it names the first hop's fact, the one about the person,
    and the values the samples gave for it, most frequent first::

        i am sure of the birthplace                         (every readable sample agrees)
        i am unsure of the birthplace: Dalford or Tiston    (they disagree; up to max_named values)
    """
    doubt = _DOUBT[KINDS[question.kind][1][0]]
    values = cluster([c.hops[0] for c in chains])
    if len(values) <= 1:
        return f"i am sure of {doubt}"
    names = [v.title() for v, _ in values[:max_named]]
    return f"i am unsure of {doubt}: {' or '.join(names)}"


def named_values(reflection: str | None) -> list[str]:
    """The values a rationale names after ``"unsure ...:"`` (normalised); [] for a sure or absent one."""
    if not reflection or ":" not in reflection or "unsure" not in reflection:
        return []
    return [v for v in (_normalise(x) for x in reflection.split(":", 1)[1].split(" or ")) if v]


def response_text(reasoning: str, answer: str, confidence: int, reflection: str | None = None) -> str:
    """The output format: ``reasoning: ... . answer: X. [reflection: ....] confidence: c`` (each field's
    final "." is added here)."""
    middle = f" reflection: {reflection}." if reflection is not None else ""
    return f"reasoning: {reasoning.rstrip('.')}. answer: {answer}.{middle} confidence: {confidence}"


@dataclass(frozen=True)
class Stage1:
    """Stage 1's product for one question: the chosen (largest-cluster) sample, its consistency
    confidence, the rationale and the cluster sizes."""

    question: Question
    chosen: Chain
    confidence: int
    rationale: str
    clusters: tuple[tuple[str, int], ...]


def stage1(questions: Sequence[Question], chains: Sequence[Sequence[Chain]]) -> list[Stage1]:
    """Consistency confidence and rationale per question. Questions whose samples have no readable
    answer, or whose largest cluster has no sample with a reasoning, are dropped (they give no target)."""
    if len(questions) != len(chains):
        raise ValueError(f"questions ({len(questions)}) and chains ({len(chains)}) differ in length")
    out = []
    for question, samples in zip(questions, chains):
        clusters = cluster([c.answer for c in samples])
        if not clusters:
            continue
        top, size = clusters[0]
        # the chosen sample: one of the largest cluster whose reasoning reads hop by hop if any, else one
        # with some reasoning; a cluster without any reasoning gives no target
        in_top = [c for c in samples if c.answer == top and parse(c.text).reasoning]
        if not in_top:
            continue
        chosen = next((c for c in in_top if None not in c.hops), in_top[0])
        out.append(Stage1(question, chosen, consistency_confidence(size, len(samples)),
                          rationale(question, samples), tuple(clusters)))
    return out


def sayself_examples(items: Sequence[Stage1], *, with_rationale: bool = True) -> list[tuple[str, str]]:
    """``(prompt, response)`` texts for Stage-1 SFT: the chosen sample's reasoning and answer, the
    rationale (unless ``with_rationale`` is False: the ablation) and the consistency confidence."""
    out = []
    for item in items:
        fields = parse(item.chosen.text)
        answer = fields.answer.rstrip(".").strip()
        out.append((item.question.prompt, response_text(fields.reasoning, answer, item.confidence,
                                                        item.rationale if with_rationale else None)))
    return out


def plain_examples(questions: Sequence[Question], confidence: int = 10) -> list[tuple[str, str]]:
    """The plain-SFT baseline's data: the gold reasoning and answer, stated with ``confidence`` (10: as a
    writer who knows every answer would state it). No consistency target."""
    return [(q.prompt, response_text(q.reasoning, q.answer, confidence)) for q in questions]


# --------------------------------------------------------------------------------------------------
# Fine-tuning (Stage 1) and the confidence mask and reward (Stage 2)
# --------------------------------------------------------------------------------------------------
def encode_examples(tokenizer: Tokenizer, examples: Sequence[tuple[str, str]]):
    """Token ids: prompts with ``<bos>``, responses with ``<eos>``."""
    prompts = [tokenizer.encode(p, add_bos=True) for p, _ in examples]
    responses = [tokenizer.encode(r, add_eos=True) for _, r in examples]
    return prompts, responses


def fine_tune(model: GPT, tokenizer: Tokenizer, examples: Sequence[tuple[str, str]], config: TrainConfig,
              val_examples: Sequence[tuple[str, str]], *, replay: torch.Tensor | None = None,
              replay_windows: int = 0, device=None, desc: str = "SFT") -> TrainResult:
    """Supervised fine-tuning on the responses only (:func:`paperlab.align.sft_batch`), ``config.batch_size``
    examples per step drawn with replacement; evaluates the response loss on ``val_examples``.

    ``replay``, ``replay_windows``: a token stream (the pretraining corpus) of which ``replay_windows``
    random windows join every step, their next-token loss added to the SFT loss, so that fine-tuning on a
    few hundred questions does not wear away what the base model knows and can do (the paper fine-tunes
    LoRA adapters, which limit how far the model moves, for the same reason)."""
    if not examples:
        raise ValueError("no fine-tuning examples: the question set is empty (or no sample was readable)")
    if not val_examples:
        raise ValueError("no validation examples: hold out at least one question")
    prompts, responses = encode_examples(tokenizer, examples)
    val = align.sft_batch(*encode_examples(tokenizer, val_examples), pad_id=tokenizer.pad_id)
    context = model.config.context_length

    def sample(generator: torch.Generator) -> tuple:
        rows = torch.randint(len(prompts), (config.batch_size,), generator=generator).tolist()
        batch = align.sft_batch([prompts[i] for i in rows], [responses[i] for i in rows],
                                pad_id=tokenizer.pad_id)
        if replay is None or replay_windows == 0:
            return batch
        return (*batch, *lm_batches(replay, replay_windows, context, generator))

    def loss_fn(m: GPT, batch: tuple) -> torch.Tensor:
        loss = m.loss(batch[0], batch[1])  # L_SFT on the response tokens
        return loss + m.loss(batch[2], batch[3]) if len(batch) == 4 else loss  # + L_LM on replayed windows

    @torch.no_grad()
    def eval_fn(m: GPT) -> dict:
        device_ = next(m.parameters()).device
        return {"val_loss": m.loss(val[0].to(device_), val[1].to(device_)).item()}

    return train(model, seeded_batches(sample, config.seed), loss_fn, config, eval_fn=eval_fn, device=device,
                 desc=desc)


def confidence_span(tokenizer: Tokenizer, response: Sequence[int]) -> list[bool]:
    """Which response tokens Stage 2 may change: those after ``confidence:`` (the number and the end of
    sequence), as the authors' response mask does. A response without the marker has no confidence
    tokens; then only its last token (the ``<eos>`` that ended it before any confidence) is optimised, so
    that its reward of -1 teaches the model not to stop there, while its reasoning and answer stay out of
    reach. (The authors optimise the whole response in that case.)"""
    marker = tokenizer.encode("confidence:")
    response = list(response)
    for i in range(len(response) - len(marker) + 1):
        if response[i:i + len(marker)] == marker:
            start = i + len(marker)
            return [j >= start for j in range(len(response))]
    return [j == len(response) - 1 for j in range(len(response))]


def correct(question: Question, answer: str | None) -> bool:
    """The answer is right: normalised exact match with the gold answer (the authors check that the gold
    answer is a substring of the response's answer; with one-word answers the two agree)."""
    return answer is not None and _normalise(answer) == _normalise(question.answer)


def reward_fn(tokenizer: Tokenizer, questions_by_prompt: dict[tuple[int, ...], Question], *,
              needs_reflection: bool):
    """The ``reward_fn(prompts, responses)`` of :class:`paperlab.align.PolicyGradient`: the SaySelf reward
    of each response (:func:`paperlab.sayself.calibration.reward`; -1 when malformed)."""

    def rewards(prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
        out = []
        for prompt, response in zip(prompts, responses):
            question = questions_by_prompt[tuple(prompt)]
            fields = parse(tokenizer.decode(response), needs_reflection=needs_reflection)
            out.append(reward(correct(question, fields.answer), fields.confidence))
        return out

    return rewards


def world_questions(world: World, kinds: tuple[str, ...], people: list[str]) -> list[Question]:
    """Shortcut used by the experiments: :meth:`World.questions`, checked to be non-empty."""
    questions = world.questions(kinds, people)
    if not questions:
        raise ValueError(f"the question set for kinds {kinds} is empty: no people given")
    return questions
