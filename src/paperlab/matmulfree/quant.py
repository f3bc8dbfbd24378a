r"""Ternary weights, 8-bit activations and the straight-through estimator (BitNet b1.58 recipe; the
MatMul-free paper's section 3.1 and its training details, section 3.4).

Weights, per tensor (absmean): :math:`s_w = 1 / \max(\operatorname{mean}|W|, 10^{-5})`,
:math:`W_t = \operatorname{clip}(\operatorname{round}(W s_w), -1, 1) \in \{-1, 0, 1\}` and the dequantised
weight is :math:`W_q = W_t / s_w`.

Activations, per token (absmax): :math:`s_x = 127 / \max(\max_j |x_j|, 10^{-5})`,
:math:`q = \operatorname{clip}(\operatorname{round}(x s_x), -128, 127)` and :math:`x_q = q / s_x`.

Rounding has zero gradient almost everywhere, so training uses the straight-through estimator (STE):
the forward pass uses the quantised value, the backward pass pretends quantisation is the identity,
``ste(x, q) = x + (q - x).detach()``.
"""

from __future__ import annotations

import torch

__all__ = ["ternary_weight", "weight_quant", "activation_quant_int8", "activation_quant", "ste",
           "SCALE_FLOOR"]

SCALE_FLOOR = 1e-5


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def ternary_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantisation. w: (out, in) -> (W_t int8 in {-1, 0, 1}, s_w: 0-dim float32).

    ``W_t / s_w`` approximates ``w``.
    """
    _check_float("w", w)
    with torch.no_grad():
        scale = 1.0 / w.float().abs().mean().clamp(min=SCALE_FLOOR)
        w_t = (w.float() * scale).round().clamp(-1, 1)
    return w_t.to(torch.int8), scale


def weight_quant(w: torch.Tensor) -> torch.Tensor:
    """Dequantised ternary weights ``W_t / s_w`` in ``w.dtype`` (no gradient path; see :func:`ste`)."""
    w_t, scale = ternary_weight(w)
    return (w_t.float() / scale).to(w.dtype)


def activation_quant_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8. x: (..., d) -> (q: int8 (..., d), s_x: float32 (..., 1)), ``x ~ q / s_x``."""
    _check_float("x", x)
    with torch.no_grad():
        xf = x.float()
        scale = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=SCALE_FLOOR)
        q = (xf * scale).round().clamp(-128, 127)
    return q.to(torch.int8), scale


def activation_quant(x: torch.Tensor) -> torch.Tensor:
    """Dequantised 8-bit activations ``q / s_x`` in ``x.dtype`` (no gradient path; see :func:`ste`)."""
    q, scale = activation_quant_int8(x)
    return (q.float() / scale).to(x.dtype)


def ste(x: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: the value of ``quantised``, the gradient of ``x`` (identity)."""
    return x + (quantised - x).detach()
