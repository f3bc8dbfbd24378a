r"""The layers of the MatMul-free LM: BitLinear, the MLGRU token mixer, the GLU channel mixer, and a
ternary attention layer for the ablation.

Every layer takes ``quantise``: ``True`` gives the paper's ternary-weight, 8-bit-activation layer trained
with the straight-through estimator; ``False`` gives the same architecture in full precision (the "fp"
variant), so that a comparison isolates the effect of quantisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from paperlab import nn as pnn
from paperlab.matmulfree.quant import activation_quant, ste, weight_quant
from paperlab_kernels import mlgru as mlgru_kernels
from paperlab_kernels import rmsnorm as rms_kernels

__all__ = ["BitLinear", "MLGRU", "GLU", "TernaryAttention", "sequential_scan", "parallel_scan"]

BITLINEAR_EPS = 1e-8


class BitLinear(nn.Module):
    r"""RMSNorm -> 8-bit absmax activations -> linear with ternary absmean weights, no bias (section 3.1).

    ``y = Q_a(RMSNorm(x)) Q_w(W)^T`` with both quantisers straight-through (see
    :mod:`paperlab.matmulfree.quant`). x: (..., in_features) -> (..., out_features).

    ``impl``: how the RMSNorm + activation quantisation runs: ``"auto"`` uses the fused kernel of
    :mod:`paperlab_kernels.rmsnorm` (Numba on CPU, Triton on CUDA; its backward is the STE); ``"reference"``
    the unfused PyTorch ops. With ``quantise=False`` it is RMSNorm -> full-precision linear.
    """

    def __init__(self, in_features: int, out_features: int, *, quantise: bool = True, impl: str = "auto"):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BitLinear {name} must be a positive int, got {value!r}")
        self.in_features, self.out_features = in_features, out_features
        self.quantise, self.impl = quantise, impl
        self.norm_weight = nn.Parameter(torch.ones(in_features))
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, std=0.02)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm, then (if quantising) fake 8-bit quantisation, fused when ``impl`` allows."""
        if not self.quantise:
            return rms_kernels.rms_norm(x, self.norm_weight, BITLINEAR_EPS, impl=self.impl)
        if self.impl == "reference":  # unfused: norm, then quantise, straight through
            y = rms_kernels.rms_norm_reference(x, self.norm_weight, BITLINEAR_EPS)  # y = RMSNorm(x)
            # Q_a(y) = clip(round(y s_x), -128, 127) / s_x with s_x = 127 / max_j |y_j|, per token
            return ste(y, activation_quant(y))
        return rms_kernels.rms_norm_fake_quant(x, self.norm_weight, BITLINEAR_EPS, impl=self.impl)  # fused

    def quantised_weight(self) -> torch.Tensor:
        """``W_t / s_w`` with the straight-through gradient (``self.weight`` if not quantising)."""
        if not self.quantise:
            return self.weight
        # Q_w(W) = clip(round(W s_w), -1, 1) / s_w with s_w = 1 / mean|W|, per tensor
        return ste(self.weight, weight_quant(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = self.normalise(x)  # Q_a(RMSNorm(x)): 8-bit per token
        w_q = self.quantised_weight()  # Q_w(W): ternary per tensor
        return F.linear(x_q, w_q)  # y = Q_a(RMSNorm(x)) Q_w(W)^T: additions and subtractions only

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, quantise={self.quantise}"


def sequential_scan(f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``h_t = f_t h_{t-1} + (1 - f_t) c_t`` (``h_0 = 0``) by a loop over time. f, c, h: (batch, seq, d)."""
    return mlgru_kernels.mlgru_scan_reference(f, c)


def parallel_scan(f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    r"""The same recurrence as a parallel prefix scan (Hillis & Steele), in ``ceil(log2 seq)`` steps.

    Each step is the affine map ``h -> a h + b`` with ``a = f_t``, ``b = (1 - f_t) c_t``. Composing two
    maps (first ``(a_1, b_1)``, then ``(a_2, b_2)``) gives ``(a_1 a_2, a_2 b_1 + b_2)``, an associative
    operation; after the scan, ``b_t`` is the composition of maps ``1..t`` applied to
    ``h_0 = 0``, i.e. ``h_t``.
    Every step is element-wise, so autograd differentiates it. f, c: (batch, seq, d) -> h.
    """
    a, b = f, (1 - f) * c
    seq, offset = f.shape[1], 1
    while offset < seq:
        a_prev = F.pad(a[:, :-offset], (0, 0, offset, 0), value=1.0)  # identity map before the start
        b_prev = F.pad(b[:, :-offset], (0, 0, offset, 0), value=0.0)
        a, b = a_prev * a, a * b_prev + b
        offset *= 2
    return b


SCANS = ("kernel", "sequential", "parallel")
"""How :class:`MLGRU` computes its recurrence."""


class MLGRU(nn.Module):
    r"""MatMul-free linear gated recurrent unit (paper section 3.3; ``layers/hgrn_bit.py``).

    For x: (batch, seq, d)::

        f_t = sigmoid(BitLinear_f(x_t))          forget gate
        c_t = SiLU(BitLinear_c(x_t))             candidate
        h_t = f_t * h_{t-1} + (1 - f_t) * c_t    element-wise recurrence: no hidden-to-hidden matmul
        g_t = BitLinear_g(x_t)                   output gate
        o_t = BitLinear_o(RMSNorm(g_t) * SiLU(h_t))

    The output line follows the reference code (``hgrn_bit.py``: ``o_proj(g_norm(g_proj(x), o))`` with
    ``FusedRMSNormSwishGate(x, o) = RMSNorm(x) * SiLU(o)``): the gate projection is normalised and the
    hidden state passes through the SiLU. (The paper's equations write the gate without a norm; we follow
    the code, which is what was trained.)

    ``scan``: ``"kernel"`` (:func:`paperlab_kernels.mlgru.mlgru_scan`), ``"sequential"`` or ``"parallel"``
    (the two PyTorch forms above; all three agree). ``attention_mask`` (batch, seq), True = real token:
    padding gets ``c = 0``, so with ``h_0 = 0`` a left-padded prefix leaves the state at 0.
    """

    def __init__(self, d_model: int, *, quantise: bool = True, scan: str = "kernel", impl: str = "auto"):
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
        self.scan = scan
        self.impl = impl
        self.f_proj, self.c_proj, self.g_proj, self.o_proj = (
            BitLinear(d_model, d_model, quantise=quantise, impl=impl) for _ in range(4))
        self.g_norm = pnn.RMSNorm(d_model)  # the reference's g_norm: RMSNorm of the gate projection

    def recurrence(self, f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.scan == "sequential":
            return sequential_scan(f, c)
        if self.scan == "parallel":
            return parallel_scan(f, c)
        return mlgru_kernels.mlgru_scan(f, c, impl=self.impl)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        f = torch.sigmoid(self.f_proj(x))  # f_t = sigmoid(BitLinear_f(x_t)), the forget gate
        c = F.silu(self.c_proj(x))  # c_t = SiLU(BitLinear_c(x_t)), the candidate
        if attention_mask is not None:
            c = c * attention_mask[..., None].to(c.dtype)  # padding adds nothing to the state
        h = self.recurrence(f, c)  # h_t = f_t * h_{t-1} + (1 - f_t) * c_t, element-wise (a linear scan)
        g = self.g_proj(x)  # g_t = BitLinear_g(x_t), the output gate
        return self.o_proj(self.g_norm(g) * F.silu(h))  # o_t = BitLinear_o(RMSNorm(g_t) * SiLU(h_t))


class GLU(nn.Module):
    """Channel mixer (section 3.3): ``[g, u] = BitLinear_gate_up(x)``, ``BitLinear_down(SiLU(g) * u)``.
    x: (..., d) -> (..., d).

    As in the reference code (``HGRNBitMLP``), the gate and up projections are one BitLinear of width
    ``2 d_hidden`` whose output is split in two: one RMSNorm, one activation quantisation and one weight
    scale ``s_w`` for both halves."""

    def __init__(self, d_model: int, d_hidden: int, *, quantise: bool = True, impl: str = "auto"):
        super().__init__()
        self.gate_up = BitLinear(d_model, 2 * d_hidden, quantise=quantise, impl=impl)
        self.down = BitLinear(d_hidden, d_model, quantise=quantise, impl=impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # one ternary matrix, split into gate and up halves
        return self.down(F.silu(gate) * up)  # down(SiLU(gate) * up), all BitLinear


class TernaryAttention(nn.Module):
    """Causal self-attention whose Q, K, V and output projections are BitLinear (the paper's failed
    first attempt: ternary Q and K). Softmax attention itself stays in floating point, with RoPE.
    x: (batch, seq, d) -> (batch, seq, d)."""

    def __init__(self, d_model: int, n_heads: int, *, quantise: bool = True, impl: str = "auto"):
        super().__init__()
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model ({d_model}) / n_heads ({n_heads}) must be an even integer")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            BitLinear(d_model, d_model, quantise=quantise, impl=impl) for _ in range(4))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, seq, d = x.shape
        if attention_mask is None:
            positions = torch.arange(seq, device=x.device)
        else:
            positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        cos, sin = pnn.rope_cos_sin(positions, self.head_dim)
        q, k, v = (p(x).view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = pnn.apply_rope(q, cos, sin), pnn.apply_rope(k, cos, sin)
        if attention_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            idx = torch.arange(seq, device=x.device)
            mask = (idx[None, :] <= idx[:, None]) & attention_mask.bool()[:, None, None, :]
            mask = mask | torch.eye(seq, dtype=torch.bool, device=x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, d))
