"""The toolkit chapter's live explorer: the sampling temperature against the samples of the trained tiny
GPT (see :mod:`paperlab.explore` for the pattern, ``01-toolkit.md`` (sec-toolkit-samples) for sampling)."""

from __future__ import annotations

import torch

from paperlab.explore import Choice, Explorer, Slider
from paperlab.nn import GPT, generate, next_token_distribution
from paperlab.plot import labelled
from paperlab.toolkit import Corpus
from paperlab.utils import cpu_threads

__all__ = ["temperature_explorer"]


def temperature_explorer(model: GPT, corpus: Corpus, *, n_samples: int = 16, n_shown: int = 8,
                         seed: int = 0) -> Explorer:
    """Controls: the sampling ``temperature`` and ``top_k`` (all tokens, or the k most likely).

    Left, ``n_shown`` of ``n_samples`` sentences sampled after a full stop (same seed for every setting),
    each marked by whether the grammar's parser accepts it, and the share accepted among all
    ``n_samples``; right, the distribution the model samples the second word of a sentence from (after a
    full stop and the most likely first word) at this setting, beside the one at temperature 1 with every
    token allowed. Nothing is trained: each change samples ``n_samples``
    sentences from ``model``, each cut after five tokens more than the longest validation sentence (a
    batch of forward passes, one per token, on one CPU thread).
    """
    if not 1 <= n_shown <= n_samples:
        raise ValueError(f"n_shown must be in [1, n_samples = {n_samples}], got {n_shown}")
    device = next(model.parameters()).device
    prompt = [corpus.end_id]
    longest = max(len(corpus.tokenizer.encode(s)) for s in corpus.val_sentences)
    max_new_tokens = min(model.config.context_length - 1, longest + 5)
    with torch.no_grad():
        first_word = int(model(torch.tensor([prompt], device=device))[0, -1].argmax())
        context = [*prompt, first_word]
        logits = model(torch.tensor([context], device=device))[0, -1].float().cpu()
    words = corpus.tokenizer.tokens
    def draw(fig, *, temperature: float, top_k: int | None):
        generator = torch.Generator(device=device).manual_seed(seed)
        with cpu_threads(1):
            samples = generate(model, [prompt] * n_samples, max_new_tokens, temperature=temperature,
                               top_k=top_k, eos_id=corpus.end_id, generator=generator)
        texts = [corpus.tokenizer.decode(s) for s in samples]
        accepted = [corpus.grammar.logprob_of_text(t) > float("-inf") for t in texts]
        text_ax, bar_ax = fig.subplots(1, 2, width_ratios=[1.7, 1])
        text_ax.axis("off")
        for row, (text, ok) in enumerate(zip(texts[:n_shown], accepted[:n_shown])):
            shown = text if len(text) <= 80 else text[:77] + "..."
            verdict = "in grammar   " if ok else "NOT in grammar "
            text_ax.text(0.0, 1 - (row + 0.5) / n_shown, verdict + shown, color="C2" if ok else "C3",
                         fontsize=8, family="monospace", va="center", transform=text_ax.transAxes)
        text_ax.set_title(f"samples at temperature {temperature:.2g}, "
                          f"{'all tokens' if top_k is None else f'top {top_k}'}: "
                          f"{sum(accepted)} of {n_samples} in the grammar", fontsize=9)
        probabilities = next_token_distribution(logits, temperature, top_k)
        reference = next_token_distribution(logits)
        order = torch.argsort(reference, descending=True)[:12]
        positions = torch.arange(len(order)).numpy()
        bar_ax.barh(positions + 0.2, reference[order].numpy(), height=0.4, color="0.7",
                    label="temperature 1, all tokens")
        bar_ax.barh(positions - 0.2, probabilities[order].numpy(), height=0.4, color="C0",
                    label="this setting")
        bar_ax.set_yticks(positions, [words[int(i)] for i in order], fontsize=8)
        bar_ax.invert_yaxis()
        labelled(bar_ax, f"probability of the word after '. {words[first_word]}'",
                 "next word (most likely at T = 1 on top)")
        bar_ax.legend(fontsize=7, loc="lower right")

    top_k = Choice({"all tokens": None, "top 20": 20, "top 5": 5}, None, label="top-k")
    return Explorer(draw, {"temperature": Slider(0.1, 3.0, 1.0, step=0.02, log=True, label="temperature"),
                           "top_k": top_k},
                    what="the sampling temperature and top-k", figsize=(11, 3.8))

