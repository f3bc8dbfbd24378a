"""DITTO's two prompted roles with a reader's real model (:mod:`paperlab.llm`): the few-shot baseline and
the pairwise judge.

The paper prompts GPT-4 in two places: as a baseline (write the new message given the author's
demonstrations) and as the judge (which of two outputs is closer to the author's writing). The book's
tiny GPT cannot follow a written instruction, so its chapter plays the baseline with the tiny model's
few-shot continuation and the judge with style classifiers (:mod:`paperlab.ditto.judge`). With a real
instruction-tuned model behind ``PAPERLAB_LLM`` (an OpenAI-compatible server or a local Hugging Face
folder), these functions ask it in plain English:

- :func:`few_shot`: the demonstrations as (request, message) pairs, then the new request; the reply up to
  its first blank line is the message;
- :class:`LLMJudge`: the demonstrations, one request and two outputs, labelled A and B; the model answers
  with one letter. Every pair is asked in both orders at temperature 0 and counts as a win only when
  both orders agree (a tie, 0.5, when they disagree or a reply names neither), so that a judge that
  prefers a position (LLM judges often prefer the first) cannot decide a comparison. The paper does not
  say how it orders the pair; this is our control.

A real model's numbers are that model's: print ``model.name`` beside them, and never mix them with the
tiny model's rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from paperlab import llm
from paperlab.ditto.data import Example

__all__ = ["few_shot_prompt", "few_shot", "judge_prompt", "parse_choice", "LLMJudge"]

FEW_SHOT_INSTRUCTION = ("Here are messages one person wrote, each after the request it answers. Write the "
                        "message for the last request the way this person would: the same greeting, "
                        "wording, punctuation and sign-off habits. Reply with the message only.")
JUDGE_INSTRUCTION = ("Here are messages one person wrote, each after the request it answers. Then come "
                     "two candidate messages, A and B, for a new request. Which one is closer to how this "
                     "person writes, while still making the request? Answer with one letter: A or B.")


def _check_demos(demos: Sequence[Example]) -> list[Example]:
    demos = list(demos)
    if not demos or not all(isinstance(d, Example) for d in demos):
        raise ValueError("give at least one demonstration, each a paperlab.ditto.data.Example")
    return demos


def _shown(demos: Sequence[Example]) -> str:
    return "\n\n".join(f"Request: {d.prompt}\nMessage: {d.message}" for d in demos)


def few_shot_prompt(demos: Sequence[Example], prompt: str) -> str:
    """The instruction, the demonstrations and the new request, for an instruction-following model."""
    return f"{FEW_SHOT_INSTRUCTION}\n\n{_shown(_check_demos(demos))}\n\nRequest: {prompt}\nMessage:"


def few_shot(model: llm.LLM, demos: Sequence[Example], prompts: Sequence[str], *, temperature: float = 1.0,
             max_tokens: int = 64) -> list[str]:
    """The few-shot baseline with ``model``: one message per prompt (its reply up to the first blank line,
    with a leading "Message:" removed)."""
    shots = [few_shot_prompt(demos, p) for p in prompts]
    replies = model.complete(shots, n=1, temperature=temperature, max_tokens=max_tokens)
    return [_message(group[0].text) for group in replies]


def _message(text: str) -> str:
    text = re.sub(r"^\s*message:\s*", "", text.strip(), flags=re.IGNORECASE)
    return text.split("\n\n")[0].strip()


def judge_prompt(demos: Sequence[Example], prompt: str, first: str, second: str) -> str:
    """The judge's question: the demonstrations, the request, ``first`` as A and ``second`` as B."""
    return (f"{JUDGE_INSTRUCTION}\n\n{_shown(_check_demos(demos))}\n\nNew request: {prompt}\n"
            f"A: {first}\nB: {second}\nAnswer:")


def parse_choice(text: str) -> str | None:
    """"A" or "B" from a judge's reply (its first standalone letter A or B), else None."""
    match = re.search(r"\b([AB])\b", text)
    return match.group(1) if match else None


class LLMJudge:
    """A real model as DITTO's pairwise judge for one author (shown ``demos``), both orders per pair."""

    def __init__(self, model: llm.LLM, demos: Sequence[Example], *, max_tokens: int = 4):
        if not isinstance(model, llm.LLM):
            raise ValueError(f"LLMJudge needs a paperlab.llm.LLM, got {type(model).__name__}")
        self.model, self.demos, self.max_tokens = model, _check_demos(demos), max_tokens
        self.unparsed = 0  # replies that named neither letter (counted as ties)

    def wins(self, prompts: Sequence[str], outputs_a: Sequence[str], outputs_b: Sequence[str]) -> np.ndarray:
        """Per prompt: 1 if the model prefers A's output in both orders, 0 if B's in both, else 0.5."""
        prompts, outputs_a, outputs_b = list(prompts), list(outputs_a), list(outputs_b)
        if not prompts or not len(prompts) == len(outputs_a) == len(outputs_b):
            raise ValueError(f"one output of each method per prompt: {len(prompts)} prompts, "
                             f"{len(outputs_a)} and {len(outputs_b)} outputs")
        asked = [judge_prompt(self.demos, p, a, b) for p, a, b in zip(prompts, outputs_a, outputs_b)]
        asked += [judge_prompt(self.demos, p, b, a) for p, a, b in zip(prompts, outputs_a, outputs_b)]
        replies = self.model.complete(asked, n=1, temperature=0.0, max_tokens=self.max_tokens)
        choices = [parse_choice(group[0].text) for group in replies]
        self.unparsed += sum(c is None for c in choices)
        n = len(prompts)
        a_first = np.array([c == "A" for c in choices[:n]])  # A's output shown first and chosen
        a_second = np.array([c == "B" for c in choices[n:]])  # A's output shown second and chosen
        b_first = np.array([c == "B" for c in choices[:n]])
        b_second = np.array([c == "A" for c in choices[n:]])
        return np.where(a_first & a_second, 1.0, np.where(b_first & b_second, 0.0, 0.5))

    def win_rate(self, prompts: Sequence[str], outputs_a: Sequence[str], outputs_b: Sequence[str]) -> float:
        """Share of prompts on which A beats B (ties count half); see :meth:`wins`."""
        return float(self.wins(prompts, outputs_a, outputs_b).mean())
