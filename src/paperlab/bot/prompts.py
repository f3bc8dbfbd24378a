"""How each model role is asked, and how its reply is read: one class for the chapter's tiny models, one
for a real model behind ``PAPERLAB_LLM``.

A role is a :class:`Query` (the prompt, how many samples, temperature, length, stop strings) built from
a problem statement or a search state, and a reader that turns completions into what the method needs:

============  ===============================  ================================================
role          asked with                       read as
============  ===============================  ================================================
``io``        the statement                    the answer
``cot``       the statement                    worked steps, then the answer
``distill``   the statement                    ``task : <meta-task> ; <param> : <value> ...``
``instantiate`` a template and the distilled   parameter values (real models only; the tiny
              problem                          distiller writes them by the template's names)
``propose``   the numbers left (Game of 24)    next steps ``a op b = c ( left : ... )``
``value``     the numbers left                 ``sure`` / ``likely`` / ``impossible``
============  ===============================  ================================================

:class:`TinyPrompts` is also the one home of the training format: :meth:`TinyPrompts.example` gives the
(prompt, response) pair a tiny model is trained on for each role, so training and inference cannot
drift apart. :class:`ChatPrompts` writes instructions in plain English for an instruction-tuned model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from paperlab.bot import tasks

__all__ = ["Query", "Step", "Prompts", "TinyPrompts", "ChatPrompts", "read_step", "VALUE_SCORES"]

# Tree of Thoughts' value map (the reference code's value_outputs_unwrap): summed over the samples
VALUE_SCORES = {"sure": 20.0, "likely": 1.0, "impossible": 0.001}


@dataclass(frozen=True)
class Query:
    """One request to a model: ``n`` completions of ``prompt``."""

    prompt: str
    n: int = 1
    temperature: float = 0.0
    max_tokens: int = 32
    stop: tuple[str, ...] = ()

    @property
    def settings(self) -> tuple:
        """Queries with equal settings can go to a model in one batch."""
        return (self.n, self.temperature, self.max_tokens, self.stop)


@dataclass(frozen=True)
class Step:
    """One Game of 24 step: ``a op b = result``, leaving ``left``."""

    a: int
    op: str
    b: int
    result: int
    left: tuple[int, ...]

    def as_tuple(self) -> tuple:
        return (self.a, self.op, self.b, self.result, self.left)


_STEP = re.compile(r"(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*\(\s*left\s*:\s*([\d\s]*)\)", re.IGNORECASE)


def read_step(text: str) -> Step | None:
    """The first ``a op b = c ( left : ... )`` in ``text`` (None if there is none)."""
    match = _STEP.search(text)
    if not match:
        return None
    a, op, b, result, left = match.groups()
    numbers = tuple(sorted(int(x) for x in left.split()))
    return Step(int(a), op, int(b), int(result), numbers) if numbers else None


def _answer_after_marker(text: str) -> str | None:
    """The text after the last ``answer :`` (any case, any spacing), else None."""
    found = re.findall(r"answer\s*:\s*(.+)", text, flags=re.IGNORECASE)
    return found[-1].strip() if found else None


class Prompts:
    """The interface (see the module docstring). ``instantiate`` takes a
    :class:`paperlab.bot.buffer.Template` and returns None when the distilled text already binds the
    template's parameters by name."""

    name = "prompts"
    binds_params = False  # True: the distilled text already holds the values under the template's names

    def io(self, statement: str) -> Query: ...
    def cot(self, statement: str) -> Query: ...
    def read_answer(self, text: str) -> str | None: ...
    def distill(self, statement: str, temperature: float = 0.0) -> Query: ...
    def instantiate(self, template, distilled: str, error: str | None = None) -> Query | None: ...
    def propose(self, numbers: Sequence[int]) -> Query: ...
    def read_proposals(self, texts: Sequence[str]) -> list[Step]: ...
    def value(self, numbers: Sequence[int]) -> Query: ...

    def read_value(self, texts: Sequence[str]) -> float:
        """Tree of Thoughts' score of a state: the value map summed over the sampled judgements."""
        total = 0.0
        for text in texts:
            words = re.findall(r"[a-z]+", text.lower())
            judgement = words[-1] if words else ""
            total += VALUE_SCORES.get(judgement, 0.0)
        return total


def _numbers(numbers: Sequence[int]) -> str:
    return " ".join(str(int(x)) for x in numbers)


class TinyPrompts(Prompts):
    """The word-level format of the chapter's tiny models: ``<role> : <input> =>`` then the response.

    The tiny distiller writes the parameters under the names a template uses (it was trained to), so
    instantiation needs no extra model call: :meth:`instantiate` returns None.
    """

    name = "tiny"
    binds_params = True
    ROLES = ("distill", "io", "cot", "propose", "value")
    VALUE_WORDS = ("sure", "likely", "impossible")
    MAX_TOKENS = {"io": 24, "cot": 72, "distill": 40, "propose": 16, "value": 2}

    def __init__(self, n_propose: int = 8, n_value: int = 3, temperature: float = 1.0):
        self.n_propose, self.n_value, self.temperature = n_propose, n_value, temperature

    def _query(self, role: str, text: str, **kwargs) -> Query:
        return Query(f"{role} : {text} =>", max_tokens=self.MAX_TOKENS[role], **kwargs)

    def io(self, statement):
        return self._query("io", statement)

    def cot(self, statement):
        return self._query("cot", statement)

    def read_answer(self, text):
        after = _answer_after_marker(text)
        return (after if after is not None else text).strip() or None

    def distill(self, statement, temperature=0.0):
        return self._query("distill", statement, temperature=temperature)

    def instantiate(self, template, distilled, error=None):
        return None

    def propose(self, numbers):
        return self._query("propose", _numbers(numbers), n=self.n_propose, temperature=self.temperature)

    def read_proposals(self, texts):
        return [s for s in (read_step(t) for t in texts) if s is not None]

    def value(self, numbers):
        return self._query("value", _numbers(numbers), n=self.n_value, temperature=self.temperature)

    # ---------------------------------------------------------------- the training format
    def example(self, role: str, problem: tasks.Problem | None = None, phrasing: int = 0,
                state: Sequence[int] | None = None, target: str | None = None) -> tuple[str, str] | None:
        """The (prompt, response) pair a tiny model learns for ``role``: statement roles take a problem
        and a phrasing, ``propose`` and ``value`` a state and its target (a step, or a judgement).
        None when the role has no example for this problem (a Game of 24 that needs fractions has no
        whole-number chain of thought)."""
        if role in ("propose", "value"):
            return (self._query(role, _numbers(state)).prompt, target)
        family = tasks.family(problem.family)
        statement = family.statement(problem, phrasing)
        if role == "distill":
            response = family.distilled(problem, phrasing)
        elif role == "io":
            response = problem.answer
        elif role == "cot":
            response = family.cot(problem)
            if response is None:
                return None
        else:
            raise ValueError(f"unknown role {role!r}; roles: {self.ROLES}")
        return (self._query(role, statement).prompt, response)


class ChatPrompts(Prompts):
    """Plain-English prompts for an instruction-tuned model (``PAPERLAB_LLM=openai:...`` or ``hf:...``).

    The distiller's instructions follow the paper's meta-distiller (key variables, constraints, the
    distilled task; no solving) and ask for the same ``key: value`` lines the tiny distiller writes; the
    propose and value prompts follow Tree of Thoughts' Game of 24 prompts (one worked example each).
    """

    name = "chat"
    PARAMETER_HINTS = ("numbers: the given whole numbers, separated by spaces",
                       "expression: an arithmetic expression",
                       "words: the words to work on, separated by spaces",
                       "position: the chess pieces as letter and square pairs, upper case for White and "
                       "lower case for Black, e.g. K g1 Q d1 k g8 p g7")

    def __init__(self, n_value: int = 3, temperature: float = 0.7):
        self.n_value, self.temperature = n_value, temperature

    def io(self, statement):
        return Query("Solve the problem below. Reply with the final answer only, on one line starting with "
                     f"'Answer:'.\n\nProblem: {statement}", max_tokens=64)

    def cot(self, statement):
        return Query("Solve the problem below. Think step by step, then give the final answer on the last "
                     f"line, starting with 'Answer:'.\n\nProblem: {statement}", max_tokens=512)

    def read_answer(self, text):
        after = _answer_after_marker(text)
        if after is not None:
            return after.strip().strip("`").strip() or None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else None

    def distill(self, statement, temperature=0.0):
        hints = "\n".join(f"- {h}" for h in self.PARAMETER_HINTS)
        return Query(
            "You are an expert at distilling problems. Read the user's problem and extract what is needed to "
            "solve it, without solving it:\n"
            "1. the distilled task: one short line naming the kind of problem (not this instance);\n"
            "2. the key variables and their values, copied exactly from the problem.\n"
            "Reply with exactly these lines and nothing else:\n"
            "Task: <the distilled task>\n<variable name>: <value>\n"
            f"Use these variable names where they apply:\n{hints}\n\nProblem: {statement}",
            temperature=temperature, max_tokens=160)

    def instantiate(self, template, distilled, error=None):
        params = ", ".join(template.params)
        retry = (f"\nYour previous values failed: {error}\nCorrect them." if error else "")
        return Query(
            "You apply a thought template to a new problem. The template solves this kind of problem:\n"
            f"Task: {template.task}\nThought: {template.thought}\nIts program takes the parameters: "
            f"{params}.\n\nDistilled problem:\n{distilled}\n{retry}\n"
            "Reply with one line per parameter, 'name: value', and nothing else.", max_tokens=160)

    def propose(self, numbers):
        return Query(
            "Use numbers and basic arithmetic (+ - * /) to get closer to 24. List possible next steps: each "
            "combines two of the numbers into one whole number and lists the numbers left.\n"
            "Input: 2 8 8 14\nPossible next steps:\n2 + 8 = 10 (left: 8 10 14)\n8 / 2 = 4 (left: 4 8 14)\n"
            "14 + 2 = 16 (left: 8 8 16)\n14 - 8 = 6 (left: 2 6 8)\n"
            f"Input: {_numbers(numbers)}\nPossible next steps:\n", max_tokens=200)

    def read_proposals(self, texts):
        steps = []
        for text in texts:
            steps += [s for s in (read_step(line) for line in text.splitlines()) if s is not None]
        return steps

    def value(self, numbers):
        return Query(
            "Evaluate if the given numbers can reach 24 with + - * / (sure / likely / impossible). End with "
            "the judgement alone on the last line.\n10 14\n10 + 14 = 24\nsure\n1 3 3\n1 * 3 * 3 = 9\n"
            "(1 + 3) * 3 = 12\n1 3 3 are all too small\nimpossible\n5 7 8\n5 + 7 + 8 = 20\n(8 - 5) * 7 = 21\n"
            "I cannot obtain 24 now, but the numbers are within a reasonable range\nlikely\n"
            f"{_numbers(numbers)}\n",
            n=self.n_value, temperature=self.temperature, max_tokens=120)
