"""Optional: the same analysis on a Hugging Face causal LM's unembedding (local files only).

The chapter's model is a tiny LM trained on a synthetic corpus; a reader who has a real model on disk
(e.g. Gemma, as in the paper, or any ``AutoModelForCausalLM``) can run the estimator on its unembedding
matrix instead::

    from paperlab.geometry.hf import load_unembedding
    gamma, vocabulary = load_unembedding("/path/to/model")      # no download: local_files_only=True
    # vocabulary maps each lemma that is a single token (with or without a leading space) to its row

then use :func:`paperlab.geometry.experiments.analyse_unembedding` with those. ``transformers`` is not a
dependency of the book: this module imports it only when called, and raises a clear error without it.
Nothing is ever downloaded (``local_files_only=True``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["load_unembedding", "single_token_lemmas"]


def _transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Hugging Face path needs the transformers package (pip install transformers); "
            "the rest of paperlab.geometry does not"
        ) from err
    return transformers


def single_token_lemmas(tokenizer, lemmas: Iterable[str]) -> dict[str, int]:
    """lemma -> token id for the lemmas that the tokenizer encodes as one token, trying ``" " + lemma``
    first (a word inside a sentence), then the bare lemma. Sorted, so deterministic."""
    out = {}
    unknown = getattr(tokenizer, "unk_token_id", None)
    for lemma in sorted(set(lemmas)):
        for text in (" " + lemma, lemma):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) == 1 and ids[0] != unknown:  # an unknown word is one token too: <unk>
                out[lemma] = int(ids[0])
                break
    return out


def load_unembedding(path: str, lemmas: Iterable[str] | None = None) -> tuple[torch.Tensor, dict[str, int]]:
    """The unembedding matrix ``gamma`` (vocab, d) of the causal LM saved at ``path`` (local files only)
    and the map lemma -> row for the single-token lemmas (default: all lemmas of the WordNet subset)."""
    transformers = _transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    gamma = model.get_output_embeddings().weight.detach().to(torch.float32).cpu()
    if lemmas is None:
        from paperlab.geometry.hierarchy import load_hierarchy

        lemmas = load_hierarchy().all_lemmas
    vocabulary = {lemma: i for lemma, i in single_token_lemmas(tokenizer, lemmas).items() if i < len(gamma)}
    return gamma, vocabulary
