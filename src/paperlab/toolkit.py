"""The toolkit chapter's experiment: train the tiny GPT on the synthetic grammar and compare its loss
with the entropy of the source.

The corpus comes from :class:`paperlab.data.Grammar`, whose exact entropy per token is known, so the
validation loss has a floor to be measured against: ``loss >= H_token`` for any model. The experiment

1. samples ``n_sentences`` sentences, splits them into train and validation sets, fits a word-level
   tokenizer on the training sentences and concatenates each set into one token stream;
2. trains a :class:`paperlab.nn.GPT` with :func:`paperlab.train.train` on random windows of the stream
   (next-token cross-entropy), evaluating the validation loss every ``eval_every`` steps;
3. scores whole validation sentences with :func:`paperlab.nn.sequence_logprob`, given only the previous
   sentence's end ("."), which is the quantity the entropy floor bounds, and pairs each sentence's
   model loss with its exact ``-log p(s)`` (the paired excess of sec-toolkit-logprob);
4. samples sentences and parses them with the grammar;

and does all of it for each of ``config.seeds`` (independent initialisations and data orders, trained
side by side, one per usable CPU core), so the chapter's scorecard can give intervals over seeds. The trained
weights and the histories are stored in the artifact cache (:func:`paperlab.cache.cached`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import torch

from paperlab import cache
from paperlab.config import check_ints, check_numbers, check_seeds, check_that, check_type
from paperlab.data import Grammar, GrammarConfig, lm_batches, split_train_val
from paperlab.experiments import Experiment, over_seeds
from paperlab.nn import GPT, GPTConfig, check_gpt_sizes, count_parameters, generate, sequence_logprob
from paperlab.tokenizers import WordTokenizer
from paperlab.train import (
    TrainConfig,
    TrainResult,
    auto_device,
    check_convergence_evaluations,
    seed_everything,
    seeded_batches,
    train,
)


@dataclass(frozen=True)
class ToolkitConfig:
    """Everything that determines the trained model (and so its cache key)."""

    grammar: GrammarConfig = field(default_factory=GrammarConfig)
    n_sentences: int = 20_000
    val_fraction: float = 0.1
    context_length: int = 64
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, batch_size=32, eval_every=50))
    eval_windows: int = 64  # validation windows per evaluation
    data_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds of run(); load_trained uses train.seed
    n_val_sentences: int = 2_000  # validation sentences scored against the grammar
    n_samples: int = 500  # sentences sampled (per seed) and parsed

    def __post_init__(self):
        check_type(self, "grammar", GrammarConfig)
        check_type(self, "train", TrainConfig)
        check_ints(self, "n_sentences", "context_length", "d_model", "n_layers", "n_heads", "eval_windows")
        check_ints(self, "data_seed", low=0)
        check_ints(self, "n_val_sentences", "n_samples")
        check_seeds(self)
        check_numbers(self, "val_fraction", low=0, high=1, open_low=True, open_high=True)
        n_val = round(self.n_sentences * self.val_fraction)
        check_that(self, 0 < n_val < self.n_sentences, "n_sentences",
                   f"large enough that val_fraction = {self.val_fraction} leaves sentences on both sides")
        check_gpt_sizes(self, context_length=self.context_length, d_model=self.d_model,
                        n_layers=self.n_layers, n_heads=self.n_heads)  # the architecture's rules


CONFIGS = {
    "fast": ToolkitConfig(
        n_sentences=3_000, context_length=32, d_model=64, n_layers=2, n_heads=4,
        train=TrainConfig(steps=300, batch_size=16, lr=3e-3, warmup_steps=30, eval_every=50, seed=0),
        eval_windows=32, n_val_sentences=300, n_samples=100,
    ),
    "full": ToolkitConfig(
        n_sentences=20_000, context_length=64, d_model=128, n_layers=2, n_heads=4,
        train=TrainConfig(steps=1200, batch_size=32, lr=2e-3, warmup_steps=60, eval_every=50, seed=0),
        eval_windows=128,
    ),
}


@dataclass
class Corpus:
    """The grammar, its sentences split into train/val, the tokenizer and the two token streams."""

    grammar: Grammar
    train_sentences: list[str]
    val_sentences: list[str]
    tokenizer: WordTokenizer

    @cached_property
    def train_ids(self) -> torch.Tensor:
        return self.encode_stream(self.train_sentences)

    @cached_property
    def val_ids(self) -> torch.Tensor:
        return self.encode_stream(self.val_sentences)

    @property
    def end_id(self) -> int:
        """The id of ".", which ends every sentence (and so also marks where the next one starts)."""
        return self.tokenizer.encode(".")[0]

    def encode_stream(self, sentences: list[str]) -> torch.Tensor:
        """All sentences' tokens, concatenated: (n_tokens,) int64."""
        return torch.tensor([i for s in sentences for i in self.tokenizer.encode(s)], dtype=torch.long)


def build_corpus(config: ToolkitConfig) -> Corpus:
    """Deterministic from ``config`` (grammar seed and data seed): cheap to rebuild, so never cached."""
    grammar = Grammar(config.grammar)
    sentences = [s.text for s in grammar.sample(config.n_sentences, seed=config.data_seed)]
    train_sentences, val_sentences = split_train_val(sentences, config.val_fraction, seed=config.data_seed)
    tokenizer = WordTokenizer.fit(train_sentences)
    return Corpus(grammar, train_sentences, val_sentences, tokenizer)


def check_streams(corpus: Corpus, config: ToolkitConfig) -> None:
    """Both token streams hold at least one window of ``context_length + 1`` tokens (else a ValueError
    naming the fields to change, raised before training rather than at the first evaluation)."""
    streams = (("train", corpus.train_ids, "lower"), ("validation", corpus.val_ids, "raise"))
    for split, ids, fraction in streams:
        if ids.numel() < config.context_length + 1:
            raise ValueError(
                f"the {split} stream has {ids.numel()} tokens, fewer than context_length + 1 = "
                f"{config.context_length + 1}; raise n_sentences, {fraction} val_fraction or lower "
                f"context_length")


def make_model(config: ToolkitConfig, vocab_size: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=config.context_length,
                         d_model=config.d_model, n_layers=config.n_layers, n_heads=config.n_heads))


@torch.no_grad()
def window_loss(model: GPT, ids: torch.Tensor, config: ToolkitConfig, n_windows: int,
                seed: int = 1234) -> float:
    """Mean next-token loss (nats/token) over ``n_windows`` fixed random windows of a token stream."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    x, y = lm_batches(ids, n_windows, config.context_length, generator)
    return model.loss(x.to(device), y.to(device)).item()


def sentence_loss(model: GPT, corpus: Corpus, sentences: list[str]) -> float:
    """Nats per token of whole sentences, each given only the preceding "." (the sentence boundary).

    ``-sum_s log p_model(s | ".") / sum_s len(s)``: the same ratio as the grammar's entropy per token,
    so the two are directly comparable (the model can only be worse: cross-entropy >= entropy).
    """
    n_tokens = sum(len(corpus.tokenizer.encode(s)) for s in sentences)
    return float(sentence_nll(model, corpus, sentences).sum()) / n_tokens


def train_model(config: ToolkitConfig, device: str | torch.device | None = None) -> dict:
    """Train the GPT of ``config``; returns its weights (on the CPU) and training history."""
    device = auto_device(device)
    corpus = build_corpus(config)
    check_streams(corpus, config)
    train_ids = corpus.train_ids.to(device)
    seed_everything(config.train.seed)  # the initial weights come from the seed, not from earlier draws
    model = make_model(config, corpus.tokenizer.vocab_size).to(device)

    get_batch = seeded_batches(  # random windows of the training stream, a generator per (step, rank)
        lambda generator: lm_batches(train_ids, config.train.batch_size, config.context_length, generator),
        config.train.seed)

    def eval_fn(model: GPT) -> dict:
        return {"val_loss": window_loss(model, corpus.val_ids, config, config.eval_windows)}

    result = train(model, get_batch, lambda m, batch: m.loss(*batch), config.train,
                   eval_fn=eval_fn, device=device, desc="toolkit GPT")
    return {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": result.to_dict(),
    }


def load_trained(config: ToolkitConfig,
                 device: str | torch.device | None = None) -> tuple[GPT, Corpus, TrainResult]:
    """The trained model (from the cache, training it first if needed), its corpus and its history."""
    artifact = cache.cached("toolkit-gpt", config, lambda: train_model(config, device),
                            seed=config.train.seed, check=cache.has_keys("state_dict", "history"))
    corpus = build_corpus(config)
    model = make_model(config, corpus.tokenizer.vocab_size)
    model.load_state_dict(artifact["state_dict"])
    model.to(auto_device(device)).eval()
    return model, corpus, TrainResult.from_dict(artifact["history"])


@torch.no_grad()
def sentence_nll(model: GPT, corpus: Corpus, sentences: list[str], batch_size: int = 256) -> torch.Tensor:
    """``-log p_model(s | ".")`` of each sentence, in nats: (n_sentences,) float64."""
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = [corpus.tokenizer.encode(s) for s in sentences[start:start + batch_size]]
        out.append(-sequence_logprob(model, [[corpus.end_id]] * len(batch), batch).double().cpu())
    return torch.cat(out)


def measure_seed(seed: int, config: ToolkitConfig, device: str | None = None) -> dict:
    """Train (or load) the model of training seed ``seed`` and measure it; JSON-able.

    Per validation sentence: the model's nats and the grammar's exact ``-log p(s)`` (their difference is
    the paired excess), and its length in tokens; ``n_samples`` sampled sentences and whether each parses.
    """
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
    model, corpus, history = load_trained(config, device)
    sentences = corpus.val_sentences[:config.n_val_sentences]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    samples = generate(model, [[corpus.end_id]] * config.n_samples, max_new_tokens=config.context_length - 1,
                       temperature=1.0, eos_id=corpus.end_id, generator=generator)
    sampled_text = [corpus.tokenizer.decode(s) for s in samples]
    return {
        "seed": seed,
        "model_nats": sentence_nll(model, corpus, sentences).tolist(),
        "true_nats": [-corpus.grammar.logprob_of_text(s) for s in sentences],
        "n_tokens": [len(corpus.tokenizer.encode(s)) for s in sentences],
        "final_val_window_loss": history.evals[-1]["val_loss"],
        **history.convergence("val_loss").record(),
        "samples": sampled_text,
        "parses": [corpus.grammar.logprob_of_text(t) > float("-inf") for t in sampled_text],
        "history": {"steps": history.steps, "loss": history.loss, "evals": history.evals},
        "train_seconds": history.seconds,
    }


def check_runnable(config: ToolkitConfig) -> None:
    """What :func:`run` needs beyond a valid config: >= 5 evaluations per training run, for the
    convergence check, and token streams long enough for a window (:func:`check_streams`); a ValueError
    before any training (``python -m paperlab run`` calls it up front)."""
    check_convergence_evaluations(config, "train", config.train)
    check_streams(build_corpus(config), config)


def run(config: ToolkitConfig, device: str | torch.device | None = None) -> dict:
    """Train (or load) one model per seed of ``config.seeds`` (one per usable CPU core at a time) and measure
    each (:func:`measure_seed`); returns JSON-able results: ``seeds`` (one dict per seed) and the
    seed-independent numbers of the corpus."""
    check_runnable(config)
    device = None if device is None else str(auto_device(device))
    corpus = build_corpus(config)
    model = make_model(config, corpus.tokenizer.vocab_size)
    # On a GPU the seeds run one after another in this process (worker processes would each start CUDA).
    workers = 1 if device is not None and device.startswith("cuda") else None
    per_seed = over_seeds(measure_seed, config.seeds, config, device, workers=workers, desc="toolkit seeds")
    return {
        "n_parameters": count_parameters(model),
        "vocab_size": corpus.tokenizer.vocab_size,
        "train_tokens": corpus.train_ids.numel(),
        "entropy_per_token": corpus.grammar.exact_entropy_per_token(),
        "unigram_entropy": unigram_entropy(corpus.train_ids),
        "seeds": per_seed,
    }


def unigram_entropy(ids: torch.Tensor) -> float:
    """Entropy (nats) of the token frequencies: the loss of the best model that ignores context."""
    counts = torch.bincount(ids).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


EXPERIMENT = Experiment(name="toolkit", chapter="book/01-toolkit.md", configs=CONFIGS, run=run,
                        check=check_runnable)
