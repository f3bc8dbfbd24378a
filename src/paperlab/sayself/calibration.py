"""How SaySelf scores a stated confidence: the output format and its parser, the Stage-2 reward, and the
calibration metrics (binned ECE, the reliability diagram's bins, AUROC).

The model answers in one line of word tokens (shown as the tokenizer decodes them)::

    reasoning: Kalo was born in Dalford. answer: Dalford. reflection: i am sure of the birthplace.
    confidence: 9

(``reflection`` is absent for the model fine-tuned without rationales). A confidence is an integer
``c`` in 1..10, read as the probability ``c / 10`` that the answer is right.

The reward of Stage 2 (the authors' ``calculate_reward``) is a scaled Brier score,

    R(corr, c) = 2 * (0.5 - (corr - c)^2),     corr in {0, 1} (the answer is right), c = confidence / 10,

and R = -1 when the confidence is missing or malformed. It is a proper scoring rule: if the answer is
right with probability p, the expected reward ``2 (0.5 - p (1 - c)^2 - (1 - p) c^2)`` is largest at
``c = p`` (derived in the chapter, sec-sayself-reward).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Parsed", "parse", "reward", "expected_reward", "binned_ece", "unbinned_ece", "reliability",
           "auroc", "N_BINS"]

N_BINS = 10  # ten equal-width bins (0, 0.1], (0.1, 0.2], ..., (0.9, 1.0]: one per stated level 1..10
MALFORMED_REWARD = -1.0
_FIELDS = ("reasoning", "answer", "reflection", "confidence")
_MARKER = re.compile(r"\b(reasoning|answer|reflection|confidence):")


@dataclass(frozen=True)
class Parsed:
    """The fields of one response (None where absent). ``confidence`` is None unless the text after
    ``confidence :`` is exactly one integer in 1..10; ``error`` says what was wrong, if anything."""

    reasoning: str | None
    answer: str | None
    reflection: str | None
    confidence: int | None
    error: str | None = None

    @property
    def well_formed(self) -> bool:
        return self.error is None


def parse(text: str, *, needs_reflection: bool = False) -> Parsed:
    """Split a response into its fields, in the order ``reasoning``, ``answer``, (``reflection``),
    ``confidence``; each field's text runs to the next marker (a final "." is dropped).

    A response is well formed when every field is present once, in that order (``reflection`` only
    where the format has it: always when ``needs_reflection``), and the confidence is a single integer
    from 1 to 10 (``"confidence: 7"``). Anything else (a missing or repeated field, a confidence of
    ``"11"``, ``"7 7"``, ``"seven"`` or nothing) leaves ``confidence`` None and names the problem in
    ``error``: the reward is then -1.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse needs a str, got {type(text).__name__}")
    found = list(_MARKER.finditer(text))
    names = [m.group(1) for m in found]
    fields: dict[str, str] = {}
    for i, match in enumerate(found):
        stop = found[i + 1].start() if i + 1 < len(found) else len(text)
        value = text[match.end():stop].strip()
        fields.setdefault(match.group(1), value[:-1].rstrip() if value.endswith(".") else value)
    expected = [f for f in _FIELDS if f != "reflection" or needs_reflection or "reflection" in names]
    error = None if names == expected else f"fields {names}, expected {expected}"
    raw = fields.get("confidence")
    confidence = None
    if raw is None:
        error = error or "no confidence"
    elif re.fullmatch(r"10|[1-9]", raw):
        confidence = int(raw)
    else:
        error = error or f"confidence {raw!r} is not one integer in 1..10"
    if error is not None:
        confidence = None
    return Parsed(fields.get("reasoning"), fields.get("answer"), fields.get("reflection"), confidence, error)


def reward(correct: bool | float, confidence: int | None) -> float:
    """``R = 2 (0.5 - (corr - c/10)^2)`` for a confidence ``c`` in 1..10, or -1 when it is missing (None).

    ``correct``: whether the answer is right (True/False, or 1/0). R(1, 10) = 1, R(0, 10) = -1, and
    R(any, 5) = 0.5.
    """
    if confidence is None:
        return MALFORMED_REWARD
    if isinstance(confidence, bool) or not isinstance(confidence, (int, np.integer)) \
            or not 1 <= confidence <= 10:
        raise ValueError(f"confidence must be an integer in 1..10 or None, got {confidence!r}")
    corr = float(correct)
    if corr not in (0.0, 1.0):
        raise ValueError(f"correct must be True/False or 1/0, got {correct!r}")
    return 2 * (0.5 - (corr - confidence / 10) ** 2)  # R = 2 (0.5 - (corr - c)^2), sec-sayself-reward


def expected_reward(p: float, confidence: int) -> float:
    """``E[R] = p R(1, c) + (1 - p) R(0, c)`` when the answer is right with probability ``p``."""
    return p * reward(True, confidence) + (1 - p) * reward(False, confidence)


def _arrays(confidences, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidences, dtype=float).ravel()
    corr = np.asarray(correct, dtype=float).ravel()
    if conf.size == 0:
        raise ValueError("calibration metrics need at least one prediction")
    if conf.size != corr.size:
        raise ValueError(f"confidences ({conf.size}) and correct ({corr.size}) differ in length")
    if np.any((conf < 0) | (conf > 1)) or not np.all(np.isfinite(conf)):
        raise ValueError("confidences must be probabilities in [0, 1] (divide a 1..10 confidence by 10)")
    if not np.all((corr == 0) | (corr == 1)):
        raise ValueError("correct must hold 0/1 (or False/True)")
    return conf, corr


def reliability(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = N_BINS) -> dict:
    """Per bin: ``count``, mean ``confidence`` and ``accuracy`` (NaN where empty) and the bin ``edges``.

    Bins are ``n_bins`` equal-width, right-closed intervals of [0, 1]: ``(0, 1/n], (1/n, 2/n], ...``
    (a confidence of exactly 0 joins the first). With ``n_bins = 10`` each stated level 1..10 is its own bin.
    """
    conf, corr = _arrays(confidences, correct)
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.ceil(conf * n_bins - 1e-9).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=corr, minlength=n_bins) / count
    return {"edges": edges.tolist(), "count": count.tolist(), "confidence": mean_conf.tolist(),
            "accuracy": accuracy.tolist()}


def binned_ece(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = N_BINS) -> float:
    """Expected calibration error ``ECE = sum_b (n_b / n) |acc_b - conf_b|`` over the bins of
    :func:`reliability` (Guo et al. 2017). 0 for a calibrated predictor (up to sampling noise); ``1 - p``
    for one that always says 1.0 and is right a fraction ``p`` of the time."""
    bins = reliability(confidences, correct, n_bins)
    n = sum(bins["count"])
    rows = zip(bins["count"], bins["accuracy"], bins["confidence"])
    # ECE = sum_b (n_b / n) |acc_b - conf_b|
    return float(sum(count / n * abs(acc - conf) for count, acc, conf in rows if count > 0))


def unbinned_ece(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """The authors' "ECE", ``mean |c - corr|`` over predictions (a per-item absolute error, not binned)."""
    conf, corr = _arrays(confidences, correct)
    return float(np.abs(conf - corr).mean())


def auroc(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """Area under the ROC curve of confidence as a score for "the answer is right": the probability that
    a right answer gets a higher confidence than a wrong one (ties count half). NaN when all answers are
    right or all wrong (no pairs to compare)."""
    conf, corr = _arrays(confidences, correct)
    if corr.min() == corr.max():
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(corr, conf))
