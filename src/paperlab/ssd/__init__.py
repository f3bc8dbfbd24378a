"""Mamba-2 and state space duality (Dao & Gu, 2024): the SSD layer three ways, the Mamba-2 block and
language model, and multi-query associative recall.

- :mod:`paperlab.ssd.core`: ``ssd_recurrent``, ``ssd_quadratic``, ``ssd_chunked``, ``segsum``;
- :mod:`paperlab.ssd.model`: ``Mamba2Config``, ``Mamba2Block``, ``Mamba2LM``;
- :mod:`paperlab.ssd.mqar`: ``mqar_batch``, ``mqar_accuracy``;
- :mod:`paperlab.ssd.experiments`: the chapter's experiments and ``EXPERIMENT``.
"""

from paperlab.ssd.core import (
    decay_mask,
    random_inputs,
    segsum,
    segsum_naive,
    semiseparable_matrix,
    ssd_chunked,
    ssd_quadratic,
    ssd_recurrent,
)
from paperlab.ssd.model import Mamba2Block, Mamba2Config, Mamba2LM
from paperlab.ssd.mqar import mqar_accuracy, mqar_batch

__all__ = [
    "Mamba2Block",
    "Mamba2Config",
    "Mamba2LM",
    "decay_mask",
    "mqar_accuracy",
    "mqar_batch",
    "random_inputs",
    "segsum",
    "segsum_naive",
    "semiseparable_matrix",
    "ssd_chunked",
    "ssd_quadratic",
    "ssd_recurrent",
]
