"""The reasoning tasks of the Buffer of Thoughts chapter: generators, exact checkers, phrasings.

Four task families (``FAMILIES``), each with

- a **generator** of problems, reproducible from a seed, with a difficulty label (``"easy"`` / ``"hard"``);
- an **exact checker** of an answer (``check``, or ``why_wrong`` for the reason a wrong one fails);
- **phrasings**: several natural-language statements of the same problem, each paired with the line a
  problem distiller should write for it (the distilled meta-task); the last phrasing is never used in
  training, so the chapter can test a phrasing the models have not seen;
- the **parameters** that define a problem (``numbers`` for the Game of 24, ``expression``, ``words``,
  ``position``), written and read back as text (``format_params`` / ``parse_params``), which is what a
  template's program is instantiated with;
- a **chain of thought** (``cot``): the worked steps that end in ``answer : ...``.

Texts are written as space-separated words and symbols, the way :class:`paperlab.tokenizers.WordTokenizer`
decodes them (``"( 4 + 8 ) * ( 8 - 7 )"``), so that a tiny word-level model reads and writes them; the
parsers also accept ordinary spacing (``"(4+8)*(8-7)"``), which a real model writes.

The families and their answers:

- ``game24``: four numbers from 1 to 13 (every solvable multiset, 1,362 of the 1,820); the answer is an
  expression that uses each given number exactly once with ``+ - * /`` and equals 24, checked with exact
  rational arithmetic (:func:`why_wrong_24`). The authors' validator checks only the value; ours also
  checks that the numbers used are exactly the numbers given.
- ``arithmetic``: an expression of 2 to 4 operations (``+ - *``) on one-digit numbers; the answer is its
  integer value.
- ``word_sorting``: 3 to 7 distinct words; the answer is the words in alphabetical order.
- ``checkmate``: a position with White to move and a mate in one, built from random placements and
  verified with python-chess; the answer is the mating move as ``from-square to-square`` (``d1 d8``);
  any mating move counts, and a real model may also answer in SAN (``Qd8#``).
"""

from __future__ import annotations

import abc
import ast
import functools
import itertools
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import chess

__all__ = [
    "FAMILIES",
    "Problem",
    "Phrasing",
    "Family",
    "family",
    "generate",
    "check",
    "why_wrong",
    "why_wrong_24",
    "solvable_24",
    "all_24_puzzles",
    "integer_steps",
    "solvable_with_integer_steps",
    "SORT_WORDS",
]

FAMILIES: tuple[str, ...] = ("game24", "arithmetic", "word_sorting", "checkmate")
HELD_OUT_PHRASING = -1  # the last phrasing of each family is never used in training


@dataclass(frozen=True)
class Phrasing:
    """One way of stating a problem: ``statement`` is a format string over the problem's rendered fields,
    ``task`` the distilled meta-task line that goes with it."""

    statement: str
    task: str


@dataclass(frozen=True)
class Problem:
    """One problem: its family, its parameters (what a program needs), one reference answer, a difficulty
    label and an id. Any correct answer counts (:func:`check`), not only ``answer``."""

    family: str
    params: dict = field(hash=False, compare=True)
    answer: str = ""
    difficulty: str = "easy"
    uid: str = ""

    def statement(self, phrasing: int = 0) -> str:
        return family(self.family).statement(self, phrasing)

    def to_dict(self) -> dict:
        return {"family": self.family, "params": self.params, "answer": self.answer,
                "difficulty": self.difficulty, "uid": self.uid}

    @classmethod
    def from_dict(cls, data: dict) -> Problem:
        params = dict(data["params"])
        if data["family"] == "checkmate":  # JSON turns the (piece, square) tuples into lists
            params["position"] = [tuple(p) for p in params["position"]]
        return cls(data["family"], params, data["answer"], data["difficulty"], data["uid"])


# --------------------------------------------------------------------------------------------------
# Shared text helpers
# --------------------------------------------------------------------------------------------------
def _spaced(expression: str) -> str:
    """``"(4+8)*2"`` -> ``"( 4 + 8 ) * 2"``: one space between numbers, operators and brackets."""
    return " ".join(re.findall(r"\d+|[-+*/()]", expression))


def _join_list(items: Sequence[str]) -> str:
    """``["4", "7", "8"]`` -> ``"4 , 7 and 8"``."""
    items = list(items)
    return items[0] if len(items) == 1 else " , ".join(items[:-1]) + " and " + items[-1]


class Family(abc.ABC):
    """A task family (see the module docstring). Subclasses define the data, this class the interface;
    each subclass implements the six abstract methods."""

    name: str = ""
    param_names: tuple[str, ...] = ()
    phrasings: tuple[Phrasing, ...] = ()

    # ---------------------------------------------------------------- generation
    @abc.abstractmethod
    def generate(self, n: int, seed: int) -> list[Problem]:
        """``n`` problems drawn reproducibly from ``seed``."""

    # ---------------------------------------------------------------- statements
    @abc.abstractmethod
    def fields(self, problem: Problem) -> dict[str, str]:
        """The problem's parameters rendered for a statement (``{numbers}``, ``{words}``, ...)."""

    def statement(self, problem: Problem, phrasing: int = 0) -> str:
        return self.phrasings[phrasing].statement.format(**self.fields(problem))

    def distilled(self, problem: Problem, phrasing: int = 0) -> str:
        """What a problem distiller should write: ``task : <meta-task> ; <param> : <value> ; ...``."""
        return f"task : {self.phrasings[phrasing].task} ; {self.format_params(problem.params)}"

    # ---------------------------------------------------------------- parameters as text
    def format_params(self, params: dict) -> str:
        return " ; ".join(f"{name} : {self._format_value(name, params[name])}" for name in self.param_names)

    @abc.abstractmethod
    def _format_value(self, name: str, value) -> str:
        """Parameter ``name``'s value as the text a statement and a distilled problem show."""

    def parse_params(self, text: str) -> dict:
        """The parameters written in ``text`` (``"numbers : 4 7 8 8"`` or ``"numbers: 4, 7, 8, 8"``),
        validated; a ValueError names what is missing or malformed."""
        found = _key_values(text)
        params = {}
        for name in self.param_names:
            if name not in found:
                raise ValueError(f"{self.name}: no '{name}' in {text!r}")
            params[name] = self.parse_value(name, found[name])
        return params

    @abc.abstractmethod
    def parse_value(self, name: str, text: str):
        """Parameter ``name`` read back from ``text``; a ValueError names what is malformed."""

    def validate(self, params: dict) -> dict:
        """``params`` checked and normalised (the types a template's program expects)."""
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise ValueError(f"{self.name} needs the parameter(s) {missing}, got {sorted(params)}")
        return {n: self._validate_value(n, params[n]) for n in self.param_names}

    def _validate_value(self, name: str, value):
        return self.parse_value(name, self._format_value(name, value))

    # ---------------------------------------------------------------- answers
    @abc.abstractmethod
    def why_wrong(self, problem: Problem, answer: str | None) -> str | None:
        """None if ``answer`` is correct, else the reason it is not."""

    @abc.abstractmethod
    def cot(self, problem: Problem) -> str | None:
        """Worked steps ending in ``answer : ...`` (None when the family has none for this problem)."""


def _key_values(text: str) -> dict[str, str]:
    """``"task : x ; numbers : 4 7"`` -> ``{"task": "x", "numbers": "4 7"}`` (``;`` or newlines separate)."""
    if not isinstance(text, str):
        raise ValueError(f"expected text, got {type(text).__name__}")
    out = {}
    for part in re.split(r"[;\n]", text):
        key, sep, value = part.partition(":")
        if sep:
            out.setdefault(key.strip().lower(), value.strip())
    return out


# --------------------------------------------------------------------------------------------------
# Game of 24
# --------------------------------------------------------------------------------------------------
_ALLOWED_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _eval_exact(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval_exact(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _ALLOWED_OPS:
        left, right = _eval_exact(node.left, used), _eval_exact(node.right, used)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise ZeroDivisionError("division by zero")
        return left / right
    raise ValueError(f"only whole numbers, + - * / and brackets are allowed, found {ast.dump(node)[:40]}")


def why_wrong_24(numbers: Sequence[int], expression: str | None) -> str | None:
    """None if ``expression`` uses each of ``numbers`` exactly once (no other numbers) and equals 24
    exactly (rational arithmetic: ``8 / 3`` stays 8/3); else the reason. ``"... = 24"`` is accepted."""
    if not isinstance(expression, str) or not expression.strip():
        return "no expression"
    text = expression.replace("×", "*").replace("÷", "/").split("=")[0].strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return f"not an arithmetic expression: {text!r}"
    used: list[int] = []
    try:
        value = _eval_exact(tree, used)
    except ZeroDivisionError:
        return "divides by zero"
    except ValueError as err:
        return str(err)
    if Counter(used) != Counter(numbers):
        return (f"uses {sorted(used)} but the puzzle gives {sorted(numbers)}: each number exactly once, "
                "no others")
    if value != 24:
        return f"equals {value}, not 24"
    return None


_PAIR_OPS = ("+", "*", "-", "/")


def _combine(a: Fraction, b: Fraction) -> list[tuple[str, Fraction]]:
    """Every value of ``a op b`` and ``b op a`` (``+ * - /``), skipping division by zero."""
    out = [("a+b", a + b), ("a*b", a * b), ("a-b", a - b), ("b-a", b - a)]
    if b != 0:
        out.append(("a/b", a / b))
    if a != 0:
        out.append(("b/a", b / a))
    return out


def _search_24(items: list[tuple[Fraction, str]]) -> str | None:
    if len(items) == 1:
        return items[0][1] if items[0][0] == 24 else None
    for i, j in itertools.combinations(range(len(items)), 2):
        (a, x), (b, y) = items[i], items[j]
        rest = [items[k] for k in range(len(items)) if k not in (i, j)]
        for kind, value in _combine(a, b):
            if not _can_make(Fraction(24), tuple(sorted([v for v, _ in rest] + [value]))):
                continue
            text = {"a+b": f"( {x} + {y} )", "a*b": f"( {x} * {y} )", "a-b": f"( {x} - {y} )",
                    "b-a": f"( {y} - {x} )", "a/b": f"( {x} / {y} )", "b/a": f"( {y} / {x} )"}[kind]
            found = _search_24(rest + [(value, text)])
            if found:
                return found
    return None


def _strip_outer(expression: str) -> str:
    if expression.startswith("( ") and expression.endswith(" )"):
        depth = 0
        for i, ch in enumerate(expression):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(expression) - 1:
                return expression
        return expression[2:-2]
    return expression


def solvable_24(numbers: Sequence[int]) -> str | None:
    """One expression that makes 24 from ``numbers`` (exact arithmetic), or None if there is none."""
    return _solve_24_sorted(tuple(sorted(numbers)))


@functools.cache
def _reachable(numbers: tuple[Fraction, ...]) -> frozenset[Fraction]:
    """Every value an expression using each of the sorted ``numbers`` once can take (exact)."""
    if len(numbers) == 1:
        return frozenset(numbers)
    values = set()
    for size in range(1, len(numbers) // 2 + 1):
        for left in set(itertools.combinations(numbers, size)):
            right = list(numbers)
            for x in left:
                right.remove(x)
            for a in _reachable(left):
                for b in _reachable(tuple(right)):
                    values.update(v for _, v in _combine(a, b))
    return frozenset(values)


def _can_make(target: Fraction, numbers: tuple[Fraction, ...]) -> bool:
    """Is ``target`` among :func:`_reachable` ``(numbers)``? Checked split by split, without building the
    whole set: ``a op b = target`` fixes ``b`` for each ``a`` of one side (six operations, six solutions)."""
    if len(numbers) <= 3:
        return target in _reachable(numbers)
    for size in range(1, len(numbers) // 2 + 1):
        for left in set(itertools.combinations(numbers, size)):
            right = list(numbers)
            for x in left:
                right.remove(x)
            right_values = _reachable(tuple(right))
            for a in _reachable(left):
                needed = {target - a, a - target, a + target}  # from a + b, a - b, b - a
                if a != 0:  # a * b = t, a / b = t (b != 0), b / a = t
                    needed.update({target / a, target * a} | ({a / target} if target != 0 else set()))
                if not needed.isdisjoint(right_values):
                    return True
    return False


@functools.cache
def _solve_24_sorted(numbers: tuple[int, ...]) -> str | None:
    if not _can_make(Fraction(24), tuple(Fraction(n) for n in numbers)):
        return None
    return _strip_outer(_search_24([(Fraction(n), str(n)) for n in numbers]))


def integer_steps(numbers: Sequence[int]) -> list[tuple[int, str, int, int, tuple[int, ...]]]:
    """Every step of the tree search over whole numbers: pick two of ``numbers``, ``a >= b``, and replace
    them by ``a + b``, ``a * b``, ``a - b`` or (when ``b`` divides ``a``) ``a / b``.

    Returns ``(a, op, b, result, left)`` with ``left`` the sorted numbers after the step (the Tree of
    Thoughts state), each distinct step once.
    """
    numbers = list(numbers)
    out, seen = [], set()
    for i, j in itertools.combinations(range(len(numbers)), 2):
        a, b = max(numbers[i], numbers[j]), min(numbers[i], numbers[j])
        rest = [numbers[k] for k in range(len(numbers)) if k not in (i, j)]
        candidates = [("+", a + b), ("*", a * b), ("-", a - b)]
        if b != 0 and a % b == 0:
            candidates.append(("/", a // b))
        for op, result in candidates:
            left = tuple(sorted(rest + [result]))
            if (a, op, b, left) not in seen:
                seen.add((a, op, b, left))
                out.append((a, op, b, result, left))
    return out


@functools.cache
def solvable_with_integer_steps(state: tuple[int, ...]) -> bool:
    """Can the sorted numbers ``state`` reach exactly 24 by :func:`integer_steps`? (``(24,)`` can.)"""
    if len(state) == 1:
        return state[0] == 24
    return any(solvable_with_integer_steps(step[4]) for step in integer_steps(state))


@functools.cache
def _count_integer_solutions(state: tuple[int, ...]) -> int:
    if len(state) == 1:
        return int(state[0] == 24)
    return sum(_count_integer_solutions(step[4]) for step in integer_steps(state))


@functools.lru_cache(maxsize=1)
def all_24_puzzles() -> tuple[tuple[int, ...], ...]:
    """Every multiset of four numbers from 1 to 13 that can make 24 (exact arithmetic), sorted: 1,362."""
    return tuple(c for c in itertools.combinations_with_replacement(range(1, 14), 4) if solvable_24(c))


def _integer_path(numbers: tuple[int, ...]) -> list[tuple[int, str, int, int, tuple[int, ...]]] | None:
    """A shortest list of integer steps from ``numbers`` to (24,), or None."""
    if len(numbers) == 1:
        return [] if numbers[0] == 24 else None
    for step in integer_steps(numbers):
        if solvable_with_integer_steps(step[4]):
            rest = _integer_path(step[4])
            if rest is not None:
                return [step] + rest
    return None


class Game24(Family):
    name = "game24"
    param_names = ("numbers",)
    phrasings = (
        Phrasing("make 24 from {listed} , each once , with + - * / .",
                 "combine four numbers with + - * / to reach 24"),
        Phrasing("cards {numbers} : reach 24 with arithmetic , every card once .",
                 "make 24 from four cards using arithmetic"),
        Phrasing("game of 24 : {numbers}", "game of 24 with four numbers"),
        Phrasing("can you get 24 from {listed} ?", "reach the target 24 from four numbers"),
    )

    def generate(self, n: int, seed: int) -> list[Problem]:
        puzzles = list(all_24_puzzles())
        random.Random(seed).shuffle(puzzles)
        return [self.problem(p) for p in puzzles[:n]]

    def problem(self, numbers: Sequence[int]) -> Problem:
        numbers = tuple(sorted(int(x) for x in numbers))
        answer = solvable_24(numbers)
        if answer is None:
            raise ValueError(f"game24: {list(numbers)} cannot make 24")
        # fewest whole-number solution paths (or none: fractions needed) = hard; see the chapter
        hard = _count_integer_solutions(numbers) <= HARD_24_SOLUTIONS
        return Problem(self.name, {"numbers": list(numbers)}, answer, "hard" if hard else "easy",
                       "24-" + "-".join(map(str, numbers)))

    def fields(self, problem):
        numbers = [str(x) for x in problem.params["numbers"]]
        return {"numbers": " ".join(numbers), "listed": _join_list(numbers)}

    def _format_value(self, name, value):
        return " ".join(str(int(x)) for x in value)

    def parse_value(self, name, text):
        numbers = [int(x) for x in re.findall(r"-?\d+", text)]
        if len(numbers) != 4 or not all(1 <= x <= 13 for x in numbers):
            raise ValueError(f"game24 needs four whole numbers from 1 to 13, got {text!r}")
        return numbers

    def why_wrong(self, problem, answer):
        return why_wrong_24(problem.params["numbers"], answer)

    def cot(self, problem):
        path = _integer_path(tuple(problem.params["numbers"]))
        if path is None:
            return None
        steps = [f"{a} {op} {b} = {r} ( left : {' '.join(map(str, left))} )" for a, op, b, r, left in path]
        return " ; ".join(steps) + f" ; answer : {steps_to_expression(problem.params['numbers'], path)}"


def steps_to_expression(numbers: Sequence[int], steps) -> str:
    """The expression a list of steps ``(a, op, b, result, left)`` builds from ``numbers``: each number in
    play keeps the expression that produced it. A step whose operands are not in play raises ValueError."""
    pool: list[tuple[int, str]] = [(int(x), str(x)) for x in numbers]

    def take(value: int) -> str:
        for k, (v, text) in enumerate(pool):
            if v == value:
                pool.pop(k)
                return text
        raise ValueError(f"step uses {value}, which is not among the numbers left {[v for v, _ in pool]}")

    for a, op, b, result, _ in steps:
        x, y = take(a), take(b)
        pool.append((result, f"( {x} {op} {y} )"))
    if len(pool) != 1:
        raise ValueError(f"the steps leave {len(pool)} numbers, not one")
    return _strip_outer(pool[0][1])


HARD_24_SOLUTIONS = 6  # at most this many whole-number solution paths (of the step tree) = "hard"


# --------------------------------------------------------------------------------------------------
# Multi-step arithmetic
# --------------------------------------------------------------------------------------------------
_PRECEDENCE = {"+": 1, "-": 1, "*": 2}
ARITH_MAX = 200  # every intermediate value lies in [0, ARITH_MAX]


def _render(node) -> str:
    if isinstance(node, int):
        return str(node)
    op, left, right = node
    left_text, right_text = _render(left), _render(right)
    if not isinstance(left, int) and _PRECEDENCE[left[0]] < _PRECEDENCE[op]:
        left_text = f"( {left_text} )"
    if not isinstance(right, int) and (_PRECEDENCE[right[0]] < _PRECEDENCE[op]
                                       or (_PRECEDENCE[right[0]] == _PRECEDENCE[op] and op == "-")):
        right_text = f"( {right_text} )"
    return f"{left_text} {op} {right_text}"


def _evaluate_steps(node, steps: list[str]) -> int:
    if isinstance(node, int):
        return node
    op, left, right = node
    a, b = _evaluate_steps(left, steps), _evaluate_steps(right, steps)
    value = a + b if op == "+" else a - b if op == "-" else a * b
    steps.append(f"{a} {op} {b} = {value}")
    return value


def _random_tree(rng: random.Random, n_ops: int):
    if n_ops == 0:
        return rng.randint(1, 9)
    left_ops = rng.randint(0, n_ops - 1)
    return (rng.choice("+-*"), _random_tree(rng, left_ops), _random_tree(rng, n_ops - 1 - left_ops))


def _in_range(node) -> bool:
    steps: list[str] = []
    _evaluate_steps(node, steps)
    return all(0 <= int(s.split("=")[1]) <= ARITH_MAX for s in steps)


def evaluate_arithmetic(expression: str) -> int:
    """The value of an expression of whole numbers, ``+ - *`` and brackets (exact; ValueError otherwise)."""
    used: list[int] = []
    try:
        tree = ast.parse(expression.replace("×", "*"), mode="eval")
        value = _eval_exact(tree, used)
    except (SyntaxError, ZeroDivisionError) as err:
        raise ValueError(f"not an arithmetic expression: {expression!r} ({err})") from None
    if value.denominator != 1:
        raise ValueError(f"{expression!r} is not a whole number")
    return int(value)


class Arithmetic(Family):
    name = "arithmetic"
    param_names = ("expression",)
    phrasings = (
        Phrasing("what is {expression} ?", "evaluate an arithmetic expression"),
        Phrasing("compute {expression} .", "compute the value of an expression"),
        Phrasing("a shop adds up {expression} . total ?", "work out a multi-step calculation"),
        Phrasing("calculate {expression} step by step .", "calculate an expression with several operations"),
    )

    def generate(self, n, seed):
        rng, out, seen = random.Random(seed), [], set()
        while len(out) < n:
            n_ops = rng.choice((2, 3, 4))
            tree = _random_tree(rng, n_ops)
            text = _render(tree)
            if text in seen or not _in_range(tree):
                continue
            seen.add(text)
            out.append(Problem(self.name, {"expression": text}, str(evaluate_arithmetic(text)),
                               "hard" if n_ops == 4 else "easy", f"ar-{len(out)}"))
        return out

    def fields(self, problem):
        return {"expression": problem.params["expression"]}

    def _format_value(self, name, value):
        return _spaced(str(value))

    def parse_value(self, name, text):
        expression = _spaced(text)
        if not expression or re.sub(r"[\d\s+\-*()]", "", text.strip()):
            raise ValueError(f"arithmetic needs an expression of whole numbers, + - * and brackets, got "
                             f"{text!r}")
        evaluate_arithmetic(expression)  # raises for a malformed one
        return expression

    def why_wrong(self, problem, answer):
        if not isinstance(answer, str) or not re.fullmatch(r"\s*-?\d+\s*", answer):
            return f"not a whole number: {answer!r}"
        expected = evaluate_arithmetic(problem.params["expression"])
        return None if int(answer) == expected else f"{int(answer)} is not {expected}"

    def cot(self, problem):
        steps: list[str] = []
        value = _evaluate_steps(ast_to_tree(problem.params["expression"]), steps)
        return " ; ".join(steps) + f" ; answer : {value}"


def ast_to_tree(expression: str):
    """The ``(op, left, right)`` tree of an expression of whole numbers and ``+ - *``."""
    def convert(node):
        if isinstance(node, ast.Expression):
            return convert(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult):
            return (_ALLOWED_OPS[type(node.op)], convert(node.left), convert(node.right))
        raise ValueError(f"unsupported part of {expression!r}")
    return convert(ast.parse(expression, mode="eval"))


# --------------------------------------------------------------------------------------------------
# Word sorting
# --------------------------------------------------------------------------------------------------
SORT_WORDS: tuple[str, ...] = (
    "apple", "bread", "cloud", "dream", "eagle", "flame", "grape", "house", "island", "jelly", "kite",
    "lemon", "mango", "night", "ocean", "piano", "queen", "river", "stone", "tiger", "umbrella", "violin",
    "water", "xylophone", "yacht", "zebra", "anchor", "button", "candle", "desert", "engine", "forest",
    "garden", "hammer", "insect", "jacket", "kettle", "ladder", "mirror", "needle",
)


class WordSorting(Family):
    name = "word_sorting"
    param_names = ("words",)
    phrasings = (
        Phrasing("sort alphabetically : {words}", "sort words into alphabetical order"),
        Phrasing("dictionary order : {words} .", "order words as in a dictionary"),
        Phrasing("list {words} from a to z .", "arrange a list of words from a to z"),
        Phrasing("alphabetize {words} .", "alphabetize a list of words"),
    )

    def generate(self, n, seed):
        rng, out = random.Random(seed), []
        for i in range(n):
            k = rng.randint(3, 7)
            words = rng.sample(SORT_WORDS, k)
            out.append(Problem(self.name, {"words": words}, " ".join(sorted(words)),
                               "hard" if k >= 6 else "easy", f"ws-{i}"))
        return out

    def fields(self, problem):
        return {"words": " ".join(problem.params["words"])}

    def _format_value(self, name, value):
        return " ".join(value)

    def parse_value(self, name, text):
        words = re.findall(r"[A-Za-z]+", text)
        if not words:
            raise ValueError(f"word_sorting needs a list of words, got {text!r}")
        return [w.lower() for w in words]

    def why_wrong(self, problem, answer):
        if not isinstance(answer, str):
            return "no answer"
        given = [w.lower() for w in re.findall(r"[A-Za-z]+", answer)]
        expected = sorted(problem.params["words"])
        if Counter(given) != Counter(expected):
            return f"the answer has the words {given}, not the given ones {sorted(expected)}"
        return None if given == expected else f"{' '.join(given)} is not in alphabetical order"

    def cot(self, problem):
        words = problem.params["words"]
        letters = " ".join(w[0] for w in words)
        ordered = " ".join(w[0] for w in sorted(words))
        return (f"first letters : {letters} ; in order : {ordered} ; "
                f"answer : {' '.join(sorted(words))}")


# --------------------------------------------------------------------------------------------------
# Checkmate in one
# --------------------------------------------------------------------------------------------------
PIECE_NAMES = {"K": "king", "Q": "queen", "R": "rook", "B": "bishop", "N": "knight", "P": "pawn"}


def board_of(position: Sequence[tuple[str, str]]) -> chess.Board:
    """A board with the ``(piece, square)`` pairs (``("Q", "d1")``: white queen; lower case is Black) and
    White to move, no castling; ValueError if a piece or square is malformed or the position is illegal."""
    board = chess.Board(None)
    for piece, square in position:
        try:
            board.set_piece_at(chess.parse_square(square), chess.Piece.from_symbol(piece))
        except (ValueError, KeyError):
            raise ValueError(f"checkmate: bad piece or square {piece!r} {square!r}") from None
    board.turn = chess.WHITE
    if not board.is_valid():
        raise ValueError(f"checkmate: not a legal position ({board.status()!r}): {board.fen()}")
    return board


def mating_moves(board: chess.Board) -> list[chess.Move]:
    """Every legal move of the side to move that checkmates at once."""
    out = []
    for move in board.legal_moves:
        if board.gives_check(move):
            board.push(move)
            if board.is_checkmate():
                out.append(move)
            board.pop()
    return out


def checking_moves(board: chess.Board) -> list[chess.Move]:
    return [m for m in board.legal_moves if board.gives_check(m)]


def _move_text(move: chess.Move) -> str:
    return f"{chess.square_name(move.from_square)} {chess.square_name(move.to_square)}"


EDGE_SQUARES = [s for s in chess.SQUARES if chess.square_rank(s) in (0, 7) or chess.square_file(s) in (0, 7)]


def _random_mate_position(rng: random.Random) -> list[tuple[str, str]] | None:
    """One random placement (Black's king on an edge, White's king near it, one or two White pieces, maybe
    Black pawns); returned only if it is legal and White has a mate in one."""
    black_king = rng.choice(EDGE_SQUARES)
    taken = {black_king}
    pieces = [("k", black_king)]
    near = [s for s in chess.SQUARES if chess.square_distance(s, black_king) == 2]
    white_king = rng.choice(near if rng.random() < 0.7 else chess.SQUARES)
    if white_king in taken or chess.square_distance(white_king, black_king) < 2:
        return None
    taken.add(white_king)
    pieces.append(("K", white_king))
    for symbol in rng.sample("QRRBN", rng.choice((1, 1, 2))):
        square = rng.choice([s for s in chess.SQUARES if s not in taken])
        taken.add(square)
        pieces.append((symbol, square))
    for _ in range(rng.choice((0, 0, 1, 2))):
        free = [s for s in chess.SQUARES if s not in taken and 1 <= chess.square_rank(s) <= 6]
        square = rng.choice(free)
        taken.add(square)
        pieces.append(("p", square))
    position = [(p, chess.square_name(s)) for p, s in pieces]
    try:
        board = board_of(position)
    except ValueError:
        return None
    return position if mating_moves(board) else None


class Checkmate(Family):
    name = "checkmate"
    param_names = ("position",)
    phrasings = (
        Phrasing("white : {white} . black : {black} . mate in one .",
                 "find the move that checkmates in one"),
        Phrasing("white has {white} ; black has {black} . find checkmate .",
                 "find a checkmating move for white"),
        Phrasing("puzzle : white {white} , black {black} . white mates .",
                 "solve a mate in one chess puzzle"),
        Phrasing("find mate . white {white} ; black {black} .",
                 "find the mating move in a chess position"),
    )

    def generate(self, n, seed):
        rng, out, seen = random.Random(seed), [], set()
        while len(out) < n:
            position = _random_mate_position(rng)
            if position is None:
                continue
            position = sorted(position, key=lambda p: ("KQRBNPkqrbnp".index(p[0]), p[1]))
            key = tuple(position)
            if key in seen:
                continue
            seen.add(key)
            board = board_of(position)
            n_legal = board.legal_moves.count()
            out.append(Problem(self.name, {"position": position}, _move_text(mating_moves(board)[0]),
                               "hard" if n_legal >= HARD_CHECKMATE_MOVES else "easy", f"cm-{len(out)}"))
        return out

    def fields(self, problem):
        def side(white: bool) -> str:
            named = [f"{PIECE_NAMES[p.upper()]} {s}" for p, s in problem.params["position"]
                     if p.isupper() == white]
            return " , ".join(named)
        return {"white": side(True), "black": side(False)}

    def _format_value(self, name, value):
        return " ".join(f"{p} {s}" for p, s in value)

    def parse_value(self, name, text):
        pairs = re.findall(r"\b([KQRBNPkqrbnp])\s*([a-h][1-8])\b", text)
        if not pairs:
            raise ValueError(f"checkmate needs a position as piece-square pairs (K g1 q d8 ...), got "
                             f"{text!r}")
        position = [(p, s) for p, s in pairs]
        board_of(position)  # raises for an illegal position
        return position

    def why_wrong(self, problem, answer):
        if not isinstance(answer, str) or not answer.strip():
            return "no move"
        board = board_of(problem.params["position"])
        squares = re.findall(r"[a-h][1-8]", answer)
        move = None
        if len(squares) >= 2:
            for legal in board.legal_moves:
                if _move_text(legal) == f"{squares[0]} {squares[1]}":
                    move = legal
                    break
        if move is None:
            try:
                move = board.parse_san(answer.strip().split()[0])
            except ValueError:
                return f"{answer!r} is not a legal move here"
        board.push(move)
        return None if board.is_checkmate() else f"{answer!r} does not checkmate"

    def cot(self, problem):
        board = board_of(problem.params["position"])
        checks = ", ".join(_move_text(m) for m in checking_moves(board))
        return f"checks : {checks} ; answer : {problem.answer}"


HARD_CHECKMATE_MOVES = 30  # positions with this many legal moves or more are "hard"

_FAMILIES: dict[str, Family] = {f.name: f for f in (Game24(), Arithmetic(), WordSorting(), Checkmate())}


def family(name: str) -> Family:
    """The family called ``name``; a ValueError lists the known ones."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown task family {name!r}; known families: {', '.join(FAMILIES)}")
    return _FAMILIES[name]


def generate(name: str, n: int, seed: int) -> list[Problem]:
    """``n`` problems of family ``name``, reproducible from ``seed``."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a whole number >= 0, got {n!r}")
    return family(name).generate(n, seed)


def why_wrong(problem: Problem, answer: str | None) -> str | None:
    """None if ``answer`` solves ``problem``, else the reason it does not."""
    try:
        return family(problem.family).why_wrong(problem, answer)
    except ValueError as err:
        return str(err)


def check(problem: Problem, answer: str | None) -> bool:
    """Does ``answer`` solve ``problem``? (Exact checkers; any correct answer counts.)"""
    return why_wrong(problem, answer) is None
