"""Reproducible synthetic corpora: an unambiguous probabilistic grammar of English-like sentences.

Why a grammar and not real text? Because we know the source exactly. Every sentence's probability is
known, so the entropy of the source, the loss a perfect language model would reach, is known too, and a
chapter can put a trained model's validation loss next to that floor.

The grammar (a PCFG; ``n`` is the number, singular or plural; ``d`` the remaining nesting depth)::

    S        -> NP[n,D] VP[n,D] "."                       n ~ {sg: 1 - p_plural, pl: p_plural}
    NP[n,d]  -> Det[n] Adj^k N[n] Mod[n,d]                k = 0..max_adjectives, each more w.p. p_adjective
    Mod[n,d] -> ε | PP[d-1] | RC[n,d-1]                   (only ε when d = 0)
    PP[d]    -> Prep NP[m,d]                              m ~ {sg, pl}
    RC[n,d]  -> "that" VP[n,d]                            relative clause, verb agrees with the head noun
    VP[n,d]  -> Vi[n] | Vt[n] NP[m,d]                     intransitive | transitive with an object
    Det[sg]  -> "the" | "a"          Det[pl] -> "the" | "some"

Content words are pronounceable strings made from the seed (``kivo``, ``tesamu``...): a noun lemma ``x``
has forms ``x`` (sg) and ``xs`` (pl); a verb lemma ``y`` has ``ys`` (sg) and ``y`` (pl). Within each
category the lemmas have Zipf frequencies ``p(rank r) ∝ (r + 1)^(-zipf_exponent)``. Subject-verb agreement
crosses prepositional phrases and relative clauses (``the kivo near the tesamus sleeps .``).

**Unambiguity.** Every word form belongs to exactly one category (checked when the vocabulary is built),
each noun phrase takes at most one modifier, and verb phrases take none, so a left-to-right parser reading
the token after each noun knows whether a modifier starts (a preposition or ``that``) or the phrase ended.
Hence each string has exactly one derivation and ``log p(sentence) = log p(derivation)``: the sampler
records it exactly (:attr:`Sentence.logprob`). ``tests/test_data.py`` enumerates small grammars and checks
that all strings are distinct and their probabilities sum to 1.

**Entropy per token.** A language model trained on the concatenated sentences predicts each word and the
final "." (the end-of-sentence token). Sentences are independent, so the best achievable mean loss is

    H_token = E[-log p(S)] / E[len(S)]      (nats per token, len counting the ".")

:func:`entropy_per_token` estimates it by Monte Carlo; :meth:`Grammar.exact_entropy_per_token` computes it
exactly by recursion over the (finite) grammar; the two agree within the Monte-Carlo error.
"""

from __future__ import annotations

import bisect
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import torch

from paperlab.config import check_ints, check_numbers, check_that

__all__ = [
    "GrammarConfig",
    "Sentence",
    "Grammar",
    "make_corpus",
    "entropy_per_token",
    "lm_batches",
    "split_train_val",
]

PREPOSITIONS: tuple[str, ...] = ("in", "on", "near", "under", "behind", "beside", "above", "below")
FUNCTION_WORDS: tuple[str, ...] = ("the", "a", "some", "that", ".") + PREPOSITIONS
_CONSONANTS = "bdfgklmnprtvz"
_VOWELS = "aeiou"
NUMBERS = ("sg", "pl")
# How a sentence text splits into words: WordTokenizer's pattern (a test checks that they match).
_WORD_PATTERN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


@dataclass(frozen=True)
class GrammarConfig:
    """Shape of the grammar. ``seed`` fixes the word forms; sampling has its own seed.

    n_nouns, n_intransitive_verbs, n_transitive_verbs, n_adjectives: lemmas per category (>= 1).
    n_prepositions: how many of the built-in prepositions to use (1..8).
    max_depth: nesting depth of modifiers (PP / relative clause); 0 = none.
    max_adjectives: adjectives before a noun, at most.
    p_plural: probability that a noun phrase is plural. p_adjective: probability of each further adjective.
    p_modifier: probability that a noun phrase (below max depth) takes a modifier; p_pp: of which a PP
    (else a relative clause). p_transitive: probability that a verb phrase is transitive.
    zipf_exponent: s in p(rank r) ∝ (r + 1)^(-s) within each category (0 = uniform).
    """

    n_nouns: int = 40
    n_intransitive_verbs: int = 12
    n_transitive_verbs: int = 16
    n_adjectives: int = 16
    n_prepositions: int = 6
    max_depth: int = 2
    max_adjectives: int = 2
    p_plural: float = 0.4
    p_adjective: float = 0.3
    p_modifier: float = 0.3
    p_pp: float = 0.5
    p_transitive: float = 0.5
    zipf_exponent: float = 1.0
    seed: int = 0

    def __post_init__(self):
        check_ints(self, "n_nouns", "n_intransitive_verbs", "n_transitive_verbs", "n_adjectives")
        check_ints(self, "n_prepositions", low=1, high=len(PREPOSITIONS))
        check_ints(self, "max_depth", "max_adjectives", low=0)
        check_ints(self, "seed", low=None)
        check_numbers(self, "p_plural", "p_adjective", "p_modifier", "p_pp", "p_transitive", low=0, high=1)
        check_numbers(self, "zipf_exponent", low=0)
        n_lemmas = self.n_nouns + self.n_intransitive_verbs + self.n_transitive_verbs + self.n_adjectives
        check_that(self, n_lemmas <= 100_000, "n_nouns",
                   f"small enough for at most 100000 content words in all (asked for {n_lemmas})")


@dataclass(frozen=True)
class Sentence:
    """One sampled sentence: ``words`` ends with "."; ``logprob`` = log p(sentence) in nats."""

    words: tuple[str, ...]
    logprob: float

    @property
    def text(self) -> str:
        """``"the kivo sleeps."``: words joined by spaces, the final "." attached (WordTokenizer-friendly)."""
        return " ".join(self.words[:-1]) + self.words[-1]

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class _Rule:
    """The alternatives of one nonterminal: right-hand sides and their probabilities."""

    rhs: list[tuple[str, ...]]
    probs: list[float]
    cumulative: list[float] = field(init=False)
    logprobs: list[float] = field(init=False)

    def __post_init__(self):
        keep = [(r, p) for r, p in zip(self.rhs, self.probs) if p > 0]  # zero-probability rules never fire
        self.rhs, self.probs = [r for r, _ in keep], [p for _, p in keep]
        total = sum(self.probs)
        assert abs(total - 1.0) < 1e-9, (self.rhs, total)
        self.probs = [p / total for p in self.probs]
        self.cumulative = list(_accumulate(self.probs))
        self.logprobs = [math.log(p) for p in self.probs]


def _accumulate(values):
    total = 0.0
    for v in values:
        total += v
        yield total


def _add_derivation(ends: dict[int, float], end: int, logprob: float) -> None:
    """Record a derivation ending at ``end``; two derivations of one span (never, in an unambiguous grammar)
    would add their probabilities, as the probability of a string sums over its derivations."""
    if end in ends:
        high, low = max(ends[end], logprob), min(ends[end], logprob)
        ends[end] = high + math.log1p(math.exp(low - high))
    else:
        ends[end] = logprob


def _zipf(n: int, exponent: float) -> list[float]:
    weights = [(r + 1) ** -exponent for r in range(n)]
    total = sum(weights)
    return [w / total for w in weights]


class Grammar:
    """The PCFG described in the module docstring, built from a :class:`GrammarConfig`.

    Nonterminals start with a capital letter (``NP[sg,2]``); terminals are the words.
    Attributes: ``config``; ``categories`` (category name -> word forms, most frequent first);
    ``vocabulary`` (all words, "that" and "." included, sorted); ``rules`` (nonterminal -> :class:`_Rule`).
    """

    def __init__(self, config: GrammarConfig | None = None):
        self.config = config = config if config is not None else GrammarConfig()
        self.categories = self._make_words(config)
        self.vocabulary: list[str] = sorted(
            {w for words in self.categories.values() for w in words} | {"that", "."}
        )
        self.rules: dict[str, _Rule] = self._make_rules(config)
        self._entropy_cache: dict[str, float] = {}
        self._length_cache: dict[str, float] = {}

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _make_words(config: GrammarConfig) -> dict[str, list[str]]:
        """Distinct pronounceable lemmas from ``config.seed``; every form is unique across categories."""
        rng = random.Random(f"paperlab-grammar-words-{config.seed}")
        used = set(FUNCTION_WORDS)

        def new_lemma(forms):
            while True:  # stems end in a vowel, so adding "s" never yields another stem
                stem = "".join(
                    rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 2, 3)))
                )
                if not any(f(stem) in used for f in forms):
                    used.update(f(stem) for f in forms)
                    return stem

        plural_s = lambda s: s + "s"
        identity = lambda s: s
        nouns = [new_lemma((identity, plural_s)) for _ in range(config.n_nouns)]
        intransitive = [new_lemma((identity, plural_s)) for _ in range(config.n_intransitive_verbs)]
        transitive = [new_lemma((identity, plural_s)) for _ in range(config.n_transitive_verbs)]
        adjectives = [new_lemma((identity,)) for _ in range(config.n_adjectives)]
        categories = {
            "Det[sg]": ["the", "a"],
            "Det[pl]": ["the", "some"],
            "N[sg]": nouns,
            "N[pl]": [n + "s" for n in nouns],
            "Vi[sg]": [v + "s" for v in intransitive],
            "Vi[pl]": intransitive,
            "Vt[sg]": [v + "s" for v in transitive],
            "Vt[pl]": transitive,
            "Adj": adjectives,
            "Prep": list(PREPOSITIONS[: config.n_prepositions]),
        }
        # Unambiguity requirement: no word in two categories (the determiner "the" is shared by sg and pl,
        # which is harmless because the noun's form decides the number).
        owner: dict[str, str] = {}
        for category, words in categories.items():
            for w in words:
                base = category.split("[")[0]
                if owner.setdefault(w, base) != base:
                    raise AssertionError(f"word {w!r} is in both {owner[w]} and {base}")
        return categories

    def _make_rules(self, config: GrammarConfig) -> dict[str, _Rule]:
        c = config
        rules: dict[str, _Rule] = {}
        number_probs = {"sg": 1 - c.p_plural, "pl": c.p_plural}
        D = c.max_depth
        rules["S"] = _Rule(
            [(f"NP[{n},{D}]", f"VP[{n},{D}]", ".") for n in NUMBERS], list(number_probs.values())
        )
        for k in range(c.max_adjectives + 1):  # Adjs[k]: at most k more adjectives
            if k == 0:
                rules["Adjs[0]"] = _Rule([()], [1.0])
            else:
                rules[f"Adjs[{k}]"] = _Rule(
                    [(), ("Adj", f"Adjs[{k - 1}]")], [1 - c.p_adjective, c.p_adjective]
                )
        for d in range(D + 1):
            for n in NUMBERS:
                rules[f"NP[{n},{d}]"] = _Rule(
                    [(f"Det[{n}]", f"Adjs[{c.max_adjectives}]", f"N[{n}]", f"Mod[{n},{d}]")], [1.0]
                )
                if d == 0:
                    rules[f"Mod[{n},0]"] = _Rule([()], [1.0])
                else:
                    rules[f"Mod[{n},{d}]"] = _Rule(
                        [(), (f"PP[{d - 1}]",), (f"RC[{n},{d - 1}]",)],
                        [1 - c.p_modifier, c.p_modifier * c.p_pp, c.p_modifier * (1 - c.p_pp)],
                    )
                rules[f"RC[{n},{d}]"] = _Rule([("that", f"VP[{n},{d}]")], [1.0])
                rules[f"VP[{n},{d}]"] = _Rule(
                    [(f"Vi[{n}]",)] + [(f"Vt[{n}]", f"NP[{m},{d}]") for m in NUMBERS],
                    [1 - c.p_transitive] + [c.p_transitive * number_probs[m] for m in NUMBERS],
                )
            rules[f"PP[{d}]"] = _Rule(
                [("Prep", f"NP[{m},{d}]") for m in NUMBERS], list(number_probs.values())
            )
        # Word categories: determiners fixed, prepositions uniform, content words Zipf by rank.
        rules["Det[sg]"] = _Rule([("the",), ("a",)], [0.6, 0.4])
        rules["Det[pl]"] = _Rule([("the",), ("some",)], [0.6, 0.4])
        prepositions = self.categories["Prep"]
        rules["Prep"] = _Rule([(w,) for w in prepositions], [1 / len(prepositions)] * len(prepositions))
        for category, words in self.categories.items():
            if category not in rules:
                rules[category] = _Rule([(w,) for w in words], _zipf(len(words), c.zipf_exponent))
        return rules

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, seed: int = 0) -> list[Sentence]:
        """``n`` independent sentences, reproducible from ``seed``, each with its exact log-probability."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        rng = random.Random(f"paperlab-grammar-sample-{seed}")
        out = []
        for _ in range(n):
            words: list[str] = []
            logprob = self._expand("S", rng, words)
            out.append(Sentence(tuple(words), logprob))
        return out

    def _expand(self, symbol: str, rng: random.Random, words: list[str]) -> float:
        rule = self.rules.get(symbol)
        if rule is None:  # a terminal
            words.append(symbol)
            return 0.0
        i = min(bisect.bisect_right(rule.cumulative, rng.random() * rule.cumulative[-1]), len(rule.rhs) - 1)
        logprob = rule.logprobs[i]
        for child in rule.rhs[i]:
            logprob += self._expand(child, rng, words)
        return logprob

    # ------------------------------------------------------------------ parsing
    def logprob_of_text(self, text: str) -> float:
        """Exact ``log p(sentence)`` in nats of a sentence text like ``"the kivo near the tesamus sleeps."``.

        The text is split into words and punctuation the way :class:`~paperlab.tokenizers.WordTokenizer`
        splits it (case-sensitive), then parsed by :meth:`logprob`. Returns ``float("-inf")`` for any string
        outside the grammar's language (unknown word, broken agreement, missing ".", trailing words, nesting
        deeper than ``max_depth``, too many adjectives, the empty string...); raises ValueError only when
        ``text`` is not a string. For a sampled sentence ``s``: ``logprob_of_text(s.text) == s.logprob``.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {type(text).__name__}")
        return self.logprob(_WORD_PATTERN.findall(text))

    def logprob(self, words: Sequence[str]) -> float:
        """Exact ``log p(sentence)`` in nats of a word sequence ending with "." (``Sentence.words``).

        ``float("-inf")`` when the words are not a sentence of the grammar; ValueError when ``words`` is a
        string (use :meth:`logprob_of_text`) or not a sequence of strings.

        Recursive descent over :attr:`rules`, with the same rule log-probabilities the sampler adds up: each
        nonterminal at a position tries its alternatives and returns every position where a derivation of it
        can end, with that derivation's log-probability (memoized per ``(symbol, position)``, so each
        sub-parse runs once). Alternatives that share a prefix (``Vt NP[sg]`` / ``Vt NP[pl]`` start with the
        same determiner) are told apart a few words later, at the noun. The grammar being unambiguous, at
        most one derivation covers the whole sentence, and its log-probability is the sentence's.
        """
        if isinstance(words, str) or not isinstance(words, Sequence):
            kind = type(words).__name__
            raise ValueError(f"words must be a sequence of strings (text: logprob_of_text), got {kind}")
        words = tuple(words)
        if not all(isinstance(w, str) for w in words):
            raise ValueError("words must be a sequence of strings")
        n_words = len(words)
        memo: dict[tuple[str, int], dict[int, float]] = {}

        def parse(symbol: str, start: int) -> dict[int, float]:
            """End position -> log-probability of the derivations of ``symbol`` from ``words[start:]``."""
            key = (symbol, start)
            if key in memo:
                return memo[key]
            rule = self.rules.get(symbol)
            ends: dict[int, float] = {}
            if rule is None:  # a terminal
                if start < n_words and words[start] == symbol:
                    ends[start + 1] = 0.0
            else:
                for rhs, rule_logprob in zip(rule.rhs, rule.logprobs):
                    partial = {start: rule_logprob}  # same summation order as _expand: rule, then children
                    for child in rhs:
                        extended: dict[int, float] = {}
                        for position, logprob in partial.items():
                            for end, child_logprob in parse(child, position).items():
                                _add_derivation(extended, end, logprob + child_logprob)
                        partial = extended
                        if not partial:
                            break
                    for end, logprob in partial.items():
                        _add_derivation(ends, end, logprob)
            memo[key] = ends
            return ends

        return parse("S", 0).get(n_words, float("-inf"))

    # ------------------------------------------------------------------ exact quantities
    def count_sentences(self) -> int:
        """Number of derivations (= distinct sentences, the grammar being unambiguous)."""

        @cache
        def count(symbol: str) -> int:
            rule = self.rules.get(symbol)
            if rule is None:
                return 1
            return sum(math.prod(count(child) for child in rhs) for rhs in rule.rhs)

        return count("S")

    def enumerate(self, max_sentences: int = 1_000_000) -> list[Sentence]:
        """Every sentence with its probability; only for tiny grammars (ValueError past ``max_sentences``)."""
        total = self.count_sentences()
        if total > max_sentences:
            raise ValueError(f"the grammar has {total} sentences, more than max_sentences = {max_sentences}")

        @cache
        def expansions(symbol: str) -> tuple[tuple[tuple[str, ...], float], ...]:
            rule = self.rules.get(symbol)
            if rule is None:
                return (((symbol,), 0.0),)
            out = []
            for rhs, lp in zip(rule.rhs, rule.logprobs):
                partial = [((), lp)]
                for child in rhs:
                    partial = [(w + cw, p + cp) for w, p in partial for cw, cp in expansions(child)]
                out.extend(partial)
            return tuple(out)

        return [Sentence(words, lp) for words, lp in expansions("S")]

    def exact_entropy_per_token(self) -> float:
        """``H(S) / E[len(S)]`` in nats per token, computed exactly.

        Derivation entropy by recursion: ``H(A) = sum_r p_r (-log p_r + sum_{B in r} H(B))`` and expected
        length ``L(A) = sum_r p_r sum_{x in r} L(x)`` with ``L(word) = 1``. Unambiguity makes the entropy
        of the derivation the entropy of the sentence.
        """
        return self._entropy("S") / self._length("S")

    def expected_length(self) -> float:
        """``E[len(S)]``: mean tokens per sentence, the final "." included."""
        return self._length("S")

    def _entropy(self, symbol: str) -> float:
        if symbol not in self.rules:
            return 0.0
        if symbol not in self._entropy_cache:
            rule = self.rules[symbol]
            self._entropy_cache[symbol] = sum(
                p * (-lp + sum(self._entropy(child) for child in rhs))
                for rhs, p, lp in zip(rule.rhs, rule.probs, rule.logprobs)
            )
        return self._entropy_cache[symbol]

    def _length(self, symbol: str) -> float:
        if symbol not in self.rules:
            return 1.0
        if symbol not in self._length_cache:
            rule = self.rules[symbol]
            self._length_cache[symbol] = sum(
                p * sum(self._length(child) for child in rhs) for rhs, p in zip(rule.rhs, rule.probs)
            )
        return self._length_cache[symbol]

    def __repr__(self) -> str:
        return f"Grammar({self.config})"


# ----------------------------------------------------------------------------------------------------------
# Corpora and the entropy floor
# ----------------------------------------------------------------------------------------------------------
def make_corpus(config: GrammarConfig | None, n_sentences: int, seed: int = 0) -> list[str]:
    """``n_sentences`` sentence texts (``"the kivo sleeps."``) from the grammar of ``config``.

    Same ``(config, seed)`` -> the same corpus on every machine (Python's ``random`` is platform-stable).
    """
    return [s.text for s in Grammar(config).sample(n_sentences, seed)]


def entropy_per_token(
    grammar: Grammar | GrammarConfig | None = None, *, n_samples: int = 20_000, seed: int = 12345
) -> float:
    """Monte-Carlo estimate of the source entropy in nats per token, the floor of a language model's loss.

    ``H_token ≈ sum_i -log p(s_i) / sum_i len(s_i)`` over ``n_samples`` sampled sentences ``s_i``, where
    ``len`` counts the final "." (the end-of-sentence token). This is a ratio of averages, because a model's
    mean loss over a corpus of concatenated sentences averages over tokens, not over sentences. Its relative
    standard error is about ``std(-log p(s) - H_token len(s)) / (mean(len) sqrt(n_samples))``, ~1% at the
    default size; :meth:`Grammar.exact_entropy_per_token` gives the exact value.

    The bound assumes the model sees sentence boundaries ("."); a model whose context window starts in the
    middle of a sentence does slightly worse on the first tokens, so it cannot reach the bound exactly.
    """
    if grammar is None or isinstance(grammar, GrammarConfig):
        grammar = Grammar(grammar)
    if not isinstance(grammar, Grammar):
        raise ValueError(f"grammar must be a Grammar or a GrammarConfig, got {type(grammar).__name__}")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    sentences = grammar.sample(n_samples, seed)
    return -sum(s.logprob for s in sentences) / sum(len(s) for s in sentences)


# ----------------------------------------------------------------------------------------------------------
# Batches for next-token training
# ----------------------------------------------------------------------------------------------------------
def lm_batches(
    token_ids: torch.Tensor,
    batch_size: int,
    context_length: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random contiguous windows of a token stream for next-token prediction.

    token_ids: 1-D integer tensor of length N >= context_length + 1 (on any device).
    Returns ``x, y`` of shape (batch_size, context_length) with ``x[b] = token_ids[s_b : s_b + T]`` and
    ``y[b] = token_ids[s_b + 1 : s_b + T + 1]`` (y is x shifted by one), starts ``s_b`` uniform in
    ``[0, N - T - 1]``, drawn with ``generator`` (a CPU generator, or one on token_ids' device).
    """
    if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1:
        raise ValueError("token_ids must be a 1-D tensor of token ids")
    if token_ids.dtype.is_floating_point or token_ids.dtype == torch.bool:
        raise ValueError(f"token_ids must hold integers, got dtype {token_ids.dtype}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(context_length, int) or context_length < 1:
        raise ValueError(f"context_length must be a positive integer, got {context_length!r}")
    n = token_ids.numel()
    if n < context_length + 1:
        raise ValueError(f"token_ids has {n} tokens; need at least context_length + 1 = {context_length + 1}")
    device = generator.device if generator is not None else token_ids.device
    starts = torch.randint(0, n - context_length, (batch_size,), generator=generator, device=device)
    index = starts.to(token_ids.device)[:, None] + torch.arange(context_length + 1, device=token_ids.device)
    windows = token_ids[index]  # (batch, T + 1)
    return windows[:, :-1], windows[:, 1:]


def split_train_val(items, val_fraction: float = 0.1, *, seed: int = 0, shuffle: bool = True):
    """Split a list (or tensor) into ``(train, val)`` with ``round(len * val_fraction)`` items in val.

    ``shuffle=True`` (for a list of sentences) permutes the items first with ``seed``; use ``shuffle=False``
    for a token stream, which keeps its order and puts the last ``val_fraction`` in val. Lists give lists,
    tensors give tensors; the two parts never overlap and together hold every item.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not isinstance(items, (Sequence, torch.Tensor)) or isinstance(items, str):
        raise ValueError(f"items must be a list or a tensor, got {type(items).__name__}")
    n = len(items)
    n_val = round(n * val_fraction)
    if n_val == 0 or n_val == n:
        raise ValueError(f"items ({n}) is too short to split with val_fraction = {val_fraction}")
    order = list(range(n))
    if shuffle:
        random.Random(f"paperlab-split-{seed}").shuffle(order)
    train_idx, val_idx = order[: n - n_val], order[n - n_val :]
    if isinstance(items, torch.Tensor):
        if not shuffle:
            return items[: n - n_val], items[n - n_val :]
        return items[torch.tensor(train_idx, device=items.device)], items[
            torch.tensor(val_idx, device=items.device)
        ]
    return [items[i] for i in train_idx], [items[i] for i in val_idx]
