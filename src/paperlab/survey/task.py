"""The chapter's one synthetic task: adding two numbers, with an exact checker as the gold reward.

A question is a pair ``(a, b)`` of integers in ``[0, 10^n_digits)``; the prompt is the text ``"a+b="`` and
a response is the answer's digits followed by ``<eos>``. Because the truth is known, every proxy (a
majority vote, a learnt reward model, a weak supervisor's labels, the model checking itself) can be
compared with it:

- **gold reward** ``r*(q, y) = 1`` if ``y`` is exactly the decimal sum, else 0 (so its mean is accuracy);
- **checks**: the prompt ``"a+b=c?"`` with the response ``"y"`` (c is the sum) or ``"n"``; wrong
  candidates are *near misses* (off by 1 or 10 in either direction, the errors a model that mishandles a
  carry makes), so checking is not trivial;
- the questions are split, disjointly, into **demonstrations** (questions with written answers: the
  scarce human labels), a **transfer** set (questions a second kind of label is collected on: checks, or
  a weak supervisor's answers), **unlabelled prompts** (questions without answers: what automated
  signals work on) and a **test** set.

Characters only, so the tokenizer is a :class:`paperlab.tokenizers.CharTokenizer` over ``0-9 + = ? y n``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from paperlab.tokenizers import CharTokenizer

__all__ = ["TaskConfig", "Question", "AdditionTask"]

ALPHABET = "0123456789+=?yn"
NEAR_MISS_OFFSETS = (-10, -1, 1, 10)


@dataclass(frozen=True)
class TaskConfig:
    """Sizes of the task: ``n_demos`` questions come with answers, ``n_transfer`` get a second kind of
    label, ``n_unlabelled`` come bare and ``n_test`` are held out; all disjoint, drawn by the seed."""

    n_digits: int = 2
    n_demos: int = 1000
    n_transfer: int = 1000
    n_unlabelled: int = 2000
    n_test: int = 500

    def __post_init__(self) -> None:
        if not isinstance(self.n_digits, int) or not 1 <= self.n_digits <= 4:
            raise ValueError(f"TaskConfig.n_digits must be an integer in 1..4, got {self.n_digits!r}")
        for name in ("n_demos", "n_transfer", "n_unlabelled", "n_test"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TaskConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        total = self.n_demos + self.n_transfer + self.n_unlabelled + self.n_test
        if total > (10**self.n_digits) ** 2:
            raise ValueError(f"TaskConfig asks for {total} distinct questions; only "
                             f"{(10**self.n_digits) ** 2} exist with {self.n_digits}-digit operands")


@dataclass(frozen=True)
class Question:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    def check_prompt(self, candidate: str) -> str:
        """The checking question: ``"a+b=c?"``."""
        return f"{self.a}+{self.b}={candidate}?"


class AdditionTask:
    """The questions of one seed, the tokenizer, the gold reward and the text formats."""

    def __init__(self, config: TaskConfig, seed: int = 0):
        self.config, self.seed = config, seed
        rng = random.Random(seed)
        size = 10**config.n_digits
        drawn = rng.sample(range(size * size), config.n_demos + config.n_transfer + config.n_unlabelled
                           + config.n_test)
        questions = [Question(i // size, i % size) for i in drawn]
        cuts = [config.n_demos, config.n_transfer, config.n_unlabelled]
        self.demos = questions[: cuts[0]]
        self.transfer = questions[cuts[0]: cuts[0] + cuts[1]]
        self.unlabelled = questions[cuts[0] + cuts[1]: sum(cuts)]
        self.test = questions[sum(cuts):]
        self.tokenizer = CharTokenizer.fit([ALPHABET])
        self.max_answer_tokens = config.n_digits + 2  # the digits of the sum and <eos>

    # ------------------------------------------------------------------ the truth
    def parse(self, text: str) -> int | None:
        """The number a response states, or None if it is not a plain decimal number (no leading zeros)."""
        if not text.isdigit() or (len(text) > 1 and text[0] == "0") or len(text) > self.config.n_digits + 1:
            return None
        return int(text)

    def gold(self, question: Question, text: str) -> float:
        """The gold reward: 1.0 if ``text`` is exactly the sum, else 0.0."""
        return float(self.parse(text) == question.a + question.b)

    def near_miss(self, question: Question, rng: random.Random) -> str:
        """A plausible wrong answer: the sum off by 1 or 10 (never negative)."""
        total = question.a + question.b
        offsets = [d for d in NEAR_MISS_OFFSETS if total + d >= 0]
        return str(total + rng.choice(offsets))

    # ------------------------------------------------------------------ token ids
    def prompt_ids(self, question: Question) -> list[int]:
        """``<bos> a+b=``."""
        return self.tokenizer.encode(question.prompt, add_bos=True)

    def answer_ids(self, text: str) -> list[int]:
        """A response: its characters and ``<eos>``."""
        return self.tokenizer.encode(text, add_eos=True)

    def check_ids(self, question: Question, candidate: str) -> list[int]:
        """``<bos> a+b=c?``."""
        return self.tokenizer.encode(question.check_prompt(candidate), add_bos=True)

    def decode(self, ids) -> str:
        """Response ids -> text, up to the first ``<eos>``. A response with any other special token
        (``<pad>``, ``<bos>``, ``<unk>``) decodes to ``""``: not an answer."""
        ids = list(ids)
        if self.tokenizer.eos_id in ids:
            ids = ids[: ids.index(self.tokenizer.eos_id)]
        if any(i in self.tokenizer.special_ids for i in ids):
            return ""
        return self.tokenizer.decode(ids)

    @property
    def context_length(self) -> int:
        """Longest sequence the model sees: ``<bos> a+b=c? y <eos>`` with the widest numbers."""
        n = self.config.n_digits
        return 1 + (n + 1 + n + 1 + (n + 1) + 1) + 2
