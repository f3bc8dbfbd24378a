"""The SSD chapter's live explorer: the semiseparable matrix of one head as the decay and the chunk size
change (see :mod:`paperlab.explore` for the pattern, ``02-ssd.md`` (sec-ssd-chunked) for the algorithm)."""

from __future__ import annotations

import math

import torch

from paperlab.explore import Choice, Explorer, Slider
from paperlab.plot import labelled
from paperlab.ssd.core import decay_mask, random_inputs, semiseparable_matrix, ssd_chunked, ssd_quadratic
from paperlab_kernels.ssd import chunked_flops, scan_flops

__all__ = ["semiseparable_explorer"]


def semiseparable_explorer(seqlen: int = 48, headdim: int = 4, d_state: int = 4, seed: int = 3) -> Explorer:
    """Controls: ``decay``, the typical decay per step ``a = exp(dt A)`` (``A`` is set so that
    ``exp(mean(dt) A)`` equals it; ``dt`` stays selective, varying by position), and ``chunk_size`` ``Q``.

    Left, the decay mask ``L``; middle, ``M = L o C B^T`` with the chunked algorithm's blocks outlined
    (diagonal blocks: a ``Q x Q`` matrix product each; the blocks below them: rank at most ``N``, reached
    through the chunk states) and the largest difference between the chunked and the quadratic outputs
    (every ``Q`` computes the same function); right, the flops per head of the chunked algorithm against
    ``Q`` at this length, beside the recurrence's and the quadratic form's.
    """
    x, dt, _, B, C, D, _ = random_inputs(batch=1, seqlen=seqlen, nheads=1, headdim=headdim, d_state=d_state,
                                         seed=seed)
    mean_dt = float(dt.mean())
    sizes = [q for q in (4, 6, 8, 12, 16, 24, 32, 48, 64) if q <= seqlen]

    def draw(fig, *, decay: float, chunk_size: int):
        A = torch.tensor([math.log(decay) / mean_dt], dtype=x.dtype)  # exp(mean(dt) A) = decay
        L = decay_mask(dt, A)[0, 0]
        M = semiseparable_matrix(dt, A, B, C)[0, 0]
        y_chunked, _ = ssd_chunked(x, dt, A, B, C, D, chunk_size=chunk_size)
        y_quadratic, _ = ssd_quadratic(x, dt, A, B, C, D)
        difference = float((y_chunked - y_quadratic).abs().max())
        axes = fig.subplots(1, 3, width_ratios=[1, 1, 1.1])
        image = axes[0].imshow(L.numpy(), cmap="viridis", vmin=0, vmax=1)
        fig.colorbar(image, ax=axes[0], shrink=0.8)
        labelled(axes[0], "input position s", "output position t", f"decay mask L (a = {decay:.3g})")
        limit = float(M.abs().max())
        image = axes[1].imshow(M.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        fig.colorbar(image, ax=axes[1], shrink=0.8)
        _outline_chunks(axes[1], seqlen, chunk_size)
        labelled(axes[1], "input position s", "output position t",
                 f"M = L o CB^T, Q = {chunk_size}\nmax |chunked - quadratic| = {difference:.0e}")
        for ax in axes[:2]:
            ax.grid(False)
        flops = [chunked_flops(1, seqlen, 1, headdim, 1, d_state, q) for q in sizes]
        axes[2].plot(sizes, flops, "o-", label="chunked")
        axes[2].plot(chunk_size, chunked_flops(1, seqlen, 1, headdim, 1, d_state, chunk_size), "o", ms=11,
                     mfc="none", color="C3", label=f"Q = {chunk_size}")
        axes[2].axhline(scan_flops(1, seqlen, 1, headdim, d_state), color="k", ls="--", label="recurrence")
        axes[2].axhline(2 * seqlen**2 * (d_state + headdim), color="grey", ls=":", label="quadratic (~)")
        axes[2].set_ylim(bottom=0)
        axes[2].set_xscale("log", base=2)
        axes[2].set_xticks(sizes, [str(q) for q in sizes])
        labelled(axes[2], "chunk size Q", f"flops per head (T = {seqlen})")
        axes[2].legend(fontsize=7)

    return Explorer(draw, {"decay": Slider(0.5, 0.995, 0.9, step=0.005, label="decay per step a"),
                           "chunk_size": Choice(sizes, 8 if 8 in sizes else sizes[0], label="chunk size Q")},
                    what="the decay per step and the chunk size", figsize=(12, 3.9))


def _outline_chunks(ax, seqlen: int, chunk_size: int) -> None:
    """Outline the diagonal Q x Q blocks (solid) and the off-diagonal block rows (dashed)."""
    from matplotlib.patches import Rectangle

    for start in range(0, seqlen, chunk_size):
        size = min(chunk_size, seqlen - start)
        ax.add_patch(Rectangle((start - 0.5, start - 0.5), size, size, fill=False, lw=1.2, ec="k"))
        if start:
            ax.add_patch(Rectangle((-0.5, start - 0.5), start, size, fill=False, lw=1.0, ec="0.25", ls="--"))
