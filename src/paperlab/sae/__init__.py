"""TopK sparse autoencoders (Gao et al., 2024): models, data, metrics, training and the chapter's experiments.

- :mod:`paperlab.sae.model`: :class:`TopKSAE` (AuxK, Multi-TopK), :class:`ReLUSAE` (L1 baseline),
  :class:`SAEAdam`.
- :mod:`paperlab.sae.data`: synthetic superposition data with known features; the tiny GPT's activations.
- :mod:`paperlab.sae.metrics`: NMSE (normalised by the batch's total variance), L0, feature recovery,
  downstream loss, probe loss.
- :mod:`paperlab.sae.train`: one run (:class:`RunConfig`) on :func:`paperlab.train.train`, cached.
- :mod:`paperlab.sae.experiments`: the chapter's sweeps and ``EXPERIMENT``.
"""

from paperlab.sae.metrics import feature_recovery, nmse
from paperlab.sae.model import ReLUSAE, SAEAdam, SparseAutoencoder, TopKSAE

__all__ = ["TopKSAE", "ReLUSAE", "SparseAutoencoder", "SAEAdam", "nmse", "feature_recovery"]
