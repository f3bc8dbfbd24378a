"""A synthetic corpus generated from the WordNet hierarchy, and the word-level tiny LM trained on it.

**The generative process.** Let the concepts be the synsets of :func:`extract_concepts` (under the roots,
at least ``min_tokens`` lemmas each) and give every concept ``a`` its own ``words_per_concept`` *context
words* ``C_a`` (written ``ctx_mammal_n_01_0``...). A sentence is made as follows:

1. draw a lemma ``w`` from all single-word lemmas under the roots (the target word): uniformly, or with
   ``zipf > 0`` by Zipf's law over a fixed random ranking of the lemmas (skewed frequencies);
2. draw one of the synsets ``s`` that have ``w`` as a lemma, uniformly (polysemous lemmas have several);
3. let ``A(s)`` be the concept path from the root down to the nearest concept containing ``s`` (``s``
   itself if it is a concept): the ancestors of ``w`` that the corpus knows;
4. draw ``n_context`` context words independently: with probability ``p_noise`` uniformly from all context
   words, otherwise draw a concept ``a`` uniformly from ``A(s)`` and then a word uniformly from ``C_a``;
5. the sentence is ``c_1 ... c_n w .``.

So the only thing that tells which lemma comes next is which *ancestors* the contexts point at: a
context word of ``mammal`` raises every mammal's probability alike, one of ``animal`` every animal's. The
Bayes-optimal next-word distribution is ``p(w | c_1..c_n) ∝ sum_s p(s, w) prod_j p(c_j | s)``
(:meth:`HierarchyCorpus.bayes_lemma_loss` computes its loss exactly), and the unembedding ``gamma(w)``
must encode ``w``'s ancestors to reach it: the structure the paper's estimator should find.

**The model.** A :class:`paperlab.nn.GPT` with untied embeddings (``gamma`` is the LM head's weight, the
*unembedding* of the paper), trained with :func:`paperlab.train.train` on sentences ``. c_1 .. c_n``
to predict the lemma ``w`` that follows (one token per lemma and per context word; a word-level
:class:`WordTokenizer`). Only the lemma position is scored: the context words are noise given the
concept path, and scoring them would cost ``n_context + 1`` times more LM-head compute (the expensive
part on a CPU) without teaching the lemmas' unembeddings anything. The vocabulary (about 5,000 tokens)
is much larger than the width ``d_model``, as the causal inner product needs (``Cov(gamma)`` must be
full rank); a config violating it is an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from paperlab import cache
from paperlab.config import check_ints, check_numbers, check_str_tuple, check_that, check_type
from paperlab.geometry.hierarchy import Concepts, Hierarchy, extract_concepts, load_hierarchy, unknown_synsets
from paperlab.nn import GPT, GPTConfig, check_gpt_sizes, rope_cos_sin
from paperlab.tokenizers import SPECIAL_TOKENS, WordTokenizer
from paperlab.train import TrainConfig, auto_device, seed_everything, seeded_batches, train
from paperlab.utils import cpu_threads

__all__ = [
    "CorpusConfig",
    "LMConfig",
    "HierarchyCorpus",
    "check_width",
    "make_model",
    "representation",
    "lemma_logits",
    "lemma_loss",
    "train_lm",
    "load_trained",
]

MIN_VOCAB_RATIO = 4  # vocabulary size must be at least this many times d_model


@dataclass(frozen=True)
class CorpusConfig:
    roots: tuple[str, ...] = ("animal.n.01", "plant.n.02")
    min_tokens: int = 10  # concepts that get context words
    words_per_concept: int = 2
    n_context: int = 3
    p_noise: float = 0.1
    zipf: float = 0.0  # lemma frequencies proportional to rank^-zipf (a fixed random ranking); 0: uniform

    def __post_init__(self):
        check_str_tuple(self, "roots")
        problem = unknown_synsets(self.roots)
        check_that(self, problem is None, "roots", f"synsets of the shipped WordNet subset ({problem})")
        check_ints(self, "min_tokens", low=2)  # a concept's covariance needs two tokens
        check_ints(self, "words_per_concept", "n_context")
        check_numbers(self, "p_noise", low=0, high=1, open_high=True)
        check_numbers(self, "zipf", low=0)


@dataclass(frozen=True)
class LMConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    d_model: int = 64
    n_layers: int = 2  # two blocks: the intervention also edits the residual stream between them
    n_heads: int = 4
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=3000,  # at 2000, one of three seeds' lemma loss was still falling over its last fifth
            batch_size=256,
            lr=3e-3,
            warmup_steps=100,
            weight_decay=0.0,
            eval_every=250,
            log_every=25,
        )
    )
    eval_sentences: int = 2000

    def __post_init__(self):
        check_type(self, "corpus", CorpusConfig)
        check_type(self, "train", TrainConfig)
        check_ints(self, "d_model", "n_layers", "n_heads", "eval_sentences")
        check_gpt_sizes(self, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads)


def check_width(vocab_size: int, d_model: int, ratio: int = MIN_VOCAB_RATIO) -> None:
    """The causal inner product needs a vocabulary much larger than the width (Cov(gamma) of full rank)."""
    if vocab_size < ratio * d_model:
        raise ValueError(
            f"vocabulary size {vocab_size} is not much larger than the model width d_model = "
            f"{d_model}: need vocab_size >= {ratio} * d_model = {ratio * d_model} for the "
            "unembedding covariance (and so the causal inner product) to be well defined"
        )


def _word(name: str) -> str:
    return re.sub(r"\W", "_", name)


class HierarchyCorpus:
    """The tokenizer, the concept tree and a vectorised sampler of the generative process (module doc)."""

    def __init__(self, config: CorpusConfig, hierarchy: Hierarchy | None = None):
        if not isinstance(config, CorpusConfig):  # its fields are checked when it is made
            raise TypeError(f"config must be a CorpusConfig, got {type(config).__name__}")
        self.config = config
        self.hierarchy = hierarchy if hierarchy is not None else load_hierarchy()
        synsets = sorted({s for r in config.roots for s in self.hierarchy.descendants(r)})
        self.lemmas = sorted({lemma for s in synsets for lemma in self.hierarchy.lemmas[s]})
        self.concepts: Concepts = extract_concepts(
            self.hierarchy, self.lemmas, config.min_tokens, config.roots
        )
        self.context_words = {
            c: [f"ctx_{_word(c)}_{k}" for k in range(config.words_per_concept)] for c in self.concepts.names
        }
        tokens = (
            list(SPECIAL_TOKENS)
            + ["."]
            + self.lemmas
            + [w for c in self.concepts.names for w in self.context_words[c]]
        )
        self.tokenizer = WordTokenizer(tokens)
        self.end_id = self.tokenizer.token_to_id["."]
        ids = self.tokenizer.token_to_id
        self.lemma_ids = torch.tensor([ids[w] for w in self.lemmas])
        concept_index = {c: i for i, c in enumerate(self.concepts.names)}
        self.context_ids = torch.tensor(
            [[ids[w] for w in self.context_words[c]] for c in self.concepts.names]
        )
        # (synset, lemma) pairs with their ancestor concepts A(s), padded
        pair_lemma, pair_path, senses = [], [], {}
        for s in synsets:
            for lemma in self.hierarchy.lemmas[s]:
                senses[lemma] = senses.get(lemma, 0) + 1
        for s in synsets:
            if not self.hierarchy.lemmas[s]:
                continue
            distance = self.hierarchy.ancestors(s)
            nearest = min((d, a) for a, d in distance.items() if a in concept_index)[1]
            path = [concept_index[a] for a in self.concepts.ancestors(nearest)]
            for lemma in self.hierarchy.lemmas[s]:
                pair_lemma.append(ids[lemma])
                pair_path.append(path)
        depth = max(len(p) for p in pair_path)
        self.pair_lemma = torch.tensor(pair_lemma)
        self.pair_length = torch.tensor([len(p) for p in pair_path])
        self.pair_path = torch.tensor([p + [p[-1]] * (depth - len(p)) for p in pair_path])
        # p(w): uniform, or Zipf's law over a fixed random ranking of the lemmas (seed 0, for every run)
        rank = torch.empty(len(self.lemmas), dtype=torch.float64)
        rank[torch.randperm(len(self.lemmas), generator=torch.Generator().manual_seed(0))] = torch.arange(
            1, len(self.lemmas) + 1, dtype=torch.float64)
        lemma_weight = {ids[w]: float(rank[i]) ** -config.zipf for i, w in enumerate(self.lemmas)}
        inverse = {ids[w]: lemma_weight[ids[w]] / n for w, n in senses.items()}
        weights = torch.tensor([inverse[i] for i in pair_lemma], dtype=torch.float64)
        self.pair_prior = weights / weights.sum()  # p(s, w) = p(w) p(s | w): s uniform among w's synsets

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def sentence_length(self) -> int:
        return self.config.n_context + 2

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` sentences ``(n, n_context + 2)`` int64 (context words, lemma, ".") and their pair index."""
        c = self.config
        pair = torch.multinomial(self.pair_prior, n, replacement=True, generator=generator)
        level = (
            torch.rand(n, c.n_context, generator=generator, dtype=torch.float64)
            * self.pair_length[pair, None]
        ).long()
        concept = self.pair_path[pair[:, None], level]  # a ~ uniform on A(s)
        word = torch.randint(c.words_per_concept, (n, c.n_context), generator=generator)
        context = self.context_ids[concept, word]
        noise = torch.rand(n, c.n_context, generator=generator) < c.p_noise
        uniform = self.context_ids.flatten()[
            torch.randint(self.context_ids.numel(), (n, c.n_context), generator=generator)
        ]
        context = torch.where(noise, uniform, context)
        sentences = torch.cat([context, self.pair_lemma[pair, None], torch.full((n, 1), self.end_id)], 1)
        return sentences, pair

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch: inputs ``(batch, n_context + 1)`` = ". c_1 .. c_n" and the lemma ``(batch,)``."""
        sentences, _ = self.sample(batch_size, generator)
        return self.inputs(sentences), sentences[:, self.config.n_context]

    def inputs(self, sentences: torch.Tensor) -> torch.Tensor:
        """ ". c_1 .. c_n" for each sentence: what the model reads before predicting the lemma."""
        start = torch.full((len(sentences), 1), self.end_id, dtype=sentences.dtype, device=sentences.device)
        return torch.cat([start, sentences[:, : self.config.n_context]], 1)

    def text(self, sentence: torch.Tensor) -> str:
        return self.tokenizer.decode(sentence)

    def context_log_likelihood(self, context: torch.Tensor) -> torch.Tensor:
        """``sum_j log p(c_j | s)`` for every sentence (rows of ``context``: (n, n_context)) and every pair
        ``s``: (n, n_pairs), float64. A context word has probability ``a = p_noise / n_words`` off the path
        ``A(s)`` and ``a + (1 - p_noise) / (|A(s)| words_per_concept)`` on it, so only the number of
        context words on the path matters (counted with one matrix product)."""
        c = self.config
        n_concepts = len(self.concepts.names)
        concept_of = torch.full((self.vocab_size,), -1, dtype=torch.long)
        concept_of[self.context_ids.flatten()] = torch.arange(n_concepts).repeat_interleave(
            c.words_per_concept
        )
        member = torch.zeros(len(self.pair_lemma), n_concepts, dtype=torch.float64)
        member.scatter_(1, self.pair_path, 1.0)  # 1[a in A(s)]
        counts = torch.zeros(len(context), n_concepts, dtype=torch.float64)
        counts.scatter_add_(1, concept_of[context], torch.ones(context.shape, dtype=torch.float64))
        on_path = counts @ member.T  # (n, pairs): context words on A(s)
        off = c.p_noise / self.context_ids.numel()
        on = off + (1 - c.p_noise) / (self.pair_length.double() * c.words_per_concept)
        off_path = c.n_context - on_path
        log_off = math.log(off) if off > 0 else -math.inf  # p_noise = 0: a context off the path is impossible
        return on_path * on.log() + torch.where(off_path > 0, off_path * log_off, torch.zeros_like(off_path))

    def bayes_lemma_loss(self, sentences: torch.Tensor, chunk: int = 128) -> float:
        """Exact loss (nats) of the Bayes-optimal predictor of the lemma given the context words, averaged
        over ``sentences``: the floor for the model's loss on lemma positions."""
        total = 0.0
        for start in range(0, len(sentences), chunk):
            part = sentences[start : start + chunk]
            log_joint = self.context_log_likelihood(part[:, : self.config.n_context]) + self.pair_prior.log()
            lemma = part[:, self.config.n_context]
            log_evidence = torch.logsumexp(log_joint, 1)
            same = self.pair_lemma[None, :] == lemma[:, None]
            log_numerator = torch.logsumexp(log_joint.masked_fill(~same, -math.inf), 1)
            total += float((log_evidence - log_numerator).sum())
        return total / len(sentences)


def make_model(config: LMConfig, corpus: HierarchyCorpus) -> GPT:
    check_width(corpus.vocab_size, config.d_model)
    return GPT(
        GPTConfig(
            vocab_size=corpus.vocab_size,
            context_length=corpus.config.n_context + 1,
            d_model=config.d_model,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            tie_embeddings=False,
        )
    )


def representation(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """``lambda(x)``: the final (normalised) hidden state, ``logits = lambda(x) @ gamma^T``.

    idx: (batch, seq) -> (batch, seq, d_model). The same computation as :meth:`GPT.forward` without the
    LM head (so that a caller can apply the head to a few positions, or intervene on lambda first).
    """
    h = model.token_embedding(idx)
    positions = torch.arange(idx.shape[1], device=idx.device)
    cos, sin = rope_cos_sin(
        positions,
        model.config.d_model // model.config.n_heads,
        model.config.rope_base,
        torch.promote_types(h.dtype, torch.float32),
    )
    for block in model.blocks:
        h = block(h, cos, sin)
    return model.final_norm(h)


def lemma_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Logits of the token after the last one of each row: (batch, vocab_size)."""
    return model.lm_head(representation(model, idx)[:, -1])


@torch.no_grad()
def lemma_loss(model: GPT, corpus: HierarchyCorpus, sentences: torch.Tensor) -> float:
    """The model's mean loss (nats) on the lemma of each sentence, given ". c_1 .. c_n"."""
    device = next(model.parameters()).device
    logits = lemma_logits(model, corpus.inputs(sentences).to(device))
    return float(F.cross_entropy(logits.float(), sentences[:, corpus.config.n_context].to(device)))


def train_lm(config: LMConfig, device: str | torch.device | None = None) -> dict:
    """Train the LM of ``config``; returns its weights (CPU) and history, lemma loss and Bayes floor."""
    device = auto_device(device)
    corpus = HierarchyCorpus(config.corpus)
    seed = config.train.seed
    seed_everything(seed)  # the initial weights come from the global generator
    model = make_model(config, corpus).to(device)
    evaluation = corpus.sample(config.eval_sentences, torch.Generator().manual_seed(10_000 + seed))[0]

    get_batch = seeded_batches(lambda generator: corpus.batch(config.train.batch_size, generator), seed)

    def eval_fn(model: GPT) -> dict:
        return {"lemma_loss": lemma_loss(model, corpus, evaluation)}

    def loss_fn(model: GPT, batch) -> torch.Tensor:
        x, lemma = batch
        return F.cross_entropy(lemma_logits(model, x).float(), lemma)

    result = train(
        model, get_batch, loss_fn, config.train, eval_fn=eval_fn, device=device, desc="hierarchy LM"
    )
    return {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "history": result.to_dict(),
        "bayes_lemma_loss": corpus.bayes_lemma_loss(evaluation),
        "uniform_lemma_loss": math.log(len(corpus.lemmas)),
    }


def load_trained(config: LMConfig, device: str | torch.device | None = None):
    """The trained LM of ``config`` (from the artifact cache, training it on one CPU thread first if
    needed; the key covers this module and what it imports), its corpus and its training record."""
    with cpu_threads(1):  # a tiny model: one thread is faster than two busy cores
        record = cache.cached("geometry-lm", config, lambda: train_lm(config, device), seed=config.train.seed,
                              check=cache.has_keys("state_dict", "history"))
    corpus = HierarchyCorpus(config.corpus)
    model = make_model(config, corpus)
    model.load_state_dict(record["state_dict"])
    model.to(auto_device(device)).eval()
    return model, corpus, record
