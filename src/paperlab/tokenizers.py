"""Small, deterministic tokenizers: characters and words.

Every tokenizer maps text to a list of integer ids and back. The first four ids are special tokens::

    <pad> = 0, <bos> = 1, <eos> = 2, <unk> = 3

(attributes ``pad_id``, ``bos_id``, ``eos_id``, ``unk_id``); pieces not in the vocabulary encode as
``<unk>``. A tokenizer saves to JSON with its kind, and :meth:`Tokenizer.load` rebuilds the right class::

    tok = WordTokenizer.fit(texts, max_vocab=1000)
    tok.save("tok.json")
    tok = Tokenizer.load("tok.json")       # a WordTokenizer again
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["SPECIAL_TOKENS", "Tokenizer", "CharTokenizer", "WordTokenizer"]

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")


class Tokenizer(ABC):
    """Base class: a vocabulary ``tokens`` (id -> piece) whose first entries are :data:`SPECIAL_TOKENS`.

    Subclasses define how text splits into pieces (``_split``) and how pieces join back (``_join``).
    """

    kind: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Tokenizer]]] = {}

    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Tokenizer._registry[cls.kind] = cls

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"tokens must start with the special tokens {SPECIAL_TOKENS}, got {tokens[:4]}")
        if len(set(tokens)) != len(tokens):
            duplicates = sorted(t for t, n in Counter(tokens).items() if n > 1)
            raise ValueError(f"tokens must be distinct; duplicated: {duplicates[:10]}")
        self.tokens: list[str] = tokens
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(tokens)}

    # ------------------------------------------------------------------ splitting, defined by subclasses
    @abstractmethod
    def _split(self, text: str) -> list[str]:
        """Text -> the pieces that map to tokens."""

    @abstractmethod
    def _join(self, pieces: list[str]) -> str:
        """Pieces -> text (the inverse of ``_split`` for well-formed text)."""

    def _config(self) -> dict[str, Any]:
        """Extra constructor arguments saved with the vocabulary."""
        return {}

    # ------------------------------------------------------------------ public API
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return len(self.tokens)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(range(len(SPECIAL_TOKENS)))

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``; unknown pieces become ``unk_id``; optional ``<bos>`` / ``<eos>`` around."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        ids = [self.token_to_id.get(piece, self.unk_id) for piece in self._split(text)]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
        """Text of ``ids`` (a list, or a 1-D tensor / array). ``skip_special`` drops ``<pad>``, ``<bos>`` and
        ``<eos>``; ``<unk>`` is always written as ``"<unk>"`` so that lost pieces stay visible."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        pieces = []
        for i in ids:
            if not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise ValueError(f"ids must be integers in [0, vocab_size = {self.vocab_size}), got {i!r}")
            if skip_special and i in (self.pad_id, self.bos_id, self.eos_id):
                continue
            pieces.append(self.tokens[i])
        return self._join(pieces)

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON: ``{"kind": ..., "tokens": [...], **config}``."""
        data = {"kind": self.kind, "tokens": self.tokens, **self._config()}
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer written by :meth:`save`; ``Tokenizer.load`` returns the class its kind names."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        kind = data.pop("kind", None)
        if kind not in Tokenizer._registry:
            raise ValueError(f"{path}: unknown tokenizer kind {kind!r}; known: {sorted(Tokenizer._registry)}")
        target = Tokenizer._registry[kind]
        if cls is not Tokenizer and target is not cls:
            raise ValueError(f"{path} holds a {target.__name__}, not a {cls.__name__}")
        return target(**data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """One token per character. ``decode(encode(t)) == t`` for text whose characters were all seen by fit."""

    kind = "char"

    def _split(self, text: str) -> list[str]:
        return list(text)

    def _join(self, pieces: list[str]) -> str:
        return "".join(pieces)

    @classmethod
    def fit(cls, texts: Iterable[str]) -> CharTokenizer:
        """Vocabulary = special tokens + every character of ``texts``, in sorted (code point) order."""
        if isinstance(texts, str):
            raise ValueError("texts must be an iterable of strings, not a single str (wrap it in a list)")
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls(list(SPECIAL_TOKENS) + sorted(chars - set(SPECIAL_TOKENS)))


class WordTokenizer(Tokenizer):
    """Words and punctuation marks: ``text -> re.findall(r"\\w+(?:'\\w+)*|[^\\w\\s]", text)``.

    A word is a run of letters/digits/underscores (with inner apostrophes: ``don't``); every other non-space
    character is its own token. Decoding joins with single spaces, except that no space goes before
    ``. , ; : ! ? ) ] }`` nor after ``( [ {``; so ``decode(encode(t)) == t`` for text written that way
    with known words (e.g. ``"the cats (two) sleep, then run."``).
    """

    kind = "word"
    PATTERN: ClassVar[re.Pattern] = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
    NO_SPACE_BEFORE: ClassVar[frozenset[str]] = frozenset(".,;:!?)]}")
    NO_SPACE_AFTER: ClassVar[frozenset[str]] = frozenset("([{")

    def __init__(self, tokens: Sequence[str], lowercase: bool = False):
        super().__init__(tokens)
        self.lowercase = lowercase

    def _config(self) -> dict[str, Any]:
        return {"lowercase": self.lowercase}

    def _split(self, text: str) -> list[str]:
        return self.PATTERN.findall(text.lower() if self.lowercase else text)

    def _join(self, pieces: list[str]) -> str:
        out: list[str] = []
        for i, piece in enumerate(pieces):
            if i and piece not in self.NO_SPACE_BEFORE and pieces[i - 1] not in self.NO_SPACE_AFTER:
                out.append(" ")
            out.append(piece)
        return "".join(out)

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        *,
        max_vocab: int | None = None,
        min_freq: int = 1,
        lowercase: bool = False,
    ) -> WordTokenizer:
        """Vocabulary = special tokens + the words seen at least ``min_freq`` times, most frequent first
        (ties broken alphabetically, so the result does not depend on the order of ``texts``), cut so that
        the whole vocabulary (specials included) has at most ``max_vocab`` entries."""
        if isinstance(texts, str):
            raise ValueError("texts must be an iterable of strings, not a single str (wrap it in a list)")
        if max_vocab is not None and max_vocab < len(SPECIAL_TOKENS):
            raise ValueError(
                f"max_vocab must be at least {len(SPECIAL_TOKENS)} (the special tokens), got {max_vocab}"
            )
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        splitter = cls(list(SPECIAL_TOKENS), lowercase=lowercase)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(splitter._split(text))
        words = sorted(
            (w for w, n in counts.items() if n >= min_freq and w not in SPECIAL_TOKENS),
            key=lambda w: (-counts[w], w),
        )
        if max_vocab is not None:
            words = words[: max_vocab - len(SPECIAL_TOKENS)]
        return cls(list(SPECIAL_TOKENS) + words, lowercase=lowercase)
