"""Tests for paperlab.data: the unambiguous grammar, its entropy, and LM batches."""

from __future__ import annotations

import math

import pytest
import torch

from paperlab import data
from paperlab.data import (
    FUNCTION_WORDS,
    Grammar,
    GrammarConfig,
    entropy_per_token,
    lm_batches,
    make_corpus,
    split_train_val,
)
from paperlab.tokenizers import WordTokenizer

SMALL = GrammarConfig(n_nouns=8, n_intransitive_verbs=4, n_transitive_verbs=4, n_adjectives=5, max_depth=2)
TINY_DEEP = GrammarConfig(  # depth 2, one word per category, no adjectives: 107,912 sentences
    n_nouns=1,
    n_intransitive_verbs=1,
    n_transitive_verbs=1,
    n_adjectives=1,
    n_prepositions=1,
    max_depth=2,
    max_adjectives=0,
)
TINY_WIDE = GrammarConfig(  # depth 1 with adjectives and two prepositions: 41,760 sentences
    n_nouns=1,
    n_intransitive_verbs=1,
    n_transitive_verbs=1,
    n_adjectives=1,
    n_prepositions=2,
    max_depth=1,
    max_adjectives=1,
    zipf_exponent=1.5,
    p_plural=0.3,
)


@pytest.mark.parametrize("config", [TINY_DEEP, TINY_WIDE], ids=["deep", "wide"])
def test_tiny_grammar_is_unambiguous_and_proper(config):
    grammar = Grammar(config)
    sentences = grammar.enumerate()
    assert len(sentences) == grammar.count_sentences()
    # Unambiguous: distinct derivations give distinct strings ...
    by_words = {s.words: s.logprob for s in sentences}
    assert len(by_words) == len(sentences)
    # ... and the derivation probabilities sum to one, so p(string) = p(derivation) is a distribution.
    assert math.fsum(math.exp(s.logprob) for s in sentences) == pytest.approx(1.0, abs=1e-9)
    # The sampler's recorded log-probability is the string's probability.
    for s in grammar.sample(300, seed=1):
        assert s.logprob == pytest.approx(by_words[s.words], abs=1e-9)
    # The exact entropy from the recursion equals the entropy of the enumerated distribution.
    entropy = -math.fsum(math.exp(s.logprob) * s.logprob for s in sentences)
    length = math.fsum(math.exp(s.logprob) * len(s) for s in sentences)
    assert grammar.exact_entropy_per_token() == pytest.approx(entropy / length, rel=1e-9)
    assert grammar.expected_length() == pytest.approx(length, rel=1e-9)


def test_monte_carlo_entropy_matches_exact():
    grammar = Grammar(SMALL)
    estimate = entropy_per_token(grammar, n_samples=5000, seed=3)
    assert estimate == pytest.approx(grammar.exact_entropy_per_token(), rel=0.03)
    assert entropy_per_token(SMALL, n_samples=100, seed=3) == entropy_per_token(
        grammar, n_samples=100, seed=3
    )


def test_words_belong_to_one_category_and_tokenize_cleanly():
    grammar = Grammar(SMALL)
    owner = {}
    for category, words in grammar.categories.items():
        for w in words:
            assert owner.setdefault(w, category.split("[")[0]) == category.split("[")[0]
    sentences = grammar.sample(200, seed=0)
    tok = WordTokenizer.fit(s.text for s in sentences)
    for s in sentences:
        assert s.words[-1] == "." and "." not in s.words[:-1]
        assert tok._split(s.text) == list(s.words)
        assert tok.decode(tok.encode(s.text)) == s.text
        assert set(s.words) <= set(grammar.vocabulary)


def test_subject_verb_agreement_without_modifiers():
    grammar = Grammar(GrammarConfig(max_depth=0, seed=5))
    singular_nouns, plural_nouns = set(grammar.categories["N[sg]"]), set(grammar.categories["N[pl]"])
    singular_verbs = set(grammar.categories["Vi[sg]"] + grammar.categories["Vt[sg]"])
    plural_verbs = set(grammar.categories["Vi[pl]"] + grammar.categories["Vt[pl]"])
    numbers = set()
    for s in grammar.sample(300, seed=2):
        noun = next(w for w in s.words if w in singular_nouns | plural_nouns)
        verb = next(w for w in s.words if w in singular_verbs | plural_verbs)
        numbers.add(noun in singular_nouns)
        assert (noun in singular_nouns) == (verb in singular_verbs)
    assert numbers == {True, False}


# ---------------------------------------------------------------------------------- parsing: log p(sentence)
TINY_PARSE = [  # fully enumerable and quick to parse: PPs and relative clauses / adjectives and Zipf ranks
    GrammarConfig(
        n_nouns=1,
        n_intransitive_verbs=1,
        n_transitive_verbs=1,
        n_adjectives=1,
        n_prepositions=1,
        max_depth=1,
        max_adjectives=0,
    ),
    GrammarConfig(
        n_nouns=2,
        n_intransitive_verbs=2,
        n_transitive_verbs=1,
        n_adjectives=2,
        max_depth=0,
        max_adjectives=2,
        p_plural=0.3,
        zipf_exponent=1.5,
    ),
]


def test_logprob_of_sampled_sentences():
    assert data._WORD_PATTERN.pattern == WordTokenizer.PATTERN.pattern  # splits text as the tokenizer does
    deep = GrammarConfig(max_depth=3, p_modifier=0.5, max_adjectives=3, p_adjective=0.5, seed=2)
    for config in (SMALL, deep):
        grammar = Grammar(config)
        for s in grammar.sample(200, seed=4):
            assert grammar.logprob_of_text(s.text) == pytest.approx(s.logprob, abs=1e-9)
            assert grammar.logprob(s.words) == pytest.approx(s.logprob, abs=1e-9)
            assert grammar.logprob(list(s.words)) == pytest.approx(s.logprob, abs=1e-9)
            spaced = " ".join(s.words)  # "the kivo sleeps ." tokenizes the same way
            assert grammar.logprob_of_text(spaced) == pytest.approx(s.logprob, abs=1e-9)


@pytest.mark.parametrize("config", TINY_PARSE, ids=["nested", "adjectives"])
def test_logprob_of_every_sentence_of_a_tiny_grammar(config):
    grammar = Grammar(config)
    sentences = grammar.enumerate()
    assert len(sentences) < 5000  # keeps the test quick
    logprobs = [grammar.logprob_of_text(s.text) for s in sentences]
    for s, logprob in zip(sentences, logprobs):
        assert logprob == pytest.approx(s.logprob, abs=1e-9)
    assert math.fsum(math.exp(lp) for lp in logprobs) == pytest.approx(1.0, abs=1e-9)


def test_logprob_by_hand():
    config = GrammarConfig(seed=3)
    grammar = Grammar(config)
    cat = grammar.categories
    noun, verb = cat["N[sg]"][0], cat["Vi[sg]"][0]
    zipf_nouns = 1 / sum((r + 1) ** -1.0 for r in range(config.n_nouns))
    zipf_verbs = 1 / sum((r + 1) ** -1.0 for r in range(config.n_intransitive_verbs))
    expected = math.log(  # S -> NP[sg] VP[sg] "."; Det "the"; no adjective; N rank 0; no modifier; Vi rank 0
        (1 - config.p_plural)
        * 0.6
        * (1 - config.p_adjective)
        * zipf_nouns
        * (1 - config.p_modifier)
        * (1 - config.p_transitive)
        * zipf_verbs
    )
    assert grammar.logprob_of_text(f"the {noun} {verb}.") == pytest.approx(expected, abs=1e-12)


def test_logprob_is_minus_infinity_outside_the_language():
    grammar = Grammar(SMALL)
    cat = grammar.categories
    other_number = {}
    for kind in ("Vi", "Vt"):
        for sg, pl in zip(cat[f"{kind}[sg]"], cat[f"{kind}[pl]"]):
            other_number[sg], other_number[pl] = pl, sg
    noun = cat["N[sg]"][0]
    assert "blorp" not in grammar.vocabulary
    n_swaps = 0
    for s in grammar.sample(150, seed=5):
        words, text = list(s.words), s.text
        assert grammar.logprob_of_text(text) > -math.inf
        for i, w in enumerate(words):  # agreement: any one verb in the other number
            if w in other_number:
                swapped = words[:i] + [other_number[w]] + words[i + 1 :]
                assert grammar.logprob(swapped) == -math.inf, swapped
                n_swaps += 1
        assert grammar.logprob_of_text(text[:-1]) == -math.inf  # no final "."
        assert grammar.logprob(words[:-1]) == -math.inf
        assert grammar.logprob_of_text(f"{text[:-1]} {noun}.") == -math.inf  # a word too many
        assert grammar.logprob_of_text(f"{text} the") == -math.inf  # words after the "."
        assert grammar.logprob_of_text(f"{text} {text}") == -math.inf  # two sentences
        assert grammar.logprob(words + ["."]) == -math.inf
        assert grammar.logprob(["blorp"] + words[1:]) == -math.inf  # unknown word
        assert grammar.logprob(words[:1] + ["blorp"] + words[2:]) == -math.inf
        assert grammar.logprob_of_text(text[0].upper() + text[1:]) == -math.inf  # case-sensitive
    assert n_swaps > 150
    for text in ("", " ", ".", "the", "the .", f"the {noun}.", "blorp."):
        assert grammar.logprob_of_text(text) == -math.inf, text
    assert grammar.logprob([]) == -math.inf

    # Nesting deeper than max_depth, more adjectives than max_adjectives.
    vi, prep, adjs = cat["Vi[sg]"][0], cat["Prep"][0], cat["Adj"]
    nested = f"the {noun} {prep} the {noun} {vi}."
    assert Grammar(GrammarConfig(**{**SMALL.__dict__, "max_depth": 1})).logprob_of_text(nested) > -math.inf
    assert Grammar(GrammarConfig(**{**SMALL.__dict__, "max_depth": 0})).logprob_of_text(nested) == -math.inf
    relative = f"the {noun} that {vi} {vi}."
    assert grammar.logprob_of_text(relative) > -math.inf
    assert grammar.logprob_of_text(f"the {noun} that {other_number[vi]} {vi}.") == -math.inf
    assert SMALL.max_adjectives == 2
    assert grammar.logprob_of_text(f"a {adjs[0]} {adjs[1]} {noun} {vi}.") > -math.inf
    assert grammar.logprob_of_text(f"a {adjs[0]} {adjs[1]} {adjs[2]} {noun} {vi}.") == -math.inf
    assert grammar.logprob_of_text(f"some {noun} {vi}.") == -math.inf  # "some" is plural only
    # A zero-probability rule is outside the language too.
    no_modifiers = Grammar(GrammarConfig(**{**SMALL.__dict__, "p_modifier": 0.0}))
    assert no_modifiers.logprob_of_text(nested) == -math.inf


def test_logprob_rejects_non_strings():
    grammar = Grammar(SMALL)
    for bad in (None, 3, b"the kivo sleeps.", ["the", "."]):
        with pytest.raises(ValueError, match="text"):
            grammar.logprob_of_text(bad)
    for bad in ("the kivo sleeps.", None, 3, ["the", 3, "."]):
        with pytest.raises(ValueError, match="words"):
            grammar.logprob(bad)


def test_zipf_frequencies():
    grammar = Grammar(GrammarConfig(zipf_exponent=1.0, max_depth=0))
    nouns = grammar.categories["N[sg]"] + grammar.categories["N[pl]"]
    counts = {w: 0 for w in nouns}
    for s in grammar.sample(3000, seed=0):
        for w in s.words:
            if w in counts:
                counts[w] += 1
    lemma_counts = [
        counts[a] + counts[b] for a, b in zip(grammar.categories["N[sg]"], grammar.categories["N[pl]"])
    ]
    assert lemma_counts[0] > 1.5 * lemma_counts[1] > 0  # rank 1 vs rank 2: ratio 2 in expectation
    assert lemma_counts[0] > 5 * lemma_counts[-1]


def test_reproducibility():
    assert make_corpus(SMALL, 50, seed=1) == make_corpus(SMALL, 50, seed=1)
    assert make_corpus(SMALL, 50, seed=1) != make_corpus(SMALL, 50, seed=2)
    other_words = GrammarConfig(**{**SMALL.__dict__, "seed": 1})
    assert Grammar(other_words).vocabulary != Grammar(SMALL).vocabulary
    assert Grammar(SMALL).vocabulary == Grammar(SMALL).vocabulary
    assert not set(FUNCTION_WORDS) & set(Grammar(SMALL).categories["N[sg]"])


def test_grammar_config_validation():
    with pytest.raises(ValueError, match="n_nouns"):
        GrammarConfig(n_nouns=0)
    with pytest.raises(ValueError, match="p_modifier"):
        GrammarConfig(p_modifier=1.5)
    with pytest.raises(ValueError, match="n_prepositions"):
        GrammarConfig(n_prepositions=9)
    with pytest.raises(ValueError, match="max_depth"):
        GrammarConfig(max_depth=-1)
    with pytest.raises(ValueError, match="max_sentences"):
        Grammar(SMALL).enumerate(max_sentences=1000)
    with pytest.raises(ValueError, match="n"):
        Grammar(SMALL).sample(-1)


def test_lm_batches():
    stream = torch.arange(100)
    x, y = lm_batches(stream, 8, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 10)
    torch.testing.assert_close(y, x + 1)  # shifted by one
    torch.testing.assert_close(x[:, 1:], x[:, :-1] + 1)  # contiguous
    assert x.min() >= 0 and y.max() <= 99
    x2, _ = lm_batches(stream, 8, 10, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, x2)
    # Every start, including the last possible one, is reachable.
    x_all, _ = lm_batches(torch.arange(4), 200, 3, torch.Generator().manual_seed(0))
    assert set(x_all[:, 0].tolist()) == {0}
    x_all, _ = lm_batches(torch.arange(5), 200, 3, torch.Generator().manual_seed(0))
    assert set(x_all[:, 0].tolist()) == {0, 1}
    with pytest.raises(ValueError, match="context_length"):
        lm_batches(torch.arange(10), 2, 10)
    with pytest.raises(ValueError, match="token_ids"):
        lm_batches(torch.zeros(2, 20, dtype=torch.long), 2, 5)
    with pytest.raises(ValueError, match="batch_size"):
        lm_batches(stream, 0, 5)


def test_split_train_val():
    items = list(range(100))
    train, val = split_train_val(items, 0.2, seed=0)
    assert len(val) == 20 and sorted(train + val) == items
    assert split_train_val(items, 0.2, seed=0) == (train, val)
    assert split_train_val(items, 0.2, seed=1) != (train, val)
    stream = torch.arange(50)
    train_t, val_t = split_train_val(stream, 0.1, shuffle=False)
    torch.testing.assert_close(torch.cat([train_t, val_t]), stream)
    assert len(val_t) == 5
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(items, 1.0)
    with pytest.raises(ValueError, match="too short"):
        split_train_val([1, 2], 0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lm_batches_cuda():
    stream = torch.arange(100, device="cuda")
    for generator in (torch.Generator().manual_seed(0), torch.Generator(device="cuda").manual_seed(0), None):
        x, y = lm_batches(stream, 4, 10, generator)
        assert x.device.type == "cuda"
        torch.testing.assert_close(y, x + 1)
