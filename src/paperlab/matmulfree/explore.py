r"""The MatMul-free chapter's live explorer: the quantisation of a trained weight matrix and of an
activation row as the scale changes (see :mod:`paperlab.explore` for the pattern, ``03-matmulfree.md``
(sec-mmf-quant) for the quantisers).

The package quantises with the paper's scales (:mod:`paperlab.matmulfree.quant`): ``s_w = 1 / mean|W|``
and ``s_x = 127 / max|x|``. Here both are multiplied by a factor a reader sets:

.. math::

    W_t = \operatorname{clip}(\operatorname{round}(W \kappa s_w), -1, 1), \quad \hat W = W_t / (\kappa s_w);
    \qquad q = \operatorname{clip}(\operatorname{round}(x s_x / c), -128, 127), \quad \hat x = q c / s_x,

so that ``kappa = 1`` and ``c = 1`` give the package's quantisers exactly (the tests check it). A larger
``kappa`` rounds fewer weights to zero; a clip fraction ``c < 1`` spends the 256 levels on ``[-c max|x|,
c max|x|]``, finer steps for the bulk of the entries and clipped outliers.
"""

from __future__ import annotations

import torch

from paperlab.explore import Choice, Explorer, IntSlider, Slider
from paperlab.matmulfree.layers import BITLINEAR_EPS
from paperlab.matmulfree.quant import SCALE_FLOOR
from paperlab.plot import labelled
from paperlab_kernels.rmsnorm import rms_norm_reference

__all__ = ["quantisation_explorer", "ternary_at", "int8_at", "bitlinear_inputs"]


def ternary_at(w: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """``W_t / (kappa s_w)``: the dequantised ternary weights with the absmean scale times ``kappa``."""
    scale = kappa / w.float().abs().mean().clamp(min=SCALE_FLOOR)
    return (w.float() * scale).round().clamp(-1, 1) / scale


def int8_at(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """``q c / s_x``: the dequantised 8-bit activations (per row) with the absmax range times ``clip``."""
    scale = 127.0 / (clip * x.float().abs().amax(dim=-1, keepdim=True)).clamp(min=SCALE_FLOOR)
    return (x.float() * scale).round().clamp(-128, 127) / scale


@torch.no_grad()
def bitlinear_inputs(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """What every BitLinear of ``model`` quantises for one sequence ``tokens: (seq,)``: its input after its
    RMSNorm, ``(seq, in_features)``, by layer name (:meth:`MatMulFreeLM.bitlinears`)."""
    captured, handles = {}, []
    for name, layer in model.bitlinears().items():
        def hook(module, args, name=name):
            captured[name] = rms_norm_reference(args[0].float(), module.norm_weight.float(), BITLINEAR_EPS)[0]
        handles.append(layer.register_forward_pre_hook(hook))
    try:
        model(tokens[None])
    finally:
        for handle in handles:
            handle.remove()
    return captured


def quantisation_explorer(model, tokens: torch.Tensor, *, text: str | None = None) -> Explorer:
    """Controls: the ``layer`` (a BitLinear of the trained ``model``), the weight-scale factor ``kappa``,
    the activation clip fraction ``clip``, and the ``token`` whose activation row is quantised (a position
    of ``tokens``, one sequence, e.g. a validation sentence: ``text``, for the title).

    Top, the layer's latent weights ``W kappa s_w`` (histogram; rounding sends each bin to the value of its
    band: -1, 0 or +1) and the relative error of the ternary weights against ``kappa``; bottom, the
    activation row against its 8-bit version and the relative error against ``clip``.
    """
    layers = model.bitlinears()
    inputs = bitlinear_inputs(model, tokens)
    weights = {name: layer.weight.detach().float().cpu() for name, layer in layers.items()}
    kappas = torch.logspace(-1, 1, 41).tolist()
    clips = torch.linspace(0.05, 1.0, 39).tolist()

    def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
        return float((approx - exact).norm() / exact.norm())

    def draw(fig, *, layer: str, kappa: float, clip: float, token: int):
        w, x = weights[layer], inputs[layer][token]
        (w_ax, w_err), (x_ax, x_err) = fig.subplots(2, 2, width_ratios=[1.4, 1])
        scaled = (w * kappa / w.abs().mean()).flatten()
        limit = max(1.6, float(scaled.abs().quantile(0.999)))
        w_ax.hist(scaled.clamp(-limit, limit).numpy(), bins=80, color="0.45")
        for low, high, colour in ((-limit, -0.5, "C3"), (-0.5, 0.5, "0.6"), (0.5, limit, "C2")):
            w_ax.axvspan(low, high, color=colour, alpha=0.15, lw=0)  # rounds to -1 | 0 | +1
        zeros = float((ternary_at(w, kappa) == 0).float().mean())
        labelled(w_ax, "W kappa s_w (bands: -1 | 0 | +1)", "weights",
                 f"{layer}: {100 * zeros:.0f}% of the weights round to 0")
        errors = [relative_error(ternary_at(w, k), w) for k in kappas]
        w_err.plot(kappas, errors, "-", color="C0")
        w_err.plot(kappa, relative_error(ternary_at(w, kappa), w), "o", color="C3", ms=8)
        w_err.axvline(1.0, color="k", ls=":", lw=1)
        w_err.set_xscale("log")
        labelled(w_err, "weight scale factor kappa (1 = absmean)", "relative error of W")
        x_hat = int8_at(x, clip)
        x_ax.plot(x.numpy(), ".", ms=3, color="0.5", label="x (after RMSNorm)")
        x_ax.plot(x_hat.numpy(), ".", ms=3, color="C0", label="8-bit, dequantised")
        clipped = int((x.abs() > x_hat.abs().max() + 1e-6).sum())
        labelled(x_ax, "channel", "activation",
                 f"token {token}" + (f" of '{text}'" if text else "") + f": {clipped} channels clipped")
        x_ax.legend(fontsize=7, markerscale=3, loc="best")
        errors = [relative_error(int8_at(x, c), x) for c in clips]
        x_err.plot(clips, errors, "-", color="C0")
        x_err.plot(clip, relative_error(x_hat, x), "o", color="C3", ms=8)
        x_err.axvline(1.0, color="k", ls=":", lw=1)
        x_err.set_yscale("log")
        labelled(x_err, "clip fraction c (1 = absmax)", "relative error of x")

    names = list(layers)
    return Explorer(draw, {
        "layer": Choice(names, names[0], label="BitLinear"),
        "kappa": Slider(0.1, 10.0, 1.0, step=0.02, log=True, label="weight scale factor kappa"),
        "clip": Slider(0.05, 1.0, 1.0, step=0.01, label="activation clip fraction c"),
        "token": IntSlider(0, tokens.numel() - 1, tokens.numel() // 2, label="token"),
    }, what="the weight scale, the activation clipping, the layer and the token", figsize=(11, 6))
