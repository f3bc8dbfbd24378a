"""Scalable MatMul-free Language Modeling (Zhu et al., 2024), from scratch.

- :mod:`~paperlab.matmulfree.quant`: absmean ternary weights, absmax int8 activations, the STE;
- :mod:`~paperlab.matmulfree.layers`: BitLinear, MLGRU (kernel, sequential and parallel-scan forms), GLU,
  ternary attention;
- :mod:`~paperlab.matmulfree.model`: the MatMul-free LM and its fp variant;
- :mod:`~paperlab.matmulfree.packed`: 2-bit packing; inference whose matrix products only add and subtract;
- :mod:`~paperlab.matmulfree.experiments`: the chapter's experiments (``python -m paperlab run matmulfree``).

Kernels: :mod:`paperlab_kernels.ternary`, :mod:`paperlab_kernels.mlgru`, :mod:`paperlab_kernels.rmsnorm`.
"""

from paperlab.matmulfree.layers import GLU, MLGRU, BitLinear, TernaryAttention, parallel_scan, sequential_scan
from paperlab.matmulfree.model import MatMulFreeConfig, MatMulFreeLM
from paperlab.matmulfree.packed import PackedBitLinear, pack_model, weight_bytes
from paperlab.matmulfree.quant import (
    activation_quant,
    activation_quant_int8,
    ste,
    ternary_weight,
    weight_quant,
)

__all__ = [
    "BitLinear", "MLGRU", "GLU", "TernaryAttention", "parallel_scan", "sequential_scan",
    "MatMulFreeConfig", "MatMulFreeLM", "PackedBitLinear", "pack_model", "weight_bytes",
    "activation_quant", "activation_quant_int8", "ste", "ternary_weight", "weight_quant",
]
