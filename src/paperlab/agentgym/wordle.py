"""Wordle, as AgentGym serves it from LMRL-Gym: guess a hidden five-letter word in six tries.

Words are the five-letter nouns of the WordNet subset the book ships (``data/wordnet``, animals and
plants). A guess is written as its letters separated by spaces (``c r a n e``, AgentGym's format) and must
be in the word list; the feedback gives one mark per letter: ``g`` (right letter, right place), ``y`` (in
the word, elsewhere), ``b`` (not in the word, or no more copies of it). The expert guesses, each time, the
word consistent with all feedback so far whose letters are most common among the remaining candidates.
The hidden words are split into training and held-out words; only words the expert finds within six
guesses are used.
"""

from __future__ import annotations

import functools
import random
import string
from collections import Counter

from paperlab.agentgym.base import Move, TextEnv

WORD_LENGTH = 5
WORLD_SEED = 12


@functools.cache
def word_list() -> tuple[str, ...]:
    """The five-letter lemmas of the shipped WordNet subset, sorted."""
    from paperlab.geometry.hierarchy import load_hierarchy

    words = {w for lemmas in load_hierarchy().lemmas.values() for w in lemmas
             if len(w) == WORD_LENGTH and w.isalpha() and w.isascii()}
    return tuple(sorted(words))


def feedback(guess: str, target: str) -> str:
    """Wordle's marks for ``guess`` against ``target``: greens first, then yellows while copies remain."""
    marks = ["b"] * WORD_LENGTH
    left = Counter()
    for i, (g, t) in enumerate(zip(guess, target)):
        if g == t:
            marks[i] = "g"
        else:
            left[t] += 1
    for i, g in enumerate(guess):
        if marks[i] != "g" and left[g] > 0:
            marks[i] = "y"
            left[g] -= 1
    return " ".join(marks)


def best_guess(candidates: list[str]) -> str:
    """The candidate whose distinct letters are most frequent among the candidates (ties: alphabetical)."""
    counts = Counter(letter for word in candidates for letter in set(word))
    return min(candidates, key=lambda w: (-sum(counts[c] for c in set(w)), w))


class WordleEnv(TextEnv):
    """A task is the hidden word."""

    name = "wordle"
    max_steps = 6
    n_train = 300
    n_test = 100

    @classmethod
    def make_tasks(cls) -> list[str]:
        words = list(word_list())
        random.Random(WORLD_SEED).shuffle(words)
        solvable = [w for w in words if len(_expert_game(w)) <= cls.max_steps]
        if len(solvable) < cls.n_train + cls.n_test:
            raise RuntimeError(f"wordle: only {len(solvable)} solvable words")
        return solvable[: cls.n_train + cls.n_test]

    @classmethod
    def vocabulary(cls) -> set[str]:
        return set(string.ascii_lowercase) | {"wordle", "guess", "the", "5", "letter", "word", "not", "in",
                                               "list", "a", "write", "as", "letters", "_", ":", ".", "solved"}

    def _start(self) -> str:
        self.history: list[tuple[str, str]] = []  # (guess, marks)
        return "wordle: guess the 5 letter word."

    def _act(self, action: str) -> tuple[str, float, bool]:
        letters = action.split()
        if len(letters) != WORD_LENGTH or not all(len(c) == 1 and c.isalpha() for c in letters):
            return "write a 5 letter word as letters.", 0.0, False
        guess = "".join(letters)
        if guess not in _word_set():
            return "not in the word list.", 0.0, False
        marks = feedback(guess, self.task)
        self.history.append((guess, marks))
        if guess == self.task:
            return f"{marks}. solved.", 1.0, True
        return f"{marks}.", 0.0, False

    def random_action(self, rng: random.Random) -> str:
        return " ".join(rng.choice(word_list()))

    def expert_action(self) -> Move:
        guess = best_guess(_consistent(tuple(self.history)))
        return Move(f"{known_letters(self.history)}.", " ".join(guess))


def known_letters(history: list[tuple[str, str]]) -> str:
    """The letters placed so far (greens), ``_`` elsewhere: the expert's thought, e.g. ``_ r a _ e``."""
    known = ["_"] * WORD_LENGTH
    for guess, marks in history:
        for i, mark in enumerate(marks.split()):
            if mark == "g":
                known[i] = guess[i]
    return " ".join(known)


@functools.cache
def _word_set() -> frozenset[str]:
    return frozenset(word_list())


@functools.cache
def _consistent(history: tuple[tuple[str, str], ...]) -> list[str]:
    """The words that would have produced every feedback so far (filtered one guess at a time)."""
    if not history:
        return list(word_list())
    guess, marks = history[-1]
    return [w for w in _consistent(history[:-1]) if feedback(guess, w) == marks]


def _expert_game(target: str) -> list[str]:
    history: list[tuple[str, str]] = []
    while True:
        guess = best_guess(_consistent(tuple(history)))
        history.append((guess, feedback(guess, target)))
        if guess == target or len(history) > WORD_LENGTH + 3:
            return [g for g, _ in history]
