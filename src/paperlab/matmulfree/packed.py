"""Packed inference: a trained MatMul-free LM whose ternary matrix products run by additions and subtractions.

:func:`pack_model` replaces every :class:`BitLinear` by a :class:`PackedBitLinear` that stores only

- the packed weights (uint8, 4 per byte, :func:`paperlab_kernels.ternary.pack_ternary`),
- the absmean scale ``s_w`` (one float) and the RMSNorm gain (``in_features`` floats),

and computes ``y = (q W_t^T) / (s_x s_w)`` with the fused RMSNorm + int8 kernel for ``q, s_x`` and the
add/subtract kernel for the integer product. The full-precision ``weight`` is gone: the packed model
cannot fall back to a float matmul by accident.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from paperlab.matmulfree.layers import BITLINEAR_EPS, BitLinear
from paperlab.matmulfree.quant import ternary_weight
from paperlab_kernels import rmsnorm as rms_kernels
from paperlab_kernels import ternary as ternary_kernels

__all__ = ["PackedBitLinear", "pack_model", "weight_bytes"]


class PackedBitLinear(nn.Module):
    """Inference-only BitLinear from packed ternary weights. x: (..., in_features) -> float32 (..., out)."""

    def __init__(self, layer: BitLinear, *, impl: str = "auto"):
        super().__init__()
        if not layer.quantise:
            raise ValueError("only a quantised BitLinear (quantise=True) has ternary weights to pack")
        w_t, scale = ternary_weight(layer.weight.detach())
        self.in_features, self.out_features, self.impl = layer.in_features, layer.out_features, impl
        self.register_buffer("packed", ternary_kernels.pack_ternary(w_t))
        self.register_buffer("w_scale", scale.float())
        self.register_buffer("norm_weight", layer.norm_weight.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, s_x = rms_kernels.rms_norm_quant(x, self.norm_weight, BITLINEAR_EPS, impl=self.impl)
        return ternary_kernels.ternary_linear(q, s_x, self.packed, self.w_scale, self.in_features,
                                              impl=self.impl).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, packed {self.packed.numel()} bytes"


@torch.no_grad()
def pack_model(model: nn.Module, *, impl: str = "auto") -> nn.Module:
    """A copy of ``model`` (eval mode) with every quantised :class:`BitLinear` replaced by a packed one."""
    packed = copy.deepcopy(model).eval()
    for module in list(packed.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BitLinear):
                setattr(module, child_name, PackedBitLinear(child, impl=impl))
    return packed


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of a MatMul-free LM's weights stored three ways (measured on its tensors):

    - ``ternary_fp32`` / ``ternary_bf16`` / ``ternary_packed``: the BitLinear weight matrices only (the
      LM head is one), as fp32, bf16, and packed (uint8 bytes + one fp32 scale each);
    - ``other_fp32``: everything else (the embedding, norm gains) in fp32;
    - ``model_fp32``, ``model_bf16``: the whole model in fp32 / bf16; ``model_packed``: packed ternary layers
      plus everything else in bf16 (as one would ship it).
    """
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    ternary_ids = {id(m.weight) for m in layers}
    n_ternary = sum(m.weight.numel() for m in layers)
    n_other = sum(p.numel() for p in model.parameters() if id(p) not in ternary_ids)
    packed = 0
    for m in layers:
        w_t, _ = ternary_weight(m.weight.detach())
        packed += ternary_kernels.pack_ternary(w_t).numel() + 4
    return {
        "ternary_fp32": 4 * n_ternary, "ternary_bf16": 2 * n_ternary, "ternary_packed": packed,
        "other_fp32": 4 * n_other,
        "model_fp32": 4 * (n_ternary + n_other), "model_bf16": 2 * (n_ternary + n_other),
        "model_packed": packed + 2 * n_other,
    }
