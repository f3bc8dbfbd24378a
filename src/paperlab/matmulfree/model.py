"""The MatMul-free language model: embedding -> blocks (token mixer + GLU) -> RMSNorm -> LM head.

As in the reference code (``modeling_hgrn_bit.py``), one block maps the residual stream
``h: (batch, seq, d_model)`` to::

    h = h + TokenMixer(RMSNorm_mixer(h))      # MLGRU (or, for the ablation, ternary attention)
    h = h + GLU(RMSNorm_glu(h))

with full-precision pre-norms, although every BitLinear normalises its own input again (RMSNorm is its
first step). The model ends with a final RMSNorm and an LM head that is a BitLinear too (ternary, not tied
to the embedding), as in the reference. What stays in floating point: the embedding table (a lookup, no
matmul), the RMSNorm gains, and the element-wise gates and recurrence. ``quantise=False`` gives the "fp"
variant (same architecture, full-precision weights and activations). The model has the ``config``, ``forward``
and ``loss`` interface of :class:`paperlab.nn.GPT`, so :func:`paperlab.nn.generate` drives it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from paperlab import nn as pnn
from paperlab.config import check_choice, check_flags, check_ints, check_that
from paperlab.matmulfree.layers import GLU, MLGRU, SCANS, BitLinear, TernaryAttention
from paperlab_kernels._dispatch import IMPLS

__all__ = ["MatMulFreeConfig", "MatMulFreeLM"]


@dataclass
class MatMulFreeConfig:
    """Size and variant of a :class:`MatMulFreeLM`.

    token_mixer: ``"mlgru"`` (the paper's model) or ``"attention"`` (ternary-projection attention).
    quantise: ternary weights and 8-bit activations (True) or the fp variant (False).
    d_hidden: GLU width, default the multiple of 8 nearest ``8/3 d_model``. scan: see :class:`MLGRU`.
    """

    vocab_size: int
    context_length: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_hidden: int | None = None
    token_mixer: str = "mlgru"
    quantise: bool = True
    scan: str = "kernel"
    impl: str = "auto"

    def __post_init__(self):
        check_ints(self, "vocab_size", "context_length", "d_model", "n_layers", "n_heads")
        check_ints(self, "d_hidden", optional=True)
        check_choice(self, "token_mixer", ("mlgru", "attention"))
        check_choice(self, "scan", SCANS)
        check_choice(self, "impl", ("auto", *IMPLS))
        check_flags(self, "quantise")
        if self.token_mixer == "attention":
            head_dim = self.d_model / self.n_heads
            check_that(self, head_dim == int(head_dim) and int(head_dim) % 2 == 0, "n_heads",
                       f"such that d_model / n_heads is an even integer (d_model = {self.d_model})")
        if self.d_hidden is None:
            self.d_hidden = max(8, 8 * round(8 * self.d_model / 3 / 8))


class _Block(nn.Module):
    def __init__(self, config: MatMulFreeConfig):
        super().__init__()
        q, impl = config.quantise, config.impl
        if config.token_mixer == "mlgru":
            self.mixer = MLGRU(config.d_model, quantise=q, scan=config.scan, impl=impl)
        else:
            self.mixer = TernaryAttention(config.d_model, config.n_heads, quantise=q, impl=impl)
        self.glu = GLU(config.d_model, config.d_hidden, quantise=q, impl=impl)
        self.mixer_norm = pnn.RMSNorm(config.d_model)  # the reference's attn_norm
        self.glu_norm = pnn.RMSNorm(config.d_model)  # the reference's mlp_norm

    def forward(self, h, attention_mask=None):
        h = h + self.mixer(self.mixer_norm(h), attention_mask)  # h + TokenMixer(RMSNorm(h))
        return h + self.glu(self.glu_norm(h))  # h + GLU(RMSNorm(h))


class MatMulFreeLM(nn.Module):
    """idx: (batch, seq) token ids -> logits (batch, seq, vocab_size)."""

    def __init__(self, config: MatMulFreeConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.final_norm = pnn.RMSNorm(config.d_model)
        # a BitLinear head, untied: the reference's HGRNBitForCausalLM.lm_head, tie_word_embeddings=False
        self.lm_head = BitLinear(config.d_model, config.vocab_size, quantise=config.quantise,
                                 impl=config.impl)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def bitlinears(self) -> dict[str, BitLinear]:
        """The ternary layers by qualified name (what packing replaces)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, BitLinear)}

    def forward(self, idx: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        pnn.check_token_ids(idx, self.config.vocab_size, self.config.context_length)
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(idx.shape):
                raise ValueError(f"attention_mask must have the shape of idx {tuple(idx.shape)}, got "
                                 f"{tuple(attention_mask.shape)}")
            attention_mask = attention_mask.to(device=idx.device, dtype=torch.bool)
            if bool(attention_mask.all()):
                attention_mask = None
        h = self.token_embedding(idx)
        for block in self.blocks:
            h = block(h, attention_mask)
        return self.lm_head(self.final_norm(h))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats/token); targets already shifted, as for :class:`GPT`."""
        logits = self(idx)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten().long())
