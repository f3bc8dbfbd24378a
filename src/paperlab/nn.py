"""A tiny decoder-only transformer in the "Transformer++" style, shared by the later chapters.

The recipe (Llama-like): pre-norm residual blocks with RMSNorm, rotary position embeddings (RoPE) on
queries and keys, causal multi-head attention through
:func:`torch.nn.functional.scaled_dot_product_attention`, a SwiGLU feed-forward layer, no biases, and
(optionally) an LM head tied to the token embedding.

One block maps the residual stream ``h: (batch, seq, d_model)`` to

    h = h + Attention(RMSNorm(h))
    h = h + SwiGLU(RMSNorm(h))

Besides the model this module has the helpers the chapters need around it: :func:`count_parameters`,
batched :func:`generate` (left padding, so prompts of different lengths share one batch; optionally with a
:class:`KVCache`, so that each new token costs one position instead of the whole context) and a
differentiable :func:`sequence_logprob` (right padding; DPO and RL chapters backpropagate through it).

Nothing here picks a device: tensors are created on the device of the input (or of the model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from paperlab.config import check_flags, check_ints, check_numbers, check_that

__all__ = [
    "check_gpt_sizes",
    "RMSNorm",
    "rope_cos_sin",
    "apply_rope",
    "CausalSelfAttention",
    "SwiGLU",
    "Block",
    "GPTConfig",
    "GPT",
    "check_token_ids",
    "KVCache",
    "count_parameters",
    "generate",
    "next_token_distribution",
    "sequence_logprob",
]

Hook = Callable[[int, torch.Tensor], torch.Tensor]


def check_token_ids(idx: torch.Tensor, vocab_size: int, max_len: int | None = None,
                    name: str = "idx") -> None:
    """A ValueError naming the problem unless ``idx`` is a (batch, seq) integer tensor with
    ``1 <= seq <= max_len`` and every id in ``[0, vocab_size)`` (for models whose layers cannot take an
    empty sequence; :class:`GPT` accepts ``seq = 0`` and returns empty logits)."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"{name} must be a 2-D (batch, seq) tensor of token ids, got {shape}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {idx.dtype}")
    seq = idx.shape[1]
    if seq == 0:
        raise ValueError(f"{name} has no tokens (shape {tuple(idx.shape)}); give at least one token per "
                         "sequence")
    if max_len is not None and seq > max_len:
        raise ValueError(f"{name} has {seq} tokens, more than context_length = {max_len}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(f"{name} has token ids in [{int(idx.min())}, {int(idx.max())}], outside [0, "
                         f"vocab_size = {vocab_size})")


# ----------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Root-mean-square layer norm (Zhang & Sennrich, 2019) with a learned gain ``g`` (init 1).

    ``y = x / sqrt(mean(x^2) + eps) * g``, the mean taken over the last dimension.
    Shapes: ``x: (..., d)`` -> ``y: (..., d)``. The statistic is computed in float32 (or float64 for a
    float64 input) and the result is cast back to the input dtype.
    """

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        if d < 1:
            raise ValueError(f"d must be a positive integer, got {d}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        y = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # x / sqrt(mean(x^2)+eps)
        return y.to(x.dtype) * self.weight  # * g


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of the rotary angles (Su et al., 2021, RoFormer eq. 34).

    Channel pair ``i`` (of ``head_dim / 2``) at position ``m`` is rotated by the angle
    ``theta_{m,i} = m * base^(-2i / head_dim)``.

    positions: (batch, seq) or (seq,) integer positions (they need not start at 0: left-padded rows start
    their real tokens at position 0 after a run of padding).
    Returns ``cos, sin`` each of shape (batch, 1, seq, head_dim // 2), ready to broadcast over heads.
    ``dtype`` is the precision of the angle computation (use float64 for a float64 model).
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
    if positions.dim() == 1:
        positions = positions[None, :]
    if positions.dim() != 2:
        raise ValueError(f"positions must have shape (batch, seq) or (seq,), got {tuple(positions.shape)}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=dtype) / head_dim)
    angles = positions.to(dtype)[..., None] * inv_freq  # (batch, seq, head_dim/2): theta_{m,i}
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(x_i, x_{i + head_dim/2})`` of ``x`` by the angles whose cos/sin are given.

    This is the "rotate half" layout (GPT-NeoX, Llama): pair ``i`` is channels ``i`` and ``i + head_dim/2``;
    ``(a, b) -> (a cos - b sin, a sin + b cos)``. After rotation ``<q_m, k_n>`` depends on ``m - n`` only.

    x: (batch, heads, seq, head_dim); cos, sin: (batch or 1, 1, seq, head_dim // 2) from :func:`rope_cos_sin`.
    """
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE on queries and keys, no biases.

    ``softmax(q k^T / sqrt(head_dim) + mask) v`` per head, through ``scaled_dot_product_attention``.

    forward(x, cos, sin, attention_mask=None, cache=None):
        x: (batch, seq, d_model); cos, sin: from :func:`rope_cos_sin`;
        attention_mask: (batch, seq) bool, True = real token, or (batch, seq, seq) bool, query ``t`` may see
        key ``s`` (packed sequences), or None (no padding: the fast ``is_causal`` path). With a mask, query
        ``t`` sees key ``s`` iff ``s <= t`` and the mask allows it (key ``s`` is real); every query also sees
        itself, so padding queries (whose output is garbage and must be ignored) do not yield NaN.
        cache: this layer's :class:`LayerCache` (incremental decoding): ``x`` continues the tokens whose
        keys and values it holds; then ``attention_mask`` is (batch, past + seq) and covers them too.
        Returns (batch, seq, d_model).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.residual_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        seq = x.shape[1]
        # one projection, split into queries, keys and values, each cut into heads
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_heads)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (batch, heads, seq, head_dim)
        dropout_p = self.dropout if self.training else 0.0
        if cache is not None:
            k, v = cache.extend(k, v)  # every token so far: (batch, heads, past + seq, head_dim)
            key = torch.arange(k.shape[2], device=x.device)
            query = key[-seq:]  # the new tokens are the last seq positions
            causal = key[None, :] <= query[:, None]
            mask = causal[None, None] & attention_mask[:, None, None, :]  # (batch, 1, seq, past + seq)
            mask = mask | (key[None, :] == query[:, None])  # every query sees itself: no all-masked rows
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        elif attention_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            idx = torch.arange(seq, device=x.device)
            causal = idx[None, :] <= idx[:, None]  # (query, key): key s visible from query t iff s <= t
            if attention_mask.dim() == 3:  # (batch, query, key): ... and query t may see key s
                mask = causal & attention_mask[:, None, :, :]
            else:
                mask = causal & attention_mask[:, None, None, :]  # ... and key s is a real token
            mask = mask | torch.eye(seq, dtype=torch.bool, device=x.device)  # no all-masked rows
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = rearrange(y, "b h t d -> b t (h d)")  # heads side by side again
        return self.residual_dropout(self.out(y))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward layer (Shazeer, 2020): ``down(silu(gate(x)) * up(x))``, no biases.

    x: (..., d_model) -> (..., d_model), through a hidden width ``d_hidden``.
    """

    def __init__(self, d_model: int, d_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.gate = nn.Linear(d_model, d_hidden, bias=False)
        self.up = nn.Linear(d_model, d_hidden, bias=False)
        self.down = nn.Linear(d_hidden, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))


class Block(nn.Module):
    """Pre-norm block: ``h += attention(norm(h)); h += mlp(norm(h))``. h: (batch, seq, d_model)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model)
        self.attention = CausalSelfAttention(config.d_model, config.n_heads, config.dropout)
        self.mlp_norm = RMSNorm(config.d_model)
        self.mlp = SwiGLU(config.d_model, config.d_hidden, config.dropout)

    def forward(self, h, cos, sin, attention_mask=None, cache=None):
        h = h + self.attention(self.attention_norm(h), cos, sin, attention_mask, cache)
        return h + self.mlp(self.mlp_norm(h))


class LayerCache:
    """One layer's keys and values so far, ``(batch, heads, seen, head_dim)`` each (None before the first)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def extend(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' keys and values; return all of them."""
        if self.keys is not None:
            keys, values = torch.cat([self.keys, keys], dim=2), torch.cat([self.values, values], dim=2)
        self.keys, self.values = keys, values
        return keys, values


class KVCache:
    """What a :class:`GPT` has read so far, for incremental decoding: each layer's keys and values
    (:class:`LayerCache`) and ``mask``, (batch, seen) bool, True at real (non-padding) tokens.

    ``model(idx, attention_mask=m, cache=cache)`` reads ``idx`` as the continuation of the cached tokens:
    its queries attend to the cached keys (and causally to each other), its positions continue the
    count of real tokens, and the cache then holds ``idx`` too. The logits equal those of one forward pass
    over the whole sequence (up to floating-point rounding), at the cost of the new positions only.
    """

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]
        self.mask: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Positions held (padding included)."""
        return 0 if self.mask is None else self.mask.shape[1]


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------
@dataclass
class GPTConfig:
    """Size of a :class:`GPT`.

    ``d_hidden`` (the SwiGLU width) defaults to the multiple of 8 nearest ``8/3 * d_model``, which keeps the
    feed-forward parameter count at that of a ``4 * d_model`` GELU MLP.
    """

    vocab_size: int
    context_length: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_hidden: int | None = None
    dropout: float = 0.0
    tie_embeddings: bool = True
    rope_base: float = 10000.0

    def __post_init__(self):
        check_ints(self, "vocab_size", "context_length", "d_model", "n_layers", "n_heads")
        check_that(self, self.d_model % self.n_heads == 0, "n_heads",
                   f"a divisor of d_model = {self.d_model} (d_model must be divisible by n_heads)")
        check_that(self, (self.d_model // self.n_heads) % 2 == 0, "n_heads",
                   f"such that d_model / n_heads is even for RoPE (d_model = {self.d_model})")
        if self.d_hidden is None:
            self.d_hidden = max(8, 8 * round(8 * self.d_model / 3 / 8))
        check_ints(self, "d_hidden")
        check_numbers(self, "dropout", low=0, high=1, open_high=True)
        check_numbers(self, "rope_base", low=1, open_low=True)
        check_flags(self, "tie_embeddings")


def check_gpt_sizes(owner: object, **sizes: object) -> None:
    """GPTConfig's own checks (sizes, heads dividing the width, an even head size for RoPE, dropout) of
    the GPT sizes a chapter's config holds, before anything is built: ``sizes`` are GPTConfig fields
    (``context_length``, ``d_model``, ``n_layers``, ``n_heads``, ...; the vocabulary comes later). A
    ValueError names the owner: ``"BaseConfig: GPTConfig.n_heads must be ..."``."""
    try:
        GPTConfig(**{"vocab_size": 1, "context_length": 1, **sizes})
    except ValueError as err:
        raise ValueError(f"{type(owner).__name__}: {err}") from None


class GPT(nn.Module):
    """Decoder-only transformer: token embedding -> ``n_layers`` pre-norm blocks -> RMSNorm -> LM head.

    Initialisation (GPT-2): every weight matrix ~ N(0, 0.02^2); the residual output projections
    (``attention.out`` and ``mlp.down``) ~ N(0, (0.02 / sqrt(2 n_layers))^2) so that the residual stream's
    variance does not grow with depth; RMSNorm gains are 1. With ``tie_embeddings`` the LM head reuses the
    embedding matrix: ``logits = h_final @ E^T``.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = RMSNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attention.out.weight, std=residual_std)
            nn.init.normal_(block.mlp.down.weight, std=residual_std)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def _check_inputs(self, idx, positions, attention_mask):
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx must be a 2-D (batch, seq) tensor of token ids, got {shape}")
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        batch, seq = idx.shape
        if seq > self.config.context_length:
            raise ValueError(
                f"idx has seq = {seq} tokens, more than context_length = {self.config.context_length}"
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(
                f"idx has token ids in [{int(idx.min())}, {int(idx.max())}], outside [0, vocab_size = "
                f"{self.config.vocab_size})"
            )
        shapes = ((batch, seq), (batch, seq, seq))
        if attention_mask is not None and tuple(attention_mask.shape) not in shapes:
            raise ValueError(
                f"attention_mask must have the shape of idx {(batch, seq)} (or {(batch, seq, seq)}: which "
                f"keys each query sees), got {tuple(attention_mask.shape)}"
            )
        if positions is not None and tuple(positions.shape) not in ((batch, seq), (seq,)):
            raise ValueError(
                f"positions must have shape {(batch, seq)} or {(seq,)}, got {tuple(positions.shape)}"
            )

    def forward(
        self,
        idx: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        hook: Hook | None = None,
        return_hidden: bool = False,
        cache: KVCache | None = None,
    ):
        """Next-token logits.

        idx: (batch, seq) integer token ids, ``seq <= context_length``.
        positions: (batch, seq) or (seq,) RoPE positions. Default: ``0..seq-1``, or, when ``attention_mask``
            is given, the count of real tokens before each one (so a left-padded row starts at 0).
        attention_mask: (batch, seq) bool, True = real token; padding keys are hidden from every query. Or
            (batch, seq, seq) bool, ``[b, t, s]`` = query ``t`` may see key ``s`` (the causal rule on top):
            e.g. a block-diagonal mask for several sequences packed in one row, which then also need their
            ``positions`` (each from 0); not with a ``cache``.
        hook: ``hook(layer_index, h) -> h`` applied to the residual stream ``h: (batch, seq, d_model)`` after
            the embedding (layer_index 0) and after block i (layer_index i + 1); its return value replaces h.
        return_hidden: also return the ``n_layers + 1`` residual-stream tensors (after any hook).
        cache: a :class:`KVCache`; ``idx`` continues the tokens it holds (see there), and it is updated.

        Returns logits (batch, seq, vocab_size), or ``(logits, hidden)`` with ``return_hidden``.
        """
        self._check_inputs(idx, positions, attention_mask)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device=idx.device, dtype=torch.bool)
        if cache is not None:
            if attention_mask is not None and attention_mask.dim() == 3:
                raise ValueError("a (batch, seq, seq) attention_mask cannot be used with a cache")
            attention_mask, positions = self._extend_cache_mask(cache, idx, positions, attention_mask)
        if positions is None and attention_mask is not None and attention_mask.dim() == 3:
            raise ValueError("a (batch, seq, seq) attention_mask needs explicit positions (packed sequences)")
        if positions is None:
            if attention_mask is None:
                positions = torch.arange(idx.shape[1], device=idx.device)
            else:
                positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        positions = positions.to(idx.device)

        h = self.embedding_dropout(self.token_embedding(idx))
        angle_dtype = torch.promote_types(h.dtype, torch.float32)
        cos, sin = rope_cos_sin(
            positions, self.config.d_model // self.config.n_heads, self.config.rope_base, angle_dtype
        )
        hidden = []

        def apply_hook(layer_index, h):
            if hook is not None:
                h = hook(layer_index, h)
                if not isinstance(h, torch.Tensor):
                    raise ValueError(f"hook must return the residual stream tensor, got {type(h).__name__}")
            if return_hidden:
                hidden.append(h)
            return h

        h = apply_hook(0, h)
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache.layers[i]
            h = apply_hook(i + 1, block(h, cos, sin, attention_mask, layer_cache))
        logits = self.lm_head(self.final_norm(h))
        return (logits, hidden) if return_hidden else logits

    def _extend_cache_mask(self, cache: KVCache, idx, positions, attention_mask):
        """The mask over cached + new tokens (stored in the cache) and the new tokens' positions."""
        if len(cache.layers) != self.config.n_layers:
            raise ValueError(f"cache has {len(cache.layers)} layers, the model {self.config.n_layers}")
        if cache.mask is not None and cache.mask.shape[0] != idx.shape[0]:
            raise ValueError(f"cache holds a batch of {cache.mask.shape[0]} rows, idx has {idx.shape[0]}")
        if cache.length + idx.shape[1] > self.config.context_length:
            raise ValueError(f"cache ({cache.length}) + idx ({idx.shape[1]}) tokens exceed context_length = "
                             f"{self.config.context_length}")
        new = attention_mask if attention_mask is not None else torch.ones_like(idx, dtype=torch.bool)
        full = new if cache.mask is None else torch.cat([cache.mask, new], dim=1)
        cache.mask = full
        if positions is None:  # the count of real tokens before each one, as without a cache
            positions = (full.long().cumsum(dim=1) - 1).clamp(min=0)[:, -idx.shape[1]:]
        return full, positions

    def loss(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor,
        ignore_index: int = -100,
        *,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy ``-1/N sum_t log p(targets_t | idx_<=t)`` in nats.

        idx, targets: (batch, seq); the caller has already shifted targets (``targets[:, t] = idx[:, t+1]``
        for a contiguous stream). Targets equal to ``ignore_index`` do not count.
        """
        if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != tuple(idx.shape):
            shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {shape}")
        logits = self(idx, attention_mask=attention_mask, positions=positions)
        return F.cross_entropy(
            logits.to(torch.promote_types(logits.dtype, torch.float32)).flatten(0, 1),
            targets.flatten().long(),
            ignore_index=ignore_index,
        )


# ----------------------------------------------------------------------------------------------------------
# Helpers around a model
# ----------------------------------------------------------------------------------------------------------
def count_parameters(
    model: nn.Module, *, trainable_only: bool = True, exclude_embeddings: bool = False
) -> int:
    """Number of scalar parameters of ``model``; tied weights count once.

    exclude_embeddings: leave out the weights of every ``nn.Embedding`` and of an (untied) ``model.lm_head``,
    i.e. the "non-embedding parameters" N of Kaplan et al. (2020).
    """
    excluded: set[int] = set()
    if exclude_embeddings:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                excluded.update(id(p) for p in module.parameters())
        head = getattr(model, "lm_head", None)
        if isinstance(head, nn.Module):
            excluded.update(id(p) for p in head.parameters())
    return sum(
        p.numel()
        for p in model.parameters()
        if id(p) not in excluded and (p.requires_grad or not trainable_only)
    )


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _check_token_lists(name: str, lists, allow_empty: bool) -> list[list[int]]:
    if isinstance(lists, torch.Tensor):
        lists = lists.tolist()
    if not isinstance(lists, Sequence) or isinstance(lists, str) or len(lists) == 0:
        raise ValueError(f"{name} must be a non-empty list of token-id lists")
    out = []
    for i, tokens in enumerate(lists):
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        if not isinstance(tokens, Sequence) or isinstance(tokens, str):
            raise ValueError(f"{name}[{i}] must be a list of token ids, got {type(tokens).__name__}")
        if not tokens and not allow_empty:
            raise ValueError(f"{name}[{i}] is empty; every entry needs at least one token")
        out.append([int(t) for t in tokens])
    return out


@torch.no_grad()
def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    eos_id: int | None = None,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
    use_cache: bool = False,
) -> list[list[int]]:
    """Sample ``max_new_tokens`` continuations of a batch of prompts of possibly different lengths.

    The prompts are LEFT-padded with ``pad_id`` into one (batch, seq) tensor, with an attention mask and
    positions that start at 0 at each row's first real token, so each row gets the same tokens it would
    get alone. Each step feeds the last ``context_length`` tokens; with ``use_cache`` the prompts are read
    once into a :class:`KVCache` and each step feeds only the newest token (the same distributions up to
    floating-point rounding, at a fraction of the cost), as long as prompt and continuation fit in the
    context (else the uncached path runs, which slides its window over the context).

    Sampling: ``p(x) ∝ exp(logit(x) / temperature)`` over the ``top_k`` largest logits (all if None), or
    argmax with ``greedy``. A row stops after it emits ``eos_id`` (the eos token is included in its
    output). ``generator`` (on the model's device) makes sampling reproducible.
    The model is put in eval mode during generation and restored afterwards.

    Returns the new tokens of each prompt, a list of ``len(prompts)`` lists.
    """
    prompts = _check_token_lists("prompts", prompts, allow_empty=False)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if not greedy and not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 when sampling (use greedy=True for argmax), got {temperature}"
        )
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    vocab_size, context_length = model.config.vocab_size, model.config.context_length
    if not 0 <= pad_id < vocab_size:
        raise ValueError(f"pad_id must be in [0, vocab_size = {vocab_size}), got {pad_id}")

    device = _model_device(model)
    batch, longest = len(prompts), max(len(p) for p in prompts)
    tokens = torch.full((batch, longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((batch, longest), dtype=torch.bool, device=device)
    for i, prompt in enumerate(prompts):
        tokens[i, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
        mask[i, longest - len(prompt) :] = True
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens: list[list[int]] = [[] for _ in range(batch)]
    fits = longest + max_new_tokens - 1 <= context_length  # the last new token is never fed back
    cache = KVCache(model.config.n_layers) if use_cache and fits else None
    feed, feed_mask = tokens, mask  # what the cached path reads next: the prompts, then each new token

    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            if cache is not None:
                logits = model(feed, attention_mask=feed_mask, cache=cache)
            else:
                logits = model(tokens[:, -context_length:], attention_mask=mask[:, -context_length:])
            logits = logits[:, -1, :]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # (batch, vocab)
            if greedy:
                next_token = logits.argmax(dim=-1)
            else:
                probs = next_token_distribution(logits, temperature, top_k)
                next_token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            next_token = torch.where(done, torch.full_like(next_token, pad_id), next_token)
            feed, feed_mask = next_token[:, None], ~done[:, None]
            tokens = torch.cat([tokens, feed], dim=1)
            mask = torch.cat([mask, feed_mask], dim=1)
            for i, (token, finished) in enumerate(zip(next_token.tolist(), done.tolist())):
                if not finished:
                    new_tokens[i].append(token)
            if eos_id is not None:
                done = done | (next_token == eos_id)
                if bool(done.all()):
                    break
    finally:
        model.train(was_training)
    return new_tokens


def next_token_distribution(logits: torch.Tensor, temperature: float = 1.0,
                            top_k: int | None = None) -> torch.Tensor:
    """What :func:`generate` samples from: ``p(x) ∝ exp(logit(x) / temperature)`` over the ``top_k``
    largest logits (all if None). logits: (..., vocab) -> probabilities of the same shape."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1)


def sequence_logprob(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
    average: bool = False,
) -> torch.Tensor:
    """Log-probability of each continuation given its prompt, differentiable.

    ``log p(c | p) = sum_j log p(c_j | p, c_<j)`` for each pair (prompt ``p``, continuation ``c``); with
    ``average=True`` the mean over the continuation's tokens instead (0 for an empty continuation).

    The pairs ``p + c`` are RIGHT-padded with ``pad_id`` into one batch; causality means real tokens never
    attend to the padding after them, so no attention mask is needed, and padded targets are masked out of
    the sum. Every prompt needs at least one token; ``len(p) + len(c) <= context_length + 1``.
    Runs with gradients (no ``torch.no_grad``): DPO and policy-gradient losses backpropagate through it.

    Returns a float32 (or float64 for a float64 model) tensor of shape (batch,).
    """
    prompts = _check_token_lists("prompts", prompts, allow_empty=False)
    continuations = _check_token_lists("continuations", continuations, allow_empty=True)
    if len(prompts) != len(continuations):
        raise ValueError(
            f"prompts ({len(prompts)}) and continuations ({len(continuations)}) differ in length"
        )
    context_length = model.config.context_length
    lengths = [len(p) + len(c) for p, c in zip(prompts, continuations)]
    if max(lengths) > context_length + 1:
        raise ValueError(
            f"prompt + continuation has up to {max(lengths)} tokens; at most context_length + 1 = "
            f"{context_length + 1} fit"
        )
    device = _model_device(model)
    batch, longest = len(prompts), max(lengths)
    if longest < 2:
        return torch.zeros(batch, device=device)

    tokens = torch.full((batch, longest), pad_id, dtype=torch.long, device=device)
    target_mask = torch.zeros((batch, longest - 1), dtype=torch.bool, device=device)
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        tokens[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long, device=device)
        target_mask[i, len(p) - 1 : len(p) + len(c) - 1] = True  # input t predicts token t+1
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs)
    log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    token_logprob = log_probs.gather(-1, targets[..., None]).squeeze(-1)  # (batch, seq - 1)
    total = torch.where(target_mask, token_logprob, 0.0).sum(dim=1)
    if average:
        total = total / target_mask.sum(dim=1).clamp(min=1)
    return total
