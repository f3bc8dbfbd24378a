"""The judges: style classifiers standing in for the paper's GPT-4 judge, and pairwise win rates.

The paper asks GPT-4 which of two outputs is closer to an author's writing. Here a classifier trained on
separate messages of every author (pretraining, dev and target: 53 in the default cast) reads an
output and gives ``p(author | text)``; of two outputs for the same prompt, one that keeps the prompt's
content beats one that does not, and otherwise the one it finds more likely to be the target author's
wins (:func:`wins`). Two classifiers with different features and models check
that a ranking of methods is not one judge's quirk:

- ``"char"``: TF-IDF of character 2- to 4-grams (within words) and multinomial logistic regression;
- ``"word"``: counts of word unigrams and bigrams (the book's tokenizer) and multinomial naive Bayes.

Both are labelled stand-ins: they judge style only, from text of the same generator; their held-out
accuracy is measured (:func:`accuracy`). The chapter (sec-ditto-judge) shows what they can and cannot see.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from paperlab.config import check_ints, check_numbers
from paperlab.ditto.data import Cast, random_content, write
from paperlab.tokenizers import WordTokenizer

__all__ = ["JudgeConfig", "StyleJudge", "judge_data", "make_judges", "accuracy", "wins", "win_rate", "KINDS"]

KINDS = ("char", "word")


@dataclass(frozen=True)
class JudgeConfig:
    """Messages per author to train each judge on and to test it on (drawn with their own seeds)."""

    n_train_per_author: int = 120
    n_test_per_author: int = 40
    train_seed: int = 10_001
    test_seed: int = 20_002
    c: float = 3.0  # inverse regularisation of the logistic regression
    alpha: float = 0.1  # naive Bayes smoothing

    def __post_init__(self):
        check_ints(self, "n_train_per_author", "n_test_per_author")
        check_ints(self, "train_seed", "test_seed", low=0)
        check_numbers(self, "c", "alpha", low=0, open_low=True)


def judge_data(cast: Cast, n_per_author: int, seed: int) -> tuple[list[str], list[int]]:
    """``n_per_author`` fresh messages of every author of the cast (random contents), with their labels."""
    rng = random.Random(seed)
    texts, labels = [], []
    for label, author in enumerate(cast.all):
        for _ in range(n_per_author):
            texts.append(write(author, random_content(rng), rng))
            labels.append(label)
    return texts, labels


class StyleJudge:
    """A text classifier over the cast's authors: :meth:`log_proba` gives ``log p(author | text)``."""

    def __init__(self, kind: str, config: JudgeConfig):
        from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.naive_bayes import MultinomialNB
        from sklearn.pipeline import make_pipeline

        if kind not in KINDS:
            raise ValueError(f"unknown judge kind {kind!r}; the kinds are {KINDS}")
        self.kind = kind
        if kind == "char":
            self.model = make_pipeline(
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True),
                LogisticRegression(C=config.c, tol=1e-3, max_iter=1000))
        else:
            self.model = make_pipeline(
                CountVectorizer(token_pattern=WordTokenizer.PATTERN.pattern, ngram_range=(1, 2),
                                lowercase=False),
                MultinomialNB(alpha=config.alpha))

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> StyleJudge:
        self.model.fit(list(texts), list(labels))
        self.n_authors = len(self.model.classes_)
        if list(self.model.classes_) != list(range(self.n_authors)):
            raise ValueError("judge training data must hold every author label 0..n-1")
        return self

    def log_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``log p(author | text)``: (len(texts), n_authors)."""
        return self.model.predict_log_proba(list(texts))

    def score(self, texts: Sequence[str], author: int) -> np.ndarray:
        """``log p(author | text)`` for each text: how much each reads like ``author``."""
        if not (isinstance(author, (int, np.integer)) and 0 <= author < self.n_authors):
            raise ValueError(f"unknown author {author!r}: the judge knows authors 0..{self.n_authors - 1}")
        return self.log_proba(texts)[:, int(author)]


def make_judges(cast: Cast, config: JudgeConfig) -> dict[str, StyleJudge]:
    """Both judges, trained on the same separate messages of every author."""
    texts, labels = judge_data(cast, config.n_train_per_author, config.train_seed)
    return {kind: StyleJudge(kind, config).fit(texts, labels) for kind in KINDS}


def accuracy(judge: StyleJudge, texts: Sequence[str], labels: Sequence[int]) -> np.ndarray:
    """Per text: 1 if the judge's most likely author is the true one, else 0."""
    return (judge.log_proba(texts).argmax(1) == np.asarray(labels)).astype(float)


def wins(scores_a: Sequence[float], scores_b: Sequence[float], kept_a: Sequence[bool] | None = None,
         kept_b: Sequence[bool] | None = None) -> np.ndarray:
    """Per prompt, 1 if output A is closer to the target author than output B, 0.5 on a tie, else 0.

    With ``kept_a`` and ``kept_b`` (did each output keep the prompt's content?) an output that says what
    was asked beats one that does not, as a judge reading both would rule; between two that do (or two
    that do not), the one that reads more like the author (``log p(author | output)``) wins. Without them,
    style alone decides.
    """
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"win rates compare outputs prompt by prompt; got {a.shape} and {b.shape} scores")
    if (kept_a is None) != (kept_b is None):
        raise ValueError("give whether the content was kept for both outputs or for neither")
    ka = np.ones(a.shape, bool) if kept_a is None else np.asarray(kept_a, dtype=bool)
    kb = np.ones(a.shape, bool) if kept_b is None else np.asarray(kept_b, dtype=bool)
    if ka.shape != a.shape or kb.shape != a.shape:
        raise ValueError(f"one content flag per prompt: {a.shape} scores, {ka.shape} and {kb.shape} flags")
    same = ka == kb  # both kept the content, or both lost it: style decides
    return np.where(same, np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0)), np.where(ka, 1.0, 0.0))


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float], kept_a: Sequence[bool] | None = None,
             kept_b: Sequence[bool] | None = None) -> float:
    """Share of prompts on which A beats B (ties count half); see :func:`wins`."""
    return float(wins(scores_a, scores_b, kept_a, kept_b).mean())
