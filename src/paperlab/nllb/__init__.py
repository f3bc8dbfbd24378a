"""NLLB (NLLB Team, 2024): one translation model for many languages, with sparsely gated mixtures of experts.

- :mod:`paperlab.nllb.data`: a synthetic multilingual world (families of generated languages, a hub
  language, high- and low-resource pairs, multi-way parallel test sets, zero-shot directions).
- :mod:`paperlab.nllb.model`: the encoder-decoder transformer with language tags; dense, MoE (top-2 gate,
  capacity, load-balancing loss, expert output masking) and conditional MoE feed-forward layers; greedy
  and beam decoding.
- :mod:`paperlab.nllb.train`: one training run (temperature sampling, curriculum), chrF++ / BLEU scoring,
  routing statistics per language, cached.
- :mod:`paperlab.nllb.experiments`: the chapter's experiments and ``EXPERIMENT``.
"""

from paperlab.nllb.model import ConditionalMoE, ModelConfig, MoEFFN, Seq2Seq, beam_search, greedy_decode

__all__ = ["ModelConfig", "Seq2Seq", "MoEFFN", "ConditionalMoE", "greedy_decode", "beam_search"]
