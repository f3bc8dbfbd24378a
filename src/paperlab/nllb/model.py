r"""An encoder-decoder transformer for many languages, with dense, sparsely gated MoE and conditional MoE
feed-forward layers (NLLB Team, 2024, in Nature; the longer report is arXiv 2207.04672, 2022; fairseq
``modules/moe/top2gate.py`` and ``moe_layer.py``).

Layout (pre-norm, no biases, one embedding matrix shared by encoder, decoder and output layer). Positions
enter twice: a learned absolute position embedding is added to the token embeddings of both stacks, and
rotary embeddings (RoPE) rotate queries and keys in the self-attention layers (cross-attention has none);
NLLB's transformer uses sinusoidal absolute positions only::

    source = [<2src>, x_1 .. x_n, <eos>]            -> encoder (bidirectional self-attention + FFN) x L
    decoder input  = [<bos>, <2tgt>, y_1 .. y_m]    -> decoder (causal self-attn + cross-attn + FFN) x L
    decoder target = [<2tgt>, y_1 .. y_m, <eos>]

The source-language tag opens the encoder input; the target-language tag is **forced** as the decoder's
first output token (it is given, never predicted, and carries no loss), so one model translates into any
language it was told to.

**The sparsely gated MoE layer** (:class:`MoEFFN`) replaces the FFN in every ``moe_every``-th layer. For a
token ``x`` with gate logits ``s = W_g x`` and probabilities ``p = softmax(s)`` over ``E`` experts:

- expert 1: ``e_1 = argmax_e p_e``; expert 2 (top-2 gating): ``e_2 = argmax_{e != e_1} (s_e + G_e)`` with
  Gumbel noise ``G_e`` in training (sampling the second expert in proportion to ``p``), without in eval;
- capacity: in training each expert processes at most ``C = ceil(f k S / E)`` tokens of a batch of ``S``
  real tokens (capacity factor ``f``; ``f = 1``, ``k = 2`` is fairseq's ``2 ceil(S/E)``); first choices take
  slots before second choices; a choice over capacity is **dropped** (the token keeps only its residual).
  In evaluation ``C = ceil(fraction S)`` with fraction 1 by default, as in NLLB: nothing is dropped;
- output: ``y = g_1 FFN_{e_1}(x) + g_2 FFN_{e_2}(x)``, ``g_j = p_{e_j} / (p_{e_1} + p_{e_2})`` over the kept
  choices;
- load balancing: ``l_aux = E^2 * mean_e(me_e * ce_e)``, ``me_e`` the mean gate probability of expert ``e``
  and ``ce_e`` the fraction of tokens whose first choice is ``e``, both over real tokens (1 under uniform
  routing); added to the loss with weight 0.01.

Dispatch and combine (grouping tokens by expert within capacity, scattering weighted outputs back) are
:mod:`paperlab_kernels.moe`. Padding tokens are never routed and never count in the statistics.

**Expert output masking (EOM)**: in training, each token's whole MoE output is zeroed with probability
``p`` (no rescaling); in eval the output is multiplied by ``1 - p``, the expected value seen in training.

**Conditional MoE (CMoE)** (:class:`ConditionalMoE`; NLLB's Conditional MoE Routing, CMR, fairseq
``modules/moe/moe_cmr_layer.py``): a gate ``g(x) = sigmoid(w^T x + b)`` mixes a dense FFN and a MoE,
``y = (1 - g) FFN(x) + g MoE(x)``, with the budget loss ``|mean g - b_target|``
(``b_target = 0.8``) so that a fixed share of the computation goes through the experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from paperlab.config import check_choice, check_flags, check_ints, check_numbers, check_that, is_int
from paperlab.nn import CausalSelfAttention, RMSNorm, SwiGLU, apply_rope, rope_cos_sin
from paperlab_kernels import moe

__all__ = [
    "ModelConfig",
    "Attention",
    "MoEFFN",
    "ConditionalMoE",
    "Seq2Seq",
    "greedy_decode",
    "beam_search",
]

FFN_KINDS = ("dense", "moe", "cmoe")


@dataclass(frozen=True)
class ModelConfig:
    """Size and kind of a :class:`Seq2Seq`.

    ffn: ``"dense"`` (SwiGLU everywhere), ``"moe"`` or ``"cmoe"`` in every ``moe_every``-th layer of each
    stack (layer ``i`` with ``(i + 1) % moe_every == 0``). Each expert has ``expert_hidden`` units (default
    ``d_hidden // 2``: with top-2 routing a token then uses as many FFN weights as in the dense model, the
    "same active parameters" comparison). capacity_factor ``f`` sets the training capacity;
    eval_capacity_token_fraction the evaluation capacity as a fraction of the batch's real tokens (fairseq's
    ``moe_eval_capacity_token_fraction``; 1.0, NLLB's choice, drops nothing).
    aux_weight: weight of ``l_aux``; eom_p: expert output masking probability; cmoe_budget/cmoe_weight: the
    CMoE budget target and the weight of its loss. label_smoothing of the cross-entropy.
    """

    vocab_size: int
    max_len: int = 32
    d_model: int = 64
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_hidden: int = 128
    dropout: float = 0.1
    ffn: str = "dense"
    moe_every: int = 2
    n_experts: int = 8
    expert_hidden: int | None = None
    capacity_factor: float = 1.0
    eval_capacity_token_fraction: float = 1.0
    gumbel_second: bool = True
    aux_weight: float = 0.01
    eom_p: float = 0.0
    cmoe_budget: float = 0.8
    cmoe_weight: float = 0.01
    label_smoothing: float = 0.1
    pad_id: int = 0

    def __post_init__(self):
        check_ints(self, "vocab_size", "max_len", "d_model", "n_heads", "n_encoder_layers",
                   "n_decoder_layers", "d_hidden", "moe_every", "n_experts")
        check_ints(self, "expert_hidden", optional=True)
        check_ints(self, "pad_id", low=0, high=self.vocab_size - 1)
        check_choice(self, "ffn", FFN_KINDS)
        head_dim = self.d_model / self.n_heads
        check_that(self, head_dim == int(head_dim) and int(head_dim) % 2 == 0, "n_heads",
                   f"such that d_model / n_heads is an even integer (d_model = {self.d_model})")
        check_numbers(self, "eom_p", "dropout", low=0, high=1, open_high=True)
        check_numbers(self, "label_smoothing", low=0, high=1, open_high=True)
        check_numbers(self, "capacity_factor", low=0, open_low=True)
        check_numbers(self, "eval_capacity_token_fraction", low=0, high=1, open_low=True)
        check_numbers(self, "aux_weight", "cmoe_weight", low=0)
        check_numbers(self, "cmoe_budget", low=0, high=1)
        check_flags(self, "gumbel_second")
        if self.ffn != "dense":
            check_that(self, self.n_experts >= 2, "n_experts", "at least 2 for top-2 routing")
            layers = min(self.n_encoder_layers, self.n_decoder_layers)
            check_that(self, self.moe_every <= layers, "moe_every",
                       f"at most the layers per stack ({layers}), so that each stack has a MoE layer")

    @property
    def hidden_per_expert(self) -> int:
        return self.expert_hidden if self.expert_hidden is not None else max(1, self.d_hidden // 2)

    def is_moe_layer(self, index: int) -> bool:
        return self.ffn != "dense" and (index + 1) % self.moe_every == 0


# ----------------------------------------------------------------------------------------------------------
# Attention: bidirectional self-attention (encoder) and cross-attention (decoder)
# ----------------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention without causal mask: queries from ``x``, keys/values from ``context``.

    forward(x, context, key_mask, rope=None): x (batch, q_len, d_model), context (batch, k_len, d_model),
    key_mask (batch, k_len) bool (True = real token; padding keys are hidden from every query), rope: the
    (cos, sin) pair of :func:`paperlab.nn.rope_cos_sin` for self-attention (``context is x``), None for
    cross-attention. ``softmax(q k^T / sqrt(head_dim) + mask) v`` per head. Returns (batch, q_len, d_model).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, d_model // n_heads, dropout
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x, context, key_mask, rope=None):
        batch, q_len, d_model = x.shape
        k_len = context.shape[1]
        q = self.q(x).view(batch, q_len, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).view(batch, k_len, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask = key_mask[:, None, None, :]  # (batch, 1, 1, k_len)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.residual_dropout(self.out(y.transpose(1, 2).reshape(batch, q_len, d_model)))


# ----------------------------------------------------------------------------------------------------------
# Mixture of experts
# ----------------------------------------------------------------------------------------------------------
class MoEFFN(nn.Module):
    """Sparsely gated mixture of ``n_experts`` SwiGLU experts with top-2 gating (see the module docstring).

    forward(x, valid): x (tokens, d_model), valid (tokens,) bool (False = padding, never routed).
    Returns (y (tokens, d_model), l_aux scalar tensor). After each call ``self.last`` holds the routing
    record (detached): ``expert_index`` (tokens, k), ``slot`` (tokens, k; -1 = dropped or padding),
    ``capacity``, ``dropped`` (fraction of real (token, choice) pairs over capacity), ``dropped_tokens``
    (fraction of real tokens with every choice dropped), ``l_aux``.

    Expert weights are stacked (``w_gate``, ``w_up``: (E, d_model, hidden); ``w_down``: (E, hidden, d_model)),
    so the experts run as three batched matmuls on the (E, C, d_model) dispatch buffer:
    ``FFN_e(b) = (silu(b W_gate[e]) * (b W_up[e])) W_down[e]``, the SwiGLU of :class:`paperlab.nn.SwiGLU`.
    """

    def __init__(
        self,
        d_model: int,
        hidden: int,
        n_experts: int,
        *,
        capacity_factor: float = 1.0,
        eval_capacity_token_fraction: float = 1.0,
        gumbel_second: bool = True,
        eom_p: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        for name, value in (("d_model", d_model), ("hidden", hidden), ("n_experts", n_experts)):
            if not is_int(value) or value < 1:
                raise ValueError(f"MoEFFN {name} must be a positive integer, got {value!r}")
        self.n_experts, self.k = n_experts, min(2, n_experts)  # one expert: top-1 (ModelConfig needs >= 2)
        if not 0 < eval_capacity_token_fraction <= 1:
            raise ValueError(f"MoEFFN eval_capacity_token_fraction must be in (0, 1], got "
                             f"{eval_capacity_token_fraction!r}")
        self.capacity_factor = capacity_factor
        self.eval_capacity_token_fraction = eval_capacity_token_fraction
        self.gumbel_second, self.eom_p = gumbel_second, eom_p
        self.gate = nn.Linear(d_model, n_experts, bias=False)  # W_g
        self.w_gate = nn.Parameter(torch.randn(n_experts, d_model, hidden) * 0.02)
        self.w_up = nn.Parameter(torch.randn(n_experts, d_model, hidden) * 0.02)
        self.w_down = nn.Parameter(torch.randn(n_experts, hidden, d_model) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.last: dict = {}

    @torch.no_grad()
    def load_dense(self, ffn: SwiGLU, expert: int | None = None) -> MoEFFN:
        """Copy a :class:`SwiGLU`'s weights into one expert (or all): ``nn.Linear`` stores ``W^T``."""
        experts = range(self.n_experts) if expert is None else [expert]
        for e in experts:
            self.w_gate[e].copy_(ffn.gate.weight.t())
            self.w_up[e].copy_(ffn.up.weight.t())
            self.w_down[e].copy_(ffn.down.weight.t())
        return self

    def capacity(self, n_tokens: int) -> int:
        """Rows per expert buffer for a batch of ``n_tokens`` real tokens.

        Training: ``C = ceil(f k S / E)`` (``f = 1``, ``k = 2``: fairseq's ``2 ceil(S / E)``); choices past it
        are dropped. Evaluation: ``C = ceil(fraction * S)``; with fraction 1 (NLLB) an expert can take every
        token of the batch, so nothing is dropped and a sentence's output does not depend on its batch.
        (:meth:`route` then sizes the buffers to the busiest expert's load, at most ``C``: the same result
        without ``E S`` mostly empty rows.)
        """
        if self.training:
            return moe.capacity_for(n_tokens, self.n_experts, self.k, self.capacity_factor)
        return max(1, math.ceil(self.eval_capacity_token_fraction * n_tokens))

    def route(self, x: torch.Tensor, valid: torch.Tensor):
        """Top-k gating: (expert_index (T, k), gate weights (T, k) over kept choices, slot (T, k),
        capacity, l_aux, probabilities (T, E))."""
        logits = self.gate(x).float()  # s = W_g x: (T, E)
        probs = logits.softmax(dim=-1)  # p = softmax(s)
        first = probs.argmax(dim=-1)  # e_1 = argmax_e p_e
        if self.k == 2:
            noisy = logits
            if self.training and self.gumbel_second:  # s_e + G_e, G_e ~ Gumbel(0, 1): samples e_2 ~ p
                uniform = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
                noisy = logits - torch.log(-torch.log(uniform))
            second = noisy.masked_fill(F.one_hot(first, self.n_experts).bool(), float("-inf")).argmax(dim=-1)
            expert_index = torch.stack([first, second], dim=1)  # e_2 = argmax_{e != e_1} (s_e + G_e)
        else:
            expert_index = first[:, None]
        n_real = int(valid.sum())  # S: padding is never routed
        capacity = self.capacity(n_real)  # training: C = ceil(f k S / E); evaluation: ceil(fraction S)
        if not self.training:  # the busiest expert's load is all a buffer needs: the same outputs as C rows
            load = torch.bincount(expert_index[valid].flatten(), minlength=self.n_experts)
            capacity = min(capacity, max(1, int(load.max())))
        slot = moe.assign_slots(expert_index, self.n_experts, capacity, valid=valid)  # -1: dropped
        kept = (slot >= 0).to(probs.dtype)
        gate = probs.gather(1, expert_index) * kept  # p_{e_j} of the kept choices
        gate = gate / gate.sum(dim=1, keepdim=True).clamp(min=torch.finfo(gate.dtype).eps)  # g_j (sum 1)
        weight = valid.to(probs.dtype)[:, None] / max(n_real, 1)  # 1/S on real tokens
        me = (probs * weight).sum(dim=0)  # m_e = (1/S) sum_t p_te
        ce = (F.one_hot(first, self.n_experts).to(probs.dtype) * weight).sum(dim=0)  # c_e: share of e_1 = e
        l_aux = self.n_experts**2 * (me * ce).mean()  # l_aux = E^2 (1/E) sum_e m_e c_e
        return expert_index, gate, slot, capacity, l_aux, probs

    def experts(self, buffer: torch.Tensor) -> torch.Tensor:
        """(E, C, d_model) -> (E, C, d_model): every expert's SwiGLU on its buffer."""
        hidden = F.silu(torch.bmm(buffer, self.w_gate)) * torch.bmm(buffer, self.w_up)
        return self.dropout(torch.bmm(hidden, self.w_down))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None):
        if x.dim() != 2:
            raise ValueError(f"x must be (tokens, d_model), got shape {tuple(x.shape)}")
        if valid is None:
            valid = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        expert_index, gate, slot, capacity, l_aux, _ = self.route(x, valid)
        buffer = moe.dispatch(x, expert_index, slot, self.n_experts, capacity)
        y = moe.combine(self.experts(buffer), expert_index, slot, gate.to(x.dtype))
        if self.eom_p > 0:
            if self.training:  # EOM: drop each token's whole expert output with probability p
                keep = torch.rand(x.shape[0], 1, device=x.device) >= self.eom_p
                y = y * keep.to(y.dtype)
            else:
                y = y * (1.0 - self.eom_p)
        real_choices = valid[:, None].expand_as(slot)
        n_real = int(valid.sum())
        self.last = {
            "expert_index": expert_index.detach(),
            "slot": slot.detach(),
            "valid": valid.detach(),
            "capacity": capacity,
            "l_aux": float(l_aux.detach()),
            "dropped": float(((slot < 0) & real_choices).sum()) / max(1, int(real_choices.sum())),
            "dropped_tokens": float(((slot < 0).all(dim=1) & valid).sum()) / max(1, n_real),
        }
        return y, l_aux


class ConditionalMoE(nn.Module):
    """``y = (1 - g) FFN(x) + g MoE(x)`` with ``g = sigmoid(w^T x + b)``; returns (y, l_aux, budget loss).

    forward(x, valid): x (tokens, d_model), valid (tokens,) bool. Budget loss ``|mean_real(g) - budget|``.
    ``self.last_gate`` is the mean gate over real tokens of the last call.
    """

    def __init__(
        self, d_model: int, d_hidden: int, moe_layer: MoEFFN, budget: float = 0.8, dropout: float = 0.0
    ):
        super().__init__()
        self.dense = SwiGLU(d_model, d_hidden, dropout)
        self.moe = moe_layer
        self.gate = nn.Linear(d_model, 1)
        self.budget = budget
        self.last_gate = float("nan")

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None):
        if valid is None:
            valid = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        g = torch.sigmoid(self.gate(x))  # (T, 1)
        moe_out, l_aux = self.moe(x, valid)
        y = (1 - g) * self.dense(x) + g * moe_out
        weight = valid.to(g.dtype) / max(int(valid.sum()), 1)
        mean_gate = (g[:, 0] * weight).sum()
        self.last_gate = float(mean_gate.detach())
        return y, l_aux, (mean_gate - self.budget).abs()


class FFN(nn.Module):
    """The feed-forward sublayer of one block: dense SwiGLU, MoE or CMoE on (batch, seq, d_model)."""

    def __init__(self, config: ModelConfig, moe_layer: bool):
        super().__init__()
        self.kind = config.ffn if moe_layer else "dense"
        if self.kind == "dense":
            self.ffn = SwiGLU(config.d_model, config.d_hidden, config.dropout)
            return
        experts = MoEFFN(
            config.d_model,
            config.hidden_per_expert,
            config.n_experts,
            capacity_factor=config.capacity_factor,
            eval_capacity_token_fraction=config.eval_capacity_token_fraction,
            gumbel_second=config.gumbel_second,
            eom_p=config.eom_p,
            dropout=config.dropout,
        )
        self.ffn = (
            experts
            if self.kind == "moe"
            else ConditionalMoE(config.d_model, config.d_hidden, experts, config.cmoe_budget, config.dropout)
        )

    @property
    def moe(self) -> MoEFFN | None:
        return {"dense": None, "moe": self.ffn, "cmoe": getattr(self.ffn, "moe", None)}[self.kind]

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if self.kind == "dense":
            return self.ffn(x), {}
        batch, seq, d = x.shape
        out = self.ffn(x.reshape(batch * seq, d), valid.reshape(-1))
        losses = {"l_aux": out[1]} if self.kind == "moe" else {"l_aux": out[1], "budget": out[2]}
        return out[0].reshape(batch, seq, d), losses


class EncoderBlock(nn.Module):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model)
        self.attention = Attention(config.d_model, config.n_heads)
        self.ffn_norm = RMSNorm(config.d_model)
        self.ffn = FFN(config, config.is_moe_layer(index))

    def forward(self, h, mask, rope):
        a = self.attention_norm(h)
        h = h + self.attention(a, a, mask, rope)
        y, losses = self.ffn(self.ffn_norm(h), mask)
        return h + y, losses


class DecoderBlock(nn.Module):
    def __init__(self, config: ModelConfig, index: int):
        super().__init__()
        self.self_norm = RMSNorm(config.d_model)
        self.self_attention = CausalSelfAttention(config.d_model, config.n_heads)
        self.cross_norm = RMSNorm(config.d_model)
        self.cross_attention = Attention(config.d_model, config.n_heads)
        self.ffn_norm = RMSNorm(config.d_model)
        self.ffn = FFN(config, config.is_moe_layer(index))

    def forward(self, h, mask, rope, memory, memory_mask):
        # Right padding: a real query never sees a later padding key under the causal mask.
        h = h + self.self_attention(self.self_norm(h), *rope)
        h = h + self.cross_attention(self.cross_norm(h), memory, memory_mask)
        y, losses = self.ffn(self.ffn_norm(h), mask)
        return h + y, losses


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------
class Seq2Seq(nn.Module):
    """Encoder-decoder transformer (see the module docstring). Token ids use :class:`ModelConfig.pad_id`
    for padding (right padding on both sides).

    forward(source, decoder_input) -> logits (batch, target_len, vocab); the auxiliary losses of that call
    are in ``self.aux`` (``l_aux``: summed over MoE layers, ``budget``: summed over CMoE layers).
    loss(source, decoder_input, target) -> cross-entropy (label smoothed, padding ignored) +
    ``aux_weight * l_aux`` + ``cmoe_weight * budget``; the parts are in ``self.last_losses``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.max_len + 1, config.d_model)  # learned absolute positions
        self.encoder = nn.ModuleList(EncoderBlock(config, i) for i in range(config.n_encoder_layers))
        self.encoder_norm = RMSNorm(config.d_model)
        self.decoder = nn.ModuleList(DecoderBlock(config, i) for i in range(config.n_decoder_layers))
        self.decoder_norm = RMSNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * (config.n_encoder_layers + config.n_decoder_layers))
        for name, p in self.named_parameters():
            if name.endswith(("out.weight", "down.weight", "w_down")):
                nn.init.normal_(p, std=residual_std)
        self.aux: dict[str, torch.Tensor] = {}
        self.last_losses: dict[str, float] = {}

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def moe_layers(self) -> dict[str, MoEFFN]:
        """Name -> MoE layer, e.g. ``{"encoder.1": ..., "decoder.1": ...}``."""
        out = {}
        for side, blocks in (("encoder", self.encoder), ("decoder", self.decoder)):
            for i, block in enumerate(blocks):
                if block.ffn.moe is not None:
                    out[f"{side}.{i}"] = block.ffn.moe
        return out

    def _check_ids(self, name: str, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
            shape = getattr(ids, "shape", ids)
            raise ValueError(f"{name} must be a (batch, seq) integer tensor, got {shape}")
        if ids.shape[1] == 0:
            raise ValueError(f"{name} has no tokens (shape {tuple(ids.shape)}); give at least one token per "
                             "sentence")
        if ids.shape[1] > self.config.max_len + 1:
            raise ValueError(
                f"{name} has {ids.shape[1]} tokens, more than max_len + 1 = {self.config.max_len + 1}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise ValueError(f"{name} has token ids outside [0, vocab_size = {self.config.vocab_size})")

    def _rope(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(torch.arange(length, device=device), self.config.d_model // self.config.n_heads)

    def _add_losses(self, losses: dict) -> None:
        for key, value in losses.items():
            self.aux[key] = self.aux.get(key, 0.0) + value

    def encode(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """source (batch, src_len) -> (memory (batch, src_len, d_model), source mask (batch, src_len))."""
        self._check_ids("source", source)
        mask = source != self.config.pad_id
        h = self.dropout(self.embedding(source) + self.position.weight[: source.shape[1]])
        rope = self._rope(source.shape[1], source.device)
        for block in self.encoder:
            h, losses = block(h, mask, rope)
            self._add_losses(losses)
        return self.encoder_norm(h), mask

    def decode(self, decoder_input: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor):
        """decoder_input (batch, tgt_len) -> logits (batch, tgt_len, vocab_size)."""
        self._check_ids("decoder_input", decoder_input)
        mask = decoder_input != self.config.pad_id
        h = self.dropout(self.embedding(decoder_input) + self.position.weight[: decoder_input.shape[1]])
        rope = self._rope(decoder_input.shape[1], decoder_input.device)
        for block in self.decoder:
            h, losses = block(h, mask, rope, memory, memory_mask)
            self._add_losses(losses)
        return self.decoder_norm(h) @ self.embedding.weight.t()  # tied output layer

    def forward(self, source: torch.Tensor, decoder_input: torch.Tensor) -> torch.Tensor:
        self.aux = {}
        memory, memory_mask = self.encode(source)
        return self.decode(decoder_input, memory, memory_mask)

    def loss(self, source, decoder_input, target, *, reduction: str = "mean"):
        """Training loss (``reduction="mean"``), or the per-sentence mean token cross-entropy (``"sentence"``,
        no label smoothing, no auxiliary losses: the validation loss). ``target[:, 0]`` (the forced target
        tag) is ignored."""
        logits = self(source, decoder_input).float()
        target = target.clone()
        target[:, 0] = self.config.pad_id  # the forced tag is given, not predicted
        if reduction == "sentence":
            nll = F.cross_entropy(
                logits.transpose(1, 2), target, ignore_index=self.config.pad_id, reduction="none"
            )
            real = (target != self.config.pad_id).sum(dim=1).clamp(min=1)
            return nll.sum(dim=1) / real
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=self.config.pad_id,
            label_smoothing=self.config.label_smoothing,
        )
        total = ce
        parts = {"ce": float(ce.detach())}
        if "l_aux" in self.aux:
            total = total + self.config.aux_weight * self.aux["l_aux"]
            parts["l_aux"] = float(self.aux["l_aux"].detach()) / len(self.moe_layers())
        if "budget" in self.aux:
            total = total + self.config.cmoe_weight * self.aux["budget"]
            parts["budget"] = float(self.aux["budget"].detach())
        self.last_losses = parts
        return total


# ----------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------
def _start(model: Seq2Seq, source: torch.Tensor, target_tags: torch.Tensor, bos_id: int):
    if target_tags.shape != (source.shape[0],):
        raise ValueError(
            f"target_tags must have shape (batch,) = ({source.shape[0]},), got {tuple(target_tags.shape)}"
        )
    bos = torch.full_like(target_tags, bos_id)
    return torch.stack([bos, target_tags.to(source.device)], dim=1)  # [<bos>, <2tgt>]: the forced tag


@torch.no_grad()
def greedy_decode(
    model: Seq2Seq,
    source: torch.Tensor,
    target_tags: torch.Tensor,
    *,
    bos_id: int = 1,
    eos_id: int = 2,
    max_new: int | None = None,
) -> list[list[int]]:
    """Greedy translation of a batch. source (batch, src_len) ids; target_tags (batch,) tag ids.

    The decoder starts from ``[<bos>, <2tgt>]`` (the tag is forced), then takes the most likely token until
    ``<eos>`` or ``max_new`` tokens (default ``max_len``). Returns per sentence ``[<2tgt>, y_1 .. y_m]``
    (tag included, ``<eos>`` excluded).
    """
    model.eval()
    max_new = model.config.max_len - 1 if max_new is None else max_new
    model.aux = {}
    memory, memory_mask = model.encode(source)
    prefix = _start(model, source, target_tags, bos_id)
    done = torch.zeros(source.shape[0], dtype=torch.bool, device=source.device)
    for _ in range(max_new):
        logits = model.decode(prefix, memory, memory_mask)[:, -1]
        logits[:, model.config.pad_id] = float("-inf")
        logits[:, bos_id] = float("-inf")
        next_token = torch.where(done, torch.full_like(done, eos_id, dtype=torch.long), logits.argmax(-1))
        prefix = torch.cat([prefix, next_token[:, None]], dim=1)
        done |= next_token == eos_id
        if bool(done.all()):
            break
    out = []
    for row in prefix[:, 1:].tolist():
        out.append(row[: row.index(eos_id)] if eos_id in row else row)
    return out


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    source: torch.Tensor,
    target_tags: torch.Tensor,
    *,
    beam_size: int = 4,
    bos_id: int = 1,
    eos_id: int = 2,
    max_new: int | None = None,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """Beam search: keep the ``beam_size`` best prefixes per sentence by summed log-probability; a finished
    hypothesis scores ``logprob / length^length_penalty``; return the best finished one per sentence
    (format of :func:`greedy_decode`). ``beam_size = 1`` is greedy decoding."""
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}")
    model.eval()
    max_new = model.config.max_len - 1 if max_new is None else max_new
    batch, k = source.shape[0], beam_size
    model.aux = {}
    memory, memory_mask = model.encode(source)
    memory = memory.repeat_interleave(k, dim=0)
    memory_mask = memory_mask.repeat_interleave(k, dim=0)
    prefix = _start(model, source, target_tags, bos_id).repeat_interleave(k, dim=0)  # (batch k, 2)
    scores = torch.full((batch, k), float("-inf"), device=source.device)
    scores[:, 0] = 0.0  # one live beam at the start (the others are copies)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    for _ in range(max_new):
        logits = model.decode(prefix, memory, memory_mask)[:, -1].float()
        logits[:, model.config.pad_id] = float("-inf")
        logits[:, bos_id] = float("-inf")
        logp = logits.log_softmax(-1).view(batch, k, -1)
        vocab = logp.shape[-1]
        total = (scores[:, :, None] + logp).view(batch, k * vocab)
        top_scores, top_index = total.topk(2 * k, dim=1)
        new_prefix, new_scores = [], []
        for b in range(batch):
            chosen = []
            for score, index in zip(top_scores[b].tolist(), top_index[b].tolist()):
                beam, token = divmod(index, vocab)
                row = prefix[b * k + beam]
                if token == eos_id:
                    if score > float("-inf"):
                        length = row.shape[0] - 1
                        finished[b].append((score / length**length_penalty, row[1:].tolist()))
                    continue
                chosen.append((score, torch.cat([row, row.new_tensor([token])])))
                if len(chosen) == k:
                    break
            while len(chosen) < k:
                chosen.append(
                    (
                        float("-inf"),
                        chosen[0][1] if chosen else torch.cat([prefix[b * k], prefix.new_tensor([eos_id])]),
                    )
                )
            new_prefix += [c[1] for c in chosen]
            new_scores.append([c[0] for c in chosen])
        prefix = torch.stack(new_prefix)
        scores = torch.tensor(new_scores, device=source.device)
        if all(len(finished[b]) >= k for b in range(batch)):  # fairseq's rule: stop at k finished
            break
    out = []
    for b in range(batch):
        if finished[b]:
            out.append(max(finished[b], key=lambda t: t[0])[1])
        else:  # nothing finished within max_new: the best live prefix
            out.append(prefix[b * k + int(scores[b].argmax())][1:].tolist())
    return out
