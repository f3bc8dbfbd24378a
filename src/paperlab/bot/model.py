"""The data and the tiny models that play the language model in the Buffer of Thoughts chapter.

1. **Data** (:func:`build_data`, cached): for each family, ``n_train`` training problems, ``n_val``
   validation and ``n_test`` test problems, disjoint (for the Game of 24, disjoint sets of puzzles: only
   1,362 exist, so its training split is what the other two leave). Test problem ``j`` of a family is
   stated in phrasing ``j % 3``; phrasing 3 is never used in training.
2. **Models** (:func:`load_model`, cached per seed): one word-level :class:`paperlab.nn.GPT` learns every
   role (distil, answer directly, answer step by step, propose and value Game of 24 steps) from the same
   training problems, by supervised fine-tuning on the responses (the format is
   :meth:`paperlab.bot.prompts.TinyPrompts.example`; the examples of a batch are packed into rows, each
   seeing only itself: :class:`ExampleSampler`). Every example of a batch draws its
   (role, family) uniformly from :data:`ROLE_MIX`: all methods are served by one model trained on one
   budget, as all methods in the paper are served by one GPT-4.

This module holds everything a trained model depends on, and nothing else, so that editing the methods
or the evaluation does not retrain the models (the cache keys cover this module's code).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass

import torch

from paperlab import align, cache, llm
from paperlab.bot import tasks
from paperlab.bot.prompts import TinyPrompts
from paperlab.config import check_ints
from paperlab.nn import GPT, GPTConfig, check_gpt_sizes
from paperlab.tokenizers import WordTokenizer
from paperlab.train import TrainConfig, TrainResult, auto_device, seed_everything, seeded_batches, train

__all__ = ["DataConfig", "ModelConfig", "ROLE_MIX", "N_SEEN_PHRASINGS", "MAX_NUMBER", "build_data",
           "problems_of", "test_phrasing", "make_tokenizer", "ExampleSampler", "pack", "separate",
           "make_gpt", "train_model",
           "load_model"]

N_SEEN_PHRASINGS = 3  # phrasings 0-2 are used in training; phrasing 3 never is
ROLE_MIX: tuple[tuple[str, str], ...] = tuple(
    (role, name) for name in tasks.FAMILIES for role in ("distill", "io", "cot")
) + (("propose", "game24"), ("value", "game24"))
MAX_NUMBER = 200  # numbers in the vocabulary: 0..200 (arithmetic and Game of 24 steps stay within)


@dataclass(frozen=True)
class DataConfig:
    """How many problems of each family in each split, and the seed that generates them."""

    n_train: int = 2000
    n_val: int = 30
    n_test: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        check_ints(self, "n_train", "n_val", "n_test")
        check_ints(self, "seed", low=0)


@dataclass(frozen=True)
class ModelConfig:
    """The size of one tiny GPT, and the length of its packed training rows (:class:`ExampleSampler`)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    context_length: int = 128  # a prompt and its longest reply (up to 31 + 72 tokens) fit
    pack_length: int = 96  # training rows: the longest example (75 tokens) fits; shorter rows than the
    # context waste less of the block-diagonal attention

    def __post_init__(self) -> None:
        check_gpt_sizes(self, context_length=self.context_length, d_model=self.d_model,
                        n_layers=self.n_layers, n_heads=self.n_heads)
        check_ints(self, "pack_length", low=2)


# --------------------------------------------------------------------------------------------------
# 1. Data
# --------------------------------------------------------------------------------------------------
def build_data(config: DataConfig) -> dict:
    """Train, validation and test problems per family (JSON-able; cached), disjoint, deterministic in
    ``config.seed``."""
    return cache.cached("bot-data", config, lambda: _build_data(config))


def _build_data(config: DataConfig) -> dict:
    splits: dict[str, dict[str, list[dict]]] = {"train": {}, "val": {}, "test": {}}
    for name in tasks.FAMILIES:
        sizes = {"test": config.n_test, "val": config.n_val, "train": config.n_train}
        total = sum(sizes.values())
        problems = _distinct(tasks.generate(name, total + total // 10 + 10, seed=config.seed))
        if name == "game24":  # only 1,362 puzzles exist: the training split takes what is left
            sizes["train"] = min(config.n_train, len(problems) - config.n_test - config.n_val)
        if len(problems) < sum(sizes.values()):
            raise ValueError(f"{name}: {len(problems)} distinct problems, {sum(sizes.values())} requested")
        start = 0
        for split in ("test", "val", "train"):
            splits[split][name] = [p.to_dict() for p in problems[start:start + sizes[split]]]
            start += sizes[split]
    return splits


def _distinct(problems: list[tasks.Problem]) -> list[tasks.Problem]:
    seen, out = set(), []
    for p in problems:
        key = tasks.family(p.family).format_params(p.params)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def problems_of(data: dict, split: str) -> list[tasks.Problem]:
    """The problems of ``split``, family by family in :data:`tasks.FAMILIES` order."""
    return [tasks.Problem.from_dict(d) for name in tasks.FAMILIES for d in data[split][name]]


def test_phrasing(index_in_family: int) -> int:
    """The phrasing of the ``index_in_family``-th test problem of a family (0, 1, 2, 0, ...)."""
    return index_in_family % N_SEEN_PHRASINGS


# --------------------------------------------------------------------------------------------------
# 2. Vocabulary and training examples
# --------------------------------------------------------------------------------------------------
def make_tokenizer(config: DataConfig) -> WordTokenizer:
    """A word-level vocabulary covering every text the tasks, the phrasings (held-out one included) and
    the roles can produce; numbers 0..200 are single tokens."""
    return WordTokenizer(cache.cached("bot-vocab", config, lambda: _vocabulary(build_data(config))))


def _vocabulary(data: dict) -> list[str]:
    """The alphabets of every family (numbers, words, squares, pieces) and every text of the validation
    problems in every phrasing and role; checked to cover every validation and test statement."""
    prompts = TinyPrompts()
    texts = [" ".join(str(i) for i in range(MAX_NUMBER + 1)), " ".join(tasks.SORT_WORDS),
             " ".join(f"{f}{r}" for f in "abcdefgh" for r in "12345678"), "K Q R B N P k q r b n p",
             " ".join(tasks.PIECE_NAMES.values()), " ".join("abcdefghijklmnopqrstuvwxyz"),
             " ".join(prompts.VALUE_WORDS), prompts.propose([1, 2, 3]).prompt, prompts.value([1, 2]).prompt]
    for problem in problems_of(data, "val"):
        for phrasing in range(len(tasks.family(problem.family).phrasings)):
            for role in ("distill", "io", "cot"):
                texts.extend(prompts.example(role, problem, phrasing) or ())
    tokenizer = WordTokenizer.fit(texts)
    for problem in problems_of(data, "test") + problems_of(data, "val"):
        for phrasing in range(len(tasks.family(problem.family).phrasings)):
            if tokenizer.unk_id in tokenizer.encode(problem.statement(phrasing)):
                raise AssertionError(f"the vocabulary misses a word of {problem.statement(phrasing)!r}")
    return tokenizer.tokens


class ExampleSampler:
    """Draws a batch of ``batch_size`` (prompt, response) examples from the training problems: each example
    picks a (role, family) of :data:`ROLE_MIX` uniformly, then a problem and a seen phrasing uniformly.

    **Packing** (``pack_length``): the examples are laid end to end in rows of at most ``pack_length``
    tokens (:func:`pack`; each starts with its ``<bos>`` and ends with its ``<eos>``), only response tokens
    are targets (:func:`paperlab.align.sft_turns_batch`), and a block-diagonal attention mask with
    positions restarting at 0 for each example (:func:`separate`) makes each example's computation exactly
    what it would be alone in a padded row. So the model learns exactly what it learns from padded batches
    of the same examples, at about half the token positions (the examples average 34 tokens, the longest
    75; padded to the longest in a batch, a row is about 74). The batch is then
    ``(idx, targets, attention_mask, positions)``.
    ``pack_length=None``: one example per row, right-padded (:func:`paperlab.align.sft_batch`).
    (Batches of one kind of example would pad less, but the model then learns to copy far more slowly.)"""

    def __init__(self, problems: list[tasks.Problem], tokenizer: WordTokenizer, batch_size: int,
                 pack_length: int | None = None):
        if pack_length is not None and pack_length < 2:
            raise ValueError(f"pack_length must be at least 2 tokens (or None), got {pack_length}")
        self.pack_length = pack_length
        self.by_family: dict[str, list[tasks.Problem]] = {}
        for p in problems:
            self.by_family.setdefault(p.family, []).append(p)
        missing = [name for _, name in ROLE_MIX if name not in self.by_family]
        if missing:
            raise ValueError(f"no training problems of the families {sorted(set(missing))}")
        self.tokenizer, self.batch_size, self.prompts = tokenizer, batch_size, TinyPrompts()
        # the encoded examples, shared by every sampler of these problems and this vocabulary in this
        # process (the models a worker trains one after another draw many of the same examples); encoding
        # is deterministic, so sharing changes no batch
        content = (tuple(tokenizer.tokens),
                   tuple((p.family, p.uid, p.answer, repr(p.params)) for p in problems))
        self._encoded: dict[tuple, tuple[list[int], list[int]] | None] = _ENCODED.setdefault(content, {})

    def encode(self, pair: tuple[str, str] | None) -> tuple[list[int], list[int]] | None:
        if pair is None:
            return None
        prompt, response = pair
        return (self.tokenizer.encode(prompt, add_bos=True), self.tokenizer.encode(response, add_eos=True))

    def example(self, rng: random.Random) -> tuple[list[int], list[int]]:
        while True:
            role, name = ROLE_MIX[rng.randrange(len(ROLE_MIX))]
            problem = rng.choice(self.by_family[name])
            if role in ("propose", "value"):
                encoded = self.encode(_search_example(role, problem.params["numbers"], rng, self.prompts))
            else:
                key = (role, problem.family, problem.uid, rng.randrange(N_SEEN_PHRASINGS))
                if key not in self._encoded:
                    self._encoded[key] = self.encode(self.prompts.example(role, problem, key[3]))
                encoded = self._encoded[key]
            if encoded is not None:
                return encoded

    def __call__(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        pairs = [self.example(rng) for _ in range(self.batch_size)]
        if self.pack_length is None:
            return align.sft_batch([p for p, _ in pairs], [r for _, r in pairs], pad_id=self.tokenizer.pad_id)
        rows = pack(pairs, self.pack_length)
        idx, targets = align.sft_turns_batch(rows, pad_id=self.tokenizer.pad_id)
        return (idx, targets) + separate(rows, idx.shape[1])


_ENCODED: dict[tuple, dict] = {}


def separate(rows: list[list[tuple[list[int], bool]]], seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For packed ``rows`` (of :func:`pack`) cut to ``seq`` positions: the ``(batch, seq, seq)`` attention
    mask that lets each token see only the tokens of its own example, and each token's position within its
    example (from 0), so that a packed example is computed exactly as it would be alone in a row."""
    segment = torch.full((len(rows), seq), -1, dtype=torch.long)
    positions = torch.zeros((len(rows), seq), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for k in range(0, len(row), 2):  # (prompt, response) turns
            size = len(row[k][0]) + len(row[k + 1][0])
            end = min(start + size, seq)
            segment[r, start:end] = k // 2
            positions[r, start:end] = torch.arange(end - start)
            start += size
    mask = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0)
    return mask, positions


def pack(pairs: list[tuple[list[int], list[int]]], pack_length: int) -> list[list[tuple[list[int], bool]]]:
    """(prompt, response) token lists packed into rows of at most ``pack_length`` tokens, first fit
    decreasing (longest example first, each into the first row with room), the responses trainable: each
    row a conversation of (tokens, trainable) turns for :func:`paperlab.align.sft_turns_batch`.
    Deterministic in the order of ``pairs``. An example longer than ``pack_length`` is an error: it would
    be cut."""
    rows: list[list[tuple[list[int], bool]]] = []
    room: list[int] = []
    for prompt, response in sorted(pairs, key=lambda pair: -(len(pair[0]) + len(pair[1]))):
        size = len(prompt) + len(response)
        if size > pack_length:
            raise ValueError(f"an example of {size} tokens does not fit in pack_length={pack_length}")
        row = next((i for i, free in enumerate(room) if free >= size), None)
        if row is None:
            rows.append([])
            room.append(pack_length)
            row = len(rows) - 1
        rows[row] += [(prompt, False), (response, True)]
        room[row] -= size
    return rows


@functools.cache
def _steps(state: tuple[int, ...]) -> tuple:
    """The whole-number steps of ``state`` (:func:`paperlab.bot.tasks.integer_steps`) whose result is in the
    vocabulary, in the same order; memoised (the training draws the same states again and again)."""
    return tuple(s for s in tasks.integer_steps(state) if s[3] <= MAX_NUMBER)


def _search_example(role: str, numbers, rng: random.Random, prompts: TinyPrompts) -> tuple[str, str] | None:
    """A Tree of Thoughts training pair from one puzzle: ``propose`` maps a state (after 0 to 2 random
    whole-number steps) to one of its steps, drawn uniformly; ``value`` maps a state (after 1 to 3 steps,
    half of the time along a solution) to ``sure`` if it can still reach 24 with whole-number steps, else
    ``impossible``. (Exact labels: a stronger teacher than GPT-4's guesses in the Tree of Thoughts paper.)"""
    state = tuple(sorted(numbers))
    along_solution = role == "value" and rng.random() < 0.5
    depth = rng.randint(0, 2) if role == "propose" else rng.randint(1, 3)
    for _ in range(depth):
        steps = list(_steps(state))
        if along_solution:
            steps = [s for s in steps if tasks.solvable_with_integer_steps(s[4])] or steps
        if not steps:
            return None
        state = rng.choice(steps)[4]
    if role == "propose":
        steps = list(_steps(state))
        if not steps:
            return None
        a, op, b, result, left = rng.choice(steps)
        return prompts.example("propose", state=state,
                               target=f"{a} {op} {b} = {result} ( left : {' '.join(map(str, left))} )")
    label = "sure" if tasks.solvable_with_integer_steps(state) else "impossible"
    return prompts.example("value", state=state, target=label)


# --------------------------------------------------------------------------------------------------
# 3. Training
# --------------------------------------------------------------------------------------------------
def make_gpt(size: ModelConfig, vocab_size: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=size.context_length, d_model=size.d_model,
                         n_layers=size.n_layers, n_heads=size.n_heads))


def train_model(data_config: DataConfig, size: ModelConfig, train_config: TrainConfig, seed: int,
                device=None) -> dict:
    """Train one multi-role model from ``seed`` (initial weights and batch order) on batches packed into
    rows of ``size.pack_length`` tokens; its weights (on the CPU) and history. Validation loss: 4 fixed
    batches from the validation problems, one example per row (as the model is asked at inference)."""
    if size.pack_length > size.context_length:
        raise ValueError(f"pack_length ({size.pack_length}) must not exceed context_length "
                         f"({size.context_length})")
    device = auto_device(device)
    data = build_data(data_config)
    tokenizer = make_tokenizer(data_config)
    sampler = ExampleSampler(problems_of(data, "train"), tokenizer, train_config.batch_size,
                             pack_length=size.pack_length)
    validation_sampler = ExampleSampler(problems_of(data, "val"), tokenizer, train_config.batch_size)
    generator = torch.Generator().manual_seed(12345)
    validation = [validation_sampler(generator) for _ in range(4)]
    seed_everything(seed)
    model = make_gpt(size, tokenizer.vocab_size).to(device)

    def eval_fn(m: GPT) -> dict:
        losses = [float(m.loss(x.to(device), y.to(device))) for x, y in validation]
        return {"val_loss": sum(losses) / len(losses)}

    def loss_fn(m: GPT, batch: tuple) -> torch.Tensor:
        idx, targets, mask, positions = batch
        return m.loss(idx, targets, attention_mask=mask, positions=positions)

    result = train(model, seeded_batches(sampler, seed), loss_fn,
                   dataclasses.replace(train_config, seed=seed), eval_fn=eval_fn, device=device,
                   desc=f"BoT model d_model={size.d_model}, seed {seed}")
    return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "history": result.to_dict()}


def load_model(data_config: DataConfig, size: ModelConfig, train_config: TrainConfig, seed: int,
               device=None) -> tuple[llm.TinyLM, TrainResult]:
    """The trained model of ``seed`` behind the :class:`paperlab.llm.LLM` interface (from the cache,
    training it first if needed), and its training history."""
    artifact = cache.cached("bot-model", (data_config, size, train_config),
                            lambda: train_model(data_config, size, train_config, seed, device), seed=seed)
    tokenizer = make_tokenizer(data_config)
    model = make_gpt(size, tokenizer.vocab_size)
    model.load_state_dict(artifact["state_dict"])
    model.to(auto_device(device)).eval()
    # decoded with a key-value cache, without the extra log-probability pass (nothing here reads them)
    return (llm.TinyLM(model, tokenizer, seed=seed, use_cache=True, logprobs=False),
            TrainResult.from_dict(artifact["history"]))
