"""The alignment chapter's live explorer: self-consistency against the sampling temperature (see
:mod:`paperlab.explore` for the pattern, ``07-alignment.md`` (sec-align-bias) for the vote)."""

from __future__ import annotations

from collections import Counter

import torch

from paperlab import align
from paperlab.explore import Explorer, IntSlider, Slider
from paperlab.nn import GPT
from paperlab.plot import labelled
from paperlab.survey.experiments import vote_accuracy
from paperlab.survey.models import greedy_answers, sample_answers
from paperlab.survey.task import AdditionTask
from paperlab.utils import cpu_threads

__all__ = ["vote_explorer"]


def vote_explorer(model: GPT, task: AdditionTask, *, n_questions: int = 100, n_samples: int = 32,
                  seed: int = 0) -> Explorer:
    """Controls: the sampling ``temperature``, the number ``k`` of samples voted over, and which test
    ``question`` the right panel shows.

    Left, the accuracy of the majority vote over k samples against k (:func:`vote_accuracy`, disjoint
    blocks of the ``n_samples`` samples of each of the first ``n_questions`` test questions) at this
    temperature, with greedy decoding's accuracy; the chosen k is marked. Right, the answers sampled for
    one question: how often each was drawn, the true sum in green, the vote over the first k samples
    marked. Nothing is trained: each change samples ``n_questions * n_samples`` answers of a few tokens
    from ``model`` (same seed for every setting), on one CPU thread.
    """
    if not 2 <= n_questions <= len(task.test):
        raise ValueError(f"n_questions must be in [2, {len(task.test)}] (the test questions), "
                         f"got {n_questions}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    questions = task.test[:n_questions]
    device = next(model.parameters()).device
    with cpu_threads(1):
        greedy = greedy_answers(model, task, questions)
    greedy_accuracy = sum(task.gold(q, a) for q, a in zip(questions, greedy)) / n_questions
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n_samples]

    def draw(fig, *, temperature: float, k: int, question: int):
        generator = torch.Generator(device=device).manual_seed(seed)
        with cpu_threads(1):
            samples, _ = sample_answers(model, task, questions, n_samples, generator, temperature=temperature)
        curve_ax, bar_ax = fig.subplots(1, 2, width_ratios=[1.2, 1])
        curve_ax.plot(ks, [vote_accuracy(task, questions, samples, j) for j in ks], "o-", color="C0",
                      label="majority vote over k samples")
        curve_ax.plot([k], [vote_accuracy(task, questions, samples, k)], "o", color="C3", markersize=11,
                      fillstyle="none", label=f"k = {k}")
        curve_ax.axhline(greedy_accuracy, color="grey", linestyle="--", label="greedy decoding")
        curve_ax.set_xscale("log", base=2)
        curve_ax.set_xticks(ks, [str(j) for j in ks])
        curve_ax.set_ylim(0, 1)
        labelled(curve_ax, "k, samples voted over (log scale)",
                 f"accuracy on {n_questions} test questions", title=f"temperature {temperature:.2g}")
        curve_ax.legend(loc="lower right", fontsize=8)

        q, answers = questions[question], samples[question]
        counts = Counter(a if a else "(unreadable)" for a in answers).most_common(10)
        vote, _ = align.majority_vote([a if task.parse(a) is not None else None for a in answers[:k]])
        labels = [a for a, _ in counts]
        colors = ["C2" if a == q.answer else "C3" if a == vote else "0.6" for a in labels]
        bar_ax.barh(range(len(labels)), [c for _, c in counts], color=colors)
        bar_ax.set_yticks(range(len(labels)), labels, fontsize=8)
        bar_ax.invert_yaxis()
        labelled(bar_ax, f"times drawn in {n_samples} samples", "answer (most drawn on top)",
                 title=f"{q.prompt}  truth {q.answer} (green); vote of the first {k}: {vote} "
                       f"({'right' if vote == q.answer else 'wrong'})")
        bar_ax.title.set_fontsize(9)

    return Explorer(draw, {"temperature": Slider(0.1, 3.0, 1.0, step=0.02, log=True, label="temperature"),
                           "k": IntSlider(1, n_samples, min(8, n_samples), label="k"),
                           "question": IntSlider(0, n_questions - 1, 0, label="question")},
                    what="the temperature, the number of votes k and the question", figsize=(11, 3.8))
