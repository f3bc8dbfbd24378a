"""Tests for paperlab.tokenizers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab.tokenizers import SPECIAL_TOKENS, CharTokenizer, Tokenizer, WordTokenizer

TEXTS = ["the cat sat on the mat.", "the dogs (two of them) ran, then sat!", "don't stop"]


def test_special_ids():
    tok = CharTokenizer.fit(TEXTS)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.tokens[:4] == list(SPECIAL_TOKENS)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=20), min_size=1, max_size=4))
def test_char_round_trip(texts):
    tok = CharTokenizer.fit(texts)
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode(tok.encode(text, add_bos=True, add_eos=True)) == text


def test_char_bos_eos_unknown_and_tensor_input():
    tok = CharTokenizer.fit(["abc"])
    ids = tok.encode("abz", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and ids[3] == tok.unk_id
    assert tok.decode(ids) == "ab<unk>"
    assert tok.decode(ids, skip_special=False) == "<bos>ab<unk><eos>"
    assert tok.decode(torch.tensor(ids)) == "ab<unk>"
    assert tok.vocab_size == 4 + 3 == len(tok)


def test_word_split_and_round_trip():
    tok = WordTokenizer.fit(TEXTS)
    assert tok._split("don't stop, (now).") == ["don't", "stop", ",", "(", "now", ")", "."]
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text


def test_word_vocab_is_frequency_sorted_and_deterministic():
    tok = WordTokenizer.fit(["b a a c", "c b a"])
    assert tok.tokens[4:] == ["a", "b", "c"]  # a:3, then b:2 and c:2 tied -> alphabetical
    assert WordTokenizer.fit(["c b a", "b a a c"]).tokens == tok.tokens
    capped = WordTokenizer.fit(["b a a c", "c b a"], max_vocab=5)
    assert capped.tokens == list(SPECIAL_TOKENS) + ["a"]
    assert capped.encode("a b") == [4, capped.unk_id]
    frequent = WordTokenizer.fit(["b a a c", "c b a"], min_freq=3)
    assert frequent.tokens[4:] == ["a"]


def test_word_unknown_and_lowercase():
    tok = WordTokenizer.fit(["The cat"], lowercase=True)
    assert tok.decode(tok.encode("the CAT dog")) == "the cat <unk>"


@pytest.mark.parametrize(
    "make", [lambda: CharTokenizer.fit(TEXTS), lambda: WordTokenizer.fit(TEXTS, lowercase=True)]
)
def test_save_load_round_trip(tmp_path, make):
    tok = make()
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert type(loaded) is type(tok) and loaded.tokens == tok.tokens
    assert type(tok).load(path).tokens == tok.tokens
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text)
    if isinstance(tok, WordTokenizer):
        assert loaded.lowercase


def test_load_checks_kind(tmp_path):
    path = tmp_path / "tok.json"
    CharTokenizer.fit(TEXTS).save(path)
    with pytest.raises(ValueError, match="CharTokenizer"):
        WordTokenizer.load(path)
    path.write_text('{"kind": "bpe", "tokens": []}')
    with pytest.raises(ValueError, match="kind"):
        Tokenizer.load(path)


def test_validation():
    with pytest.raises(ValueError, match="texts"):
        CharTokenizer.fit("abc")
    with pytest.raises(ValueError, match="max_vocab"):
        WordTokenizer.fit(TEXTS, max_vocab=2)
    with pytest.raises(ValueError, match="min_freq"):
        WordTokenizer.fit(TEXTS, min_freq=0)
    tok = CharTokenizer.fit(["ab"])
    with pytest.raises(ValueError, match="ids"):
        tok.decode([99])
    with pytest.raises(ValueError, match="text"):
        tok.encode(["a"])
    with pytest.raises(ValueError, match="special"):
        CharTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer(list(SPECIAL_TOKENS) + ["a", "a"])
