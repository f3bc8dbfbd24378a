"""The SaySelf chapter's base model: the toolkit's GPT pretrained on the knowledge world's corpus (the
stand-in for the paper's Mistral-7B). It lives in its own module so that its cache entry depends only on
the code it runs (the world, the model, the training loop), not on the fine-tuning stages built on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paperlab import cache
from paperlab.config import check_type
from paperlab.data import lm_batches
from paperlab.nn import GPT, GPTConfig, check_gpt_sizes
from paperlab.sayself.world import World, WorldConfig
from paperlab.train import TrainConfig, TrainResult, auto_device, seed_everything, seeded_batches, train
from paperlab.utils import alone_threads, cpu_threads

__all__ = ["BaseConfig", "corpus_ids", "make_model", "load_base"]


@dataclass(frozen=True)
class BaseConfig:
    """The world, the GPT's size and its pretraining (``train.seed`` fixes the base model)."""

    world: WorldConfig = field(default_factory=WorldConfig)
    context_length: int = 64
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=3000, batch_size=32, lr=3e-3, warmup_steps=100, eval_every=100, seed=0))

    def __post_init__(self) -> None:
        check_type(self, "world", WorldConfig)
        check_type(self, "train", TrainConfig)
        check_gpt_sizes(self, context_length=self.context_length, d_model=self.d_model,
                        n_layers=self.n_layers, n_heads=self.n_heads, dropout=self.dropout)


def corpus_ids(world: World) -> torch.Tensor:
    """The corpus as one token stream, each document as ``<bos> ... <eos>``: (n_tokens,) int64."""
    tok = world.tokenizer
    return torch.tensor([t for doc in world.corpus for t in tok.encode(doc, add_bos=True, add_eos=True)])


def make_model(config: BaseConfig, vocab_size: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=config.context_length, d_model=config.d_model,
                         n_layers=config.n_layers, n_heads=config.n_heads, dropout=config.dropout))


def _pretrain(config: BaseConfig, device) -> dict:
    """Pretrain the base model; its weights (CPU) and history. Every later run starts from it, so nothing
    runs beside it: :func:`paperlab.utils.alone_threads` (the same weights bit for bit on one thread or
    two, checked on the full profile's model for 300 steps: 16 s on one thread, 13 s on two)."""
    with cpu_threads(alone_threads(), device=device):
        return _pretrain_body(config, device)


def _pretrain_body(config: BaseConfig, device) -> dict:
    world = World(config.world)
    ids = corpus_ids(world).to(device)
    seed_everything(config.train.seed)
    model = make_model(config, world.tokenizer.vocab_size).to(device)
    fixed = lm_batches(ids, 64, config.context_length, torch.Generator().manual_seed(1234))

    @torch.no_grad()
    def eval_fn(m: GPT) -> dict:  # a memorisation task: the loss on fixed windows of the corpus itself
        return {"corpus_loss": m.loss(*fixed).item()}

    get_batch = seeded_batches(
        lambda g: lm_batches(ids, config.train.batch_size, config.context_length, g), config.train.seed)
    result = train(model, get_batch, lambda m, b: m.loss(*b), config.train, eval_fn=eval_fn,
                   device=device, desc="pretraining")
    return {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "history": result.to_dict()}


def load_base(config: BaseConfig, device=None) -> tuple[GPT, World, TrainResult]:
    """The pretrained base model in eval mode (from the cache, pretraining it first if needed), its world
    and its training history."""
    device = auto_device(device)
    artifact = cache.cached("sayself-base", config, lambda: _pretrain(config, device), seed=config.train.seed)
    world = World(config.world)
    model = make_model(config, world.tokenizer.vocab_size)
    model.load_state_dict(artifact["state_dict"])
    return model.to(device).eval(), world, TrainResult.from_dict(artifact["history"])
