"""Tests for paperlab.nn: the tiny GPT, RoPE, generation and sequence log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab.nn import (
    GPT,
    CausalSelfAttention,
    GPTConfig,
    KVCache,
    RMSNorm,
    SwiGLU,
    apply_rope,
    count_parameters,
    generate,
    rope_cos_sin,
    sequence_logprob,
)


def tiny_model(dtype=torch.float32, seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=23, context_length=16, d_model=32, n_layers=2, n_heads=4)
    kwargs.update(overrides)
    return GPT(GPTConfig(**kwargs)).to(dtype).eval()


# ---------------------------------------------------------------- blocks
def test_rmsnorm_matches_equation():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_swiglu_matches_equation():
    torch.manual_seed(0)
    layer = SwiGLU(6, 10)
    x = torch.randn(4, 6)
    g, u = x @ layer.gate.weight.T, x @ layer.up.weight.T
    expected = (g * torch.sigmoid(g) * u) @ layer.down.weight.T
    torch.testing.assert_close(layer(x), expected)
    assert all(m.bias is None for m in (layer.gate, layer.up, layer.down))


@settings(max_examples=20, deadline=None)
@given(m=st.integers(0, 50), n=st.integers(0, 50), shift=st.integers(-20, 20))
def test_rope_scores_depend_on_relative_position_only(m, n, shift):
    gen = torch.Generator().manual_seed(1)
    q, k = (
        torch.randn(1, 1, 1, 8, generator=gen, dtype=torch.float64),
        torch.randn(1, 1, 1, 8, generator=gen, dtype=torch.float64),
    )

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([pq]), 8, dtype=torch.float64)
        ck, sk = rope_cos_sin(torch.tensor([pk]), 8, dtype=torch.float64)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(m, n), score(m + shift + 50, n + shift + 50))


def test_rope_preserves_norm_and_is_identity_at_zero():
    x = torch.randn(2, 3, 5, 8)
    cos, sin = rope_cos_sin(torch.arange(5).expand(2, 5), 8)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    cos0, sin0 = rope_cos_sin(torch.zeros(2, 5, dtype=torch.long), 8)
    torch.testing.assert_close(apply_rope(x, cos0, sin0), x)


def test_attention_padding_mask_hides_padding():
    torch.manual_seed(0)
    attention = CausalSelfAttention(16, 2).eval()
    x = torch.randn(1, 4, 16)
    cos, sin = rope_cos_sin(torch.arange(4), 8)
    alone = attention(x, cos, sin)
    padded = torch.cat([torch.randn(1, 3, 16), x], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 4])
    cos_p, sin_p = rope_cos_sin(torch.tensor([[0, 0, 0, 0, 1, 2, 3]]), 8)
    out = attention(padded, cos_p, sin_p, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 3:], alone, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- config and model
def test_config_defaults_and_validation():
    config = GPTConfig(vocab_size=10, context_length=8)
    assert config.d_hidden % 8 == 0 and abs(config.d_hidden - 8 / 3 * 128) < 8
    with pytest.raises(ValueError, match="n_heads"):
        GPTConfig(vocab_size=10, context_length=8, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        GPTConfig(vocab_size=0, context_length=8)
    with pytest.raises(ValueError, match="context_length"):
        GPTConfig(vocab_size=10, context_length=-1)
    with pytest.raises(ValueError, match="dropout"):
        GPTConfig(vocab_size=10, context_length=8, dropout=1.5)


def test_forward_shapes_hidden_and_tying():
    model = tiny_model()
    idx = torch.randint(0, 23, (3, 7))
    logits, hidden = model(idx, return_hidden=True)
    assert logits.shape == (3, 7, 23)
    assert len(hidden) == 3 and all(h.shape == (3, 7, 32) for h in hidden)
    assert model.lm_head.weight is model.token_embedding.weight
    untied = tiny_model(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.token_embedding.weight


def test_init_scales_residual_projections():
    model = tiny_model(d_model=64, n_layers=8, d_hidden=256)
    out_std = model.blocks[0].attention.out.weight.std().item()
    qkv_std = model.blocks[0].attention.qkv.weight.std().item()
    assert abs(qkv_std - 0.02) < 0.003
    assert abs(out_std - 0.02 / math.sqrt(16)) < 0.002


def test_forward_validation():
    model = tiny_model()
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="2-D"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[1, 23]]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4, dtype=torch.bool))


def test_forward_is_causal():
    model = tiny_model()
    idx = torch.randint(0, 23, (2, 10))
    changed = idx.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 23
    torch.testing.assert_close(model(idx)[:, :6], model(changed)[:, :6])


def test_hook_sees_and_replaces_residual_stream():
    model = tiny_model()
    idx = torch.randint(0, 23, (2, 6))
    seen = []

    def record(layer_index, h):
        seen.append(layer_index)
        return h

    _, hidden = model(idx, hook=record, return_hidden=True)
    assert seen == [0, 1, 2]
    # Replacing the last residual stream with zeros gives logits of a zero final stream (RMSNorm(0) = 0).
    logits = model(idx, hook=lambda i, h: torch.zeros_like(h) if i == 2 else h)
    torch.testing.assert_close(logits, torch.zeros_like(logits))
    # An identity hook changes nothing; a hook at layer 1 changes later layers only.
    torch.testing.assert_close(model(idx, hook=lambda i, h: h), model(idx))
    _, hidden2 = model(idx, hook=lambda i, h: h + 1.0 if i == 1 else h, return_hidden=True)
    torch.testing.assert_close(hidden2[0], hidden[0])
    assert not torch.allclose(hidden2[2], hidden[2])


def test_loss_matches_manual_cross_entropy_and_ignore_index():
    model = tiny_model()
    idx = torch.randint(0, 23, (2, 8))
    targets = torch.randint(0, 23, (2, 8))
    logp = torch.log_softmax(model(idx), -1)
    manual = -logp.gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(model.loss(idx, targets), manual)
    targets[:, :4] = -100
    manual = -logp[:, 4:].gather(-1, targets[:, 4:, None]).mean()
    torch.testing.assert_close(model.loss(idx, targets), manual)
    with pytest.raises(ValueError, match="targets"):
        model.loss(idx, targets[:, :3])


def test_count_parameters():
    model = tiny_model()
    d, v, layers, hidden = 32, 23, 2, model.config.d_hidden
    per_block = 4 * d * d + 3 * d * hidden + 2 * d
    assert count_parameters(model) == v * d + layers * per_block + d
    assert count_parameters(model, exclude_embeddings=True) == layers * per_block + d
    untied = tiny_model(tie_embeddings=False)
    assert count_parameters(untied) == 2 * v * d + layers * per_block + d
    assert count_parameters(untied, exclude_embeddings=True) == layers * per_block + d
    for p in model.blocks.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == v * d + d
    assert count_parameters(model, trainable_only=False) == v * d + layers * per_block + d


def test_tiny_model_learns_a_pattern():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=5, context_length=8, d_model=32, n_layers=1, n_heads=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stream = torch.arange(200) % 5  # 0 1 2 3 4 0 1 ...: deterministic next token
    x = torch.stack([stream[i : i + 8] for i in range(0, 100, 7)])
    y = torch.stack([stream[i + 1 : i + 9] for i in range(0, 100, 7)])
    for _ in range(60):
        loss = model.loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


# ---------------------------------------------------------------- generation
def test_batched_greedy_generation_equals_one_by_one():
    model = tiny_model(dtype=torch.float64, seed=3)
    prompts = [[5, 6, 7, 8, 9], [1], [2, 3, 4], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 1]]
    batched = generate(model, prompts, 6, greedy=True)
    alone = [generate(model, [p], 6, greedy=True)[0] for p in prompts]
    assert batched == alone
    assert all(len(out) == 6 for out in batched)


def test_generation_stops_at_eos_and_is_reproducible():
    model = tiny_model(seed=1)
    prompts = [[1, 2], [3]]
    first = generate(model, prompts, 12, generator=torch.Generator().manual_seed(0))
    again = generate(model, prompts, 12, generator=torch.Generator().manual_seed(0))
    assert first == again
    eos = first[0][2]
    stopped = generate(model, prompts, 12, eos_id=eos, generator=torch.Generator().manual_seed(0))
    assert stopped[0] == first[0][: first[0].index(eos) + 1]
    for out in stopped:
        assert eos not in out[:-1]
    top1 = generate(model, prompts, 5, top_k=1, generator=torch.Generator().manual_seed(0))
    assert top1 == generate(model, prompts, 5, greedy=True)


def test_kv_cache_logits_equal_one_full_pass():
    model = tiny_model(dtype=torch.float64, seed=4)
    tokens = torch.randint(0, 23, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[0, :4] = False  # a left-padded row
    mask[2, 7] = False  # a masked token in the middle (a finished row's padding in generate)
    full = model(tokens, attention_mask=mask)
    cache = KVCache(model.config.n_layers)
    pieces = [model(tokens[:, a:b], attention_mask=mask[:, a:b], cache=cache)
              for a, b in ((0, 5), (5, 6), (6, 9), (9, 12))]  # a prompt, then 1 and 3 tokens at a time
    real = mask.clone()
    assert cache.length == 12
    assert torch.allclose(torch.cat(pieces, dim=1)[real], full[real], atol=1e-10)
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(3, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="batch"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=cache)


def test_packed_sequences_with_block_mask_equal_each_alone():
    model = tiny_model(dtype=torch.float64, seed=5)
    a, b = torch.randint(0, 23, (1, 5)), torch.randint(0, 23, (1, 7))
    packed = torch.cat([a, b], dim=1)  # one row: a (positions 0-4), then b (positions 0-6)
    segment = torch.tensor([0] * 5 + [1] * 7)
    mask = (segment[:, None] == segment[None, :])[None]  # (1, 12, 12): each token sees its own sequence
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    out = model(packed, attention_mask=mask, positions=positions)
    assert torch.allclose(out[:, :5], model(a), atol=1e-10)
    assert torch.allclose(out[:, 5:], model(b), atol=1e-10)
    leaky = model(packed)  # without the mask, b's tokens see a's
    assert not torch.allclose(leaky[:, 5:], model(b), atol=1e-6)
    with pytest.raises(ValueError, match="explicit positions"):
        model(packed, attention_mask=mask)
    with pytest.raises(ValueError, match="cache"):
        model(packed, attention_mask=mask, positions=positions, cache=KVCache(model.config.n_layers))
    with pytest.raises(ValueError, match="attention_mask"):
        model(packed, attention_mask=mask[:, :, :11], positions=positions)


def test_cached_generation_equals_uncached():
    model = tiny_model(dtype=torch.float64, seed=5)
    prompts = [[5, 6, 7, 8, 9], [1], [2, 3, 4]]
    greedy = generate(model, prompts, 8, greedy=True, eos_id=7)
    assert generate(model, prompts, 8, greedy=True, eos_id=7, use_cache=True) == greedy
    sampled = generate(model, prompts, 8, generator=torch.Generator().manual_seed(0))
    cached = generate(model, prompts, 8, generator=torch.Generator().manual_seed(0), use_cache=True)
    assert cached == sampled
    # past the context the cache cannot hold everything: the uncached (sliding-window) path runs instead
    long = generate(model, [[1] * 14], 6, greedy=True)
    assert generate(model, [[1] * 14], 6, greedy=True, use_cache=True) == long


def test_generation_validation():
    model = tiny_model()
    with pytest.raises(ValueError, match="empty"):
        generate(model, [[1], []], 3)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [[1]], 3, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, [[1]], 3, top_k=0)
    with pytest.raises(ValueError, match="prompts"):
        generate(model, [], 3)
    assert generate(model, [[1]], 3, temperature=0.0, greedy=True)  # greedy ignores temperature


# ---------------------------------------------------------------- sequence log-probabilities
def test_sequence_logprob_equals_loss_times_tokens():
    model = tiny_model(dtype=torch.float64, seed=2)
    tokens = torch.randint(0, 23, (1, 13))
    loss = model.loss(tokens[:, :-1], tokens[:, 1:])
    logprob = sequence_logprob(model, [tokens[0, :1].tolist()], [tokens[0, 1:].tolist()])
    torch.testing.assert_close(logprob, -(loss * 12).reshape(1), atol=1e-5, rtol=0)
    average = sequence_logprob(model, [tokens[0, :1].tolist()], [tokens[0, 1:].tolist()], average=True)
    torch.testing.assert_close(average, -loss.reshape(1), atol=1e-6, rtol=0)


def test_sequence_logprob_padding_invariant_and_differentiable():
    model = tiny_model(seed=4)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]
    continuations = [[11, 12], [13, 14, 15, 16, 17], [18]]
    batched = sequence_logprob(model, prompts, continuations)
    alone = torch.cat([sequence_logprob(model, [p], [c]) for p, c in zip(prompts, continuations)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert batched.shape == (3,) and (batched < 0).all()
    batched.sum().backward()
    assert model.token_embedding.weight.grad is not None
    assert model.token_embedding.weight.grad.abs().sum() > 0
    # A continuation's log-prob is the sum of its tokens' conditional log-probs.
    split = sequence_logprob(model, [[4], [4, 13, 14]], [[13, 14], [15, 16, 17]])
    torch.testing.assert_close(split.sum(), alone[1], atol=1e-5, rtol=1e-5)


def test_sequence_logprob_validation():
    model = tiny_model()
    with pytest.raises(ValueError, match="prompts"):
        sequence_logprob(model, [[]], [[1]])
    with pytest.raises(ValueError, match="differ"):
        sequence_logprob(model, [[1]], [[1], [2]])
    with pytest.raises(ValueError, match="context_length"):
        sequence_logprob(model, [[1] * 10], [[1] * 8])
    assert sequence_logprob(model, [[1] * 10], [[1] * 7]).shape == (1,)
    assert sequence_logprob(model, [[1, 2]], [[]]).item() == 0.0


# ---------------------------------------------------------------- CUDA (skipped on CPU-only machines)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cpu = tiny_model(seed=5)
    gpu = tiny_model(seed=5).cuda()
    idx = torch.randint(0, 23, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, :4] = False
    torch.testing.assert_close(
        gpu(idx.cuda(), attention_mask=mask.cuda()).cpu(), cpu(idx, attention_mask=mask), atol=1e-4, rtol=1e-4
    )
    prompts, continuations = [[1, 2, 3], [4]], [[5, 6], [7, 8, 9]]
    logprob = sequence_logprob(gpu, prompts, continuations)
    assert logprob.device.type == "cuda"
    torch.testing.assert_close(
        logprob.cpu(), sequence_logprob(cpu, prompts, continuations), atol=1e-4, rtol=1e-4
    )
    logprob.sum().backward()
    assert gpu.token_embedding.weight.grad.abs().sum() > 0
    out = generate(gpu, [[1, 2], [3, 4, 5, 6]], 5, generator=torch.Generator(device="cuda").manual_seed(0))
    assert [len(o) for o in out] == [5, 5]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = gpu(idx.cuda(), attention_mask=mask.cuda())
        loss = gpu.loss(idx.cuda(), idx.cuda())
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    bf16 = tiny_model(seed=5).cuda().to(torch.bfloat16)
    assert torch.isfinite(bf16(idx.cuda(), attention_mask=mask.cuda()).float()).all()
