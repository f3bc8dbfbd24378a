"""The meta-buffer: thought templates, retrieval by similarity with a threshold, the buffer manager.

A **thought template** (:class:`Template`) has a ``task`` (the kind of problem it solves, in a line: the
retrieval key), a ``thought`` (the high-level way to solve it, in words) and a ``program``: a Python
skeleton whose parameters are written ``${name}``. **Instantiation** (:meth:`Template.instantiate`)
validates the parameter values against the task family's types and writes them into the skeleton as
Python literals, so a model's output can fill a program but never add code to it.

**Retrieval** (:meth:`MetaBuffer.retrieve`, paper sec. 3.3): embed the distilled task, take the template
whose task is most similar (cosine), and use it only if the similarity is at least ``delta``; below,
the problem counts as new. The embedding (:func:`embed`) is a hashed bag of character 3- to 5-grams
(scikit-learn's ``HashingVectorizer``, 2^16 dimensions, unit length): no training, deterministic, and a
much weaker reader of meaning than the paper's ``text-embedding-3-large``.

The **buffer manager** (:class:`BufferManager`, sec. 3.4) admits a new template only if it is not too
similar to one already held: the similarity of its description (its ``task``) to the nearest held
template's description must be below ``novelty``. These are the embeddings retrieval compares, so the
gate and retrieval read the same thing; with ``novelty`` equal to retrieval's ``delta`` (the paper uses
one threshold for both), a problem that finds no template always brings its template in. The authors'
code instead asks the model whether the new template differs "fundamentally" from the nearest one; the
paper frames it as a similarity gate on descriptions, which is what this is.

:func:`book_templates` are the templates written for this chapter's four families (the authors' code
likewise hard-codes one template per benchmark). :func:`write_template` is the **stand-in** for the
model that distils a new template from a solved problem (see its docstring).
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from paperlab.bot import tasks

__all__ = ["Template", "Retrieval", "MetaBuffer", "BufferManager", "Admission", "embed", "similarity",
           "book_templates", "write_template", "DEFAULT_DELTA"]

DEFAULT_DELTA = 0.2  # every training phrasing's task line reaches its book template (book/08-bot.md)


@functools.lru_cache(maxsize=1)
def _vectorizer():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), n_features=2**16, alternate_sign=False,
                             norm="l2", lowercase=True)


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-length embeddings of ``texts``: ``(len(texts), 2**16)`` (dense float32)."""
    if isinstance(texts, str):
        raise ValueError("embed needs a list of texts (wrap a single text in a list)")
    return _vectorizer().transform(list(texts)).toarray().astype(np.float32)


def similarity(a: str, b: str) -> float:
    """Cosine similarity of the embeddings of two texts (0 = no shared character n-gram, 1 = same)."""
    x, y = embed([a, b])
    return float(x @ y)


@dataclass(frozen=True)
class Template:
    """A thought template (see the module docstring). ``family`` names the task family whose parameter
    types the program expects (so values can be validated); ``params`` are the skeleton's slots."""

    name: str
    task: str
    thought: str
    program: str
    params: tuple[str, ...]
    family: str

    def __post_init__(self) -> None:
        slots = {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(self.program)
                 if m.group("named") or m.group("braced")}
        if slots != set(self.params):
            raise ValueError(f"template {self.name!r}: the program's slots {sorted(slots)} differ from its "
                             f"params {sorted(self.params)}")
        tasks.family(self.family)  # an unknown family is an error

    def instantiate(self, values: dict) -> str:
        """The program with every ``${param}`` replaced by its value as a Python literal.

        ``values`` must hold every parameter (a ValueError names the missing ones); each value is
        validated by the task family (four numbers from 1 to 13, a legal chess position, ...).
        """
        if not isinstance(values, dict):
            raise ValueError(f"template {self.name!r} needs a dict of parameter values, got "
                             f"{type(values).__name__}")
        missing = [p for p in self.params if p not in values]
        if missing:
            raise ValueError(f"template {self.name!r} is missing the parameter(s) {missing} "
                             f"(got {sorted(values)})")
        checked = tasks.family(self.family).validate({p: values[p] for p in self.params})
        literals = {p: repr(checked[p]) for p in self.params}
        return string.Template(self.program).substitute(literals)


@dataclass(frozen=True)
class Retrieval:
    """The outcome of one retrieval: the template used (None if below the threshold), the nearest
    template and its similarity."""

    template: Template | None
    nearest: Template | None
    similarity: float


class MetaBuffer:
    """The templates held, with their task embeddings (paper: the meta-buffer)."""

    def __init__(self, templates: Sequence[Template] = ()):
        self.templates: list[Template] = []
        self._keys = np.zeros((0, 2**16), dtype=np.float32)
        for template in templates:
            self.add(template)

    def __len__(self) -> int:
        return len(self.templates)

    def add(self, template: Template) -> None:
        if not isinstance(template, Template):
            raise TypeError(f"a meta-buffer holds Templates, got {type(template).__name__}")
        self.templates.append(template)
        self._keys = np.concatenate([self._keys, embed([template.task])])

    def similarities(self, task: str) -> np.ndarray:
        """Cosine similarity of ``task`` to every template's task (unit vectors: a dot product)."""
        return self._keys @ embed([task])[0] if self.templates else np.zeros(0)  # f(D_T_i)^T f(x_d)

    def retrieve(self, task: str, delta: float) -> Retrieval:
        """The most similar template if its similarity is at least ``delta``; eq. (eq-bot-retrieve) of
        book/08-bot.md (sec-bot-pipeline)."""
        if not isinstance(task, str):
            raise ValueError(f"retrieve needs the distilled task as text, got {type(task).__name__}")
        if not 0 <= delta <= 1:
            raise ValueError(f"delta must be in [0, 1], got {delta!r}")
        if not self.templates:
            return Retrieval(None, None, 0.0)
        scores = self.similarities(task)  # sim(f(x_d), f(D_T_i)) for every template i
        best = int(np.argmax(scores))  # j = argmax_i sim(...)
        nearest, score = self.templates[best], float(scores[best])
        return Retrieval(nearest if score >= delta else None, nearest, score)  # used only if sim >= delta


@dataclass(frozen=True)
class Admission:
    """The buffer manager's decision on one candidate template."""

    admitted: bool
    nearest: str | None
    similarity: float


class BufferManager:
    """Admits a candidate template into ``buffer`` only if the similarity of its description (``task``)
    to the nearest held template's description is below ``novelty`` (retrieval's keys, retrieval's
    threshold by default)."""

    def __init__(self, buffer: MetaBuffer, novelty: float = DEFAULT_DELTA):
        if not 0 < novelty <= 1:
            raise ValueError(f"novelty must be in (0, 1], got {novelty!r}")
        self.buffer, self.novelty = buffer, novelty

    def consider(self, candidate: Template) -> Admission:
        """Admit ``candidate`` if it is novel; eq. (eq-bot-manager) of book/08-bot.md (sec-bot-pipeline)."""
        held = self.buffer.templates
        if held:
            scores = self.buffer.similarities(candidate.task)  # sim(f(D_T_new), f(D_T_i)), as retrieval
            best = int(np.argmax(scores))
            nearest, score = held[best].name, float(scores[best])  # max_i sim(...)
        else:
            nearest, score = None, 0.0
        admitted = score < self.novelty  # added if max_i sim < delta_novel
        if admitted:
            self.buffer.add(candidate)
        return Admission(admitted, nearest, score)


# --------------------------------------------------------------------------------------------------
# The chapter's templates
# --------------------------------------------------------------------------------------------------
GAME24_PROGRAM = '''\
from fractions import Fraction
from itertools import combinations

numbers = ${numbers}
target = 24


def search(items):
    """items: (value, expression) pairs; combine two, recurse on what is left."""
    if len(items) == 1:
        return items[0][1] if items[0][0] == target else None
    for i, j in combinations(range(len(items)), 2):
        (a, x), (b, y) = items[i], items[j]
        rest = [items[k] for k in range(len(items)) if k not in (i, j)]
        options = [(a + b, f"({x} + {y})"), (a * b, f"({x} * {y})"),
                   (a - b, f"({x} - {y})"), (b - a, f"({y} - {x})")]
        if b != 0:
            options.append((a / b, f"({x} / {y})"))
        if a != 0:
            options.append((b / a, f"({y} / {x})"))
        for value, text in options:
            found = search(rest + [(value, text)])
            if found:
                return found
    return None


found = search([(Fraction(n), str(n)) for n in numbers])
if found is None:
    raise ValueError(f"no expression of {numbers} makes {target}")
print(found)
'''

ARITHMETIC_PROGRAM = '''\
import ast

expression = ${expression}


def value(node):
    """Evaluate the parsed expression: brackets first, then * before + and -."""
    if isinstance(node, ast.Expression):
        return value(node.body)
    if isinstance(node, ast.Constant):
        return node.value
    left, right = value(node.left), value(node.right)
    return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]


print(value(ast.parse(expression, mode="eval")))
'''

WORD_SORTING_PROGRAM = '''\
words = ${words}
print(" ".join(sorted(word.lower() for word in words)))
'''

CHECKMATE_PROGRAM = '''\
import chess

position = ${position}
board = chess.Board(None)
for piece, square in position:
    board.set_piece_at(chess.parse_square(square), chess.Piece.from_symbol(piece))
board.turn = chess.WHITE

for move in board.legal_moves:
    board.push(move)
    mate = board.is_checkmate()
    board.pop()
    if mate:
        print(chess.square_name(move.from_square), chess.square_name(move.to_square))
        break
else:
    raise ValueError("no move checkmates in this position")
'''

_BOOK = {
    "game24": ("use arithmetic on four given numbers to make 24",
               "Try every way of combining two numbers with + - * / into one, then recurse on what is left; "
               "keep exact fractions; stop at the first expression equal to the target.",
               GAME24_PROGRAM, ("numbers",)),
    "arithmetic": ("evaluate a multi-step arithmetic expression",
                   "Parse the expression into a tree and evaluate it bottom-up, so brackets and the priority "
                   "of * over + and - are respected.", ARITHMETIC_PROGRAM, ("expression",)),
    "word_sorting": ("sort a list of words alphabetically",
                     "Compare words letter by letter (lexicographic order) and list them from a to z.",
                     WORD_SORTING_PROGRAM, ("words",)),
    "checkmate": ("find a checkmate in one move for white",
                  "Set up the position; try every legal move of White and keep the one after which Black is "
                  "checkmated.", CHECKMATE_PROGRAM, ("position",)),
}


def book_templates(families: Sequence[str] = tasks.FAMILIES) -> list[Template]:
    """The chapter's hand-written template of each family in ``families``."""
    out = []
    for name in families:
        task, thought, program, params = _BOOK[tasks.family(name).name]
        out.append(Template(f"{name} (book)", task, thought, program, params, name))
    return out


def write_template(distilled_task: str, name: str) -> Template | None:
    """STAND-IN for the model that distils a new thought template from a solved problem (paper sec. 3.4).

    The paper asks GPT-4 to write a high-level template from the problem and its solution. A tiny model
    cannot write a program it has never seen, so this rule plays the role: if ``distilled_task`` is one of
    the task lines the chapter's distiller was trained to write, it returns that family's program and
    thought under the distilled task (so two phrasings of one family give one program under two descriptions);
    for any other task it returns None (it cannot write a template for a kind of problem it does not know).
    Spacing is ignored in the match, as the word tokenizer decodes ``multi-step`` as ``multi - step``.
    Its output is never a model's work, and the chapter says so where it uses it.
    """
    squashed = "".join(distilled_task.split())
    for family_name in tasks.FAMILIES:
        if any("".join(p.task.split()) == squashed for p in tasks.family(family_name).phrasings):
            _, thought, program, params = _BOOK[family_name]
            return Template(name, distilled_task.strip(), thought, program, params, family_name)
    return None
