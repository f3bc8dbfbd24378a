"""A synthetic multilingual world: languages generated from one grammar of meanings.

Nothing here is real language data. The chapter needs many languages with known relations, a few with
plenty of parallel text and a few with very little, and test sets that are translations of each other
(like FLORES-200); a small generative model of language gives all of that reproducibly, in a second.

**Meanings.** A meaning is a tuple ``(agent, agent_number, agent_adjective, action, tense, object,
object_number, object_adjective)``: an agent noun and an object noun from :data:`NOUNS`, an action from
:data:`VERBS`, optional adjectives from :data:`ADJECTIVES` (absent with probability 0.6 for the agent and
0.4 for the object), number ``sg``/``pl`` for each noun, and tense ``past``/``present``/``future``.
That is about 3 million distinct meanings.

**Families.** Each family (:data:`FAMILIES`) fixes the structure its languages share:

- a word order of subject, verb and object (``SVO``, ``SOV``, ``VSO``) and the adjective's side of the noun;
- which morphemes exist: a plural suffix on nouns, past and future suffixes on verbs (present unmarked),
  an object (accusative) or agent (ergative) case suffix in some families;
- a phoneme inventory and a syllable shape, from which a **proto-lexicon** is drawn: one random
  pseudo-word per concept and per suffix.

**Languages.** Each language (:data:`LANGUAGES`) inherits its family's proto-lexicon and applies its own
**sound changes** (regular substitutions such as ``k -> g`` or ``a -> e``, applied to every word, as in
real historical linguistics) and replaces a fraction of its words with fresh ones (lexical replacement).
So two languages of a family share word order and morphology exactly, many words are identical and most
others are regular *cognates*. Languages of different families share nothing but the meanings.

**Text.** A sentence is its words separated by spaces, suffixes attached with a hyphen
(``doru-ke pami-ta saro``). Tokenisation is :class:`paperlab.tokenizers.WordTokenizer`, which splits the
hyphen off, so a token is a stem, a ``-`` or a suffix; language tags ``<2xx>`` are extra vocabulary entries
(:func:`build_tokenizer`); :func:`detokenize` undoes the hyphen spacing.

**Resources.** The hub language ``pax`` plays the role of English in NLLB: every training pair has it on
one side. Two **high-resource** languages (one per family) have ``n_high`` sentence pairs with the hub;
two **low-resource** languages, each related to one high-resource language, have ``n_low``. Training
uses both directions of every pair. Low-resource pairs are also **noisy**: a fraction ``low_noise`` of
them is misaligned (the hub sentence expresses another meaning), as mined web bitext for low-resource
languages often is; this is what a model with spare capacity can memorise. Directions between two
non-hub languages never occur in training: they are **zero-shot** (:func:`zero_shot_directions`).
Validation and test sets are multi-way parallel: one set of meanings (disjoint from all training
meanings) rendered in every language, so any direction has one.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from paperlab.config import check_ints, check_numbers
from paperlab.tokenizers import SPECIAL_TOKENS, WordTokenizer

__all__ = [
    "NOUNS",
    "VERBS",
    "ADJECTIVES",
    "FAMILIES",
    "LANGUAGES",
    "HUB",
    "HIGH",
    "LOW",
    "zero_shot_directions",
    "Meaning",
    "Language",
    "WorldConfig",
    "World",
    "make_world",
    "make_languages",
    "sample_meanings",
    "build_tokenizer",
    "tag",
    "detokenize",
    "train_directions",
]

NOUNS = (
    "dog",
    "cat",
    "bird",
    "horse",
    "child",
    "woman",
    "man",
    "king",
    "farmer",
    "river",
    "tree",
    "house",
    "boat",
    "bread",
    "stone",
    "book",
)
VERBS = ("see", "carry", "find", "eat", "build", "love", "follow", "call", "hold", "wash", "sell", "draw")
ADJECTIVES = ("big", "small", "red", "old", "young", "dark", "cold", "wet")
TENSES = ("past", "present", "future")
NUMBERS = ("sg", "pl")
SUFFIXES = ("plural", "past", "future", "case")

# family -> structure shared by its languages
FAMILIES: dict[str, dict] = {
    "P": dict(
        order="SVO",
        adjective="before",
        case=None,
        consonants="ptkmnslrwd",
        vowels="aeiou",
        shape=("CV", "CVC"),
        syllables=(2, 2),
    ),
    "A": dict(
        order="SOV",
        adjective="before",
        case="object",
        consonants="tkgmnrszh",
        vowels="aiou",
        shape=("CV", "CVC", "V"),
        syllables=(2, 3),
    ),
    "B": dict(
        order="VSO",
        adjective="after",
        case="agent",
        consonants="bdflmnvrw",
        vowels="aeoy",
        shape=("CV", "CVV"),
        syllables=(2, 3),
    ),
}

# language -> family, resource level, its high-resource relative, sound changes, replaced fraction
LANGUAGES: dict[str, dict] = {
    "pax": dict(family="P", resource="hub", relative=None, changes=(), replace=0.0),
    "ara": dict(family="A", resource="high", relative=None, changes=(("g", "k"),), replace=0.0),
    "amu": dict(family="A", resource="low", relative="ara", changes=(("o", "u"),), replace=0.35),
    "bel": dict(family="B", resource="high", relative=None, changes=(("v", "w"),), replace=0.0),
    "bry": dict(family="B", resource="low", relative="bel", changes=(("d", "t"),), replace=0.35),
}
HUB = "pax"
HIGH = ("ara", "bel")
LOW = ("amu", "bry")


@dataclass(frozen=True)
class Meaning:
    """One meaning of the grammar (see the module docstring); adjectives are ``None`` when absent."""

    agent: str
    agent_number: str
    agent_adjective: str | None
    action: str
    tense: str
    object: str
    object_number: str
    object_adjective: str | None


def sample_meanings(n: int, rng: random.Random) -> list[Meaning]:
    """``n`` independent meanings: nouns, verbs, adjectives, numbers and tenses uniform at random."""
    out = []
    for _ in range(n):
        out.append(
            Meaning(
                agent=rng.choice(NOUNS),
                agent_number=rng.choice(NUMBERS),
                agent_adjective=rng.choice(ADJECTIVES) if rng.random() < 0.4 else None,
                action=rng.choice(VERBS),
                tense=rng.choice(TENSES),
                object=rng.choice(NOUNS),
                object_number=rng.choice(NUMBERS),
                object_adjective=rng.choice(ADJECTIVES) if rng.random() < 0.6 else None,
            )
        )
    return out


@dataclass(frozen=True)
class Language:
    """A generated language: its code, family structure and lexicon (concept or suffix -> form)."""

    code: str
    family: str
    resource: str
    relative: str | None
    order: str
    adjective: str
    case: str | None
    lexicon: dict

    def _noun_phrase(self, noun: str, number: str, adjective: str | None, role: str) -> list[str]:
        word = self.lexicon[noun]
        suffixes = []
        if number == "pl":
            suffixes.append(self.lexicon["plural"])
        if self.case == role:
            suffixes.append(self.lexicon["case"])
        word = "-".join([word, *suffixes])
        if adjective is None:
            return [word]
        adj = self.lexicon[adjective]
        return [adj, word] if self.adjective == "before" else [word, adj]

    def render(self, meaning: Meaning) -> str:
        """The sentence expressing ``meaning`` in this language (words in the family's order)."""
        subject = self._noun_phrase(meaning.agent, meaning.agent_number, meaning.agent_adjective, "agent")
        obj = self._noun_phrase(meaning.object, meaning.object_number, meaning.object_adjective, "object")
        verb = self.lexicon[meaning.action]
        if meaning.tense != "present":
            verb = f"{verb}-{self.lexicon[meaning.tense]}"
        parts = {"S": subject, "V": [verb], "O": obj}
        return " ".join(w for slot in self.order for w in parts[slot])


def _proto_word(rng: random.Random, family: dict) -> str:
    syllables = rng.randint(*family["syllables"])
    out = []
    for _ in range(syllables):
        for symbol in rng.choice(family["shape"]):
            out.append(rng.choice(family["consonants"] if symbol == "C" else family["vowels"]))
    return "".join(out)


def _proto_suffix(rng: random.Random, family: dict) -> str:
    return rng.choice(family["consonants"]) + rng.choice(family["vowels"])


def _proto_lexicon(family_name: str, seed: int) -> dict[str, str]:
    """One distinct pseudo-word per concept and one short suffix per grammatical morpheme."""
    family = FAMILIES[family_name]
    rng = random.Random(f"proto-{family_name}-{seed}")
    lexicon: dict[str, str] = {}
    used: set[str] = set()
    for concept in NOUNS + VERBS + ADJECTIVES:
        word = _proto_word(rng, family)
        while word in used or len(word) < 3:
            word = _proto_word(rng, family)
        lexicon[concept] = word
        used.add(word)
    for suffix in SUFFIXES:
        form = _proto_suffix(rng, family)
        while form in used:
            form = _proto_suffix(rng, family)
        lexicon[suffix] = form
        used.add(form)
    return lexicon


def _sound_change(word: str, changes: tuple[tuple[str, str], ...]) -> str:
    for old, new in changes:
        word = word.replace(old, new)
    return word


@functools.lru_cache(maxsize=8)
def make_languages(seed: int = 0) -> dict[str, Language]:
    """Every language of :data:`LANGUAGES`, built from its family's proto-lexicon (deterministic in ``seed``).

    Per language: apply its sound changes to every proto form; then replace a fraction ``replace`` of the
    concepts (not the suffixes) with fresh words; a form that would collide with another word of the
    language keeps its proto form instead.
    """
    languages = {}
    for code, spec in LANGUAGES.items():
        family = FAMILIES[spec["family"]]
        proto = _proto_lexicon(spec["family"], seed)
        rng = random.Random(f"lexicon-{code}-{seed}")
        lexicon: dict[str, str] = {}
        used: set[str] = set()
        for concept, form in proto.items():
            new = _sound_change(form, spec["changes"])
            if concept not in SUFFIXES and rng.random() < spec["replace"]:
                new = _proto_word(rng, family)
            if new in used:
                new = form
            while new in used:
                new = _proto_word(rng, family)
            lexicon[concept] = new
            used.add(new)
        languages[code] = Language(
            code=code,
            family=spec["family"],
            resource=spec["resource"],
            relative=spec["relative"],
            order=family["order"],
            adjective=family["adjective"],
            case=family["case"],
            lexicon=lexicon,
        )
    return languages


def tag(language: str) -> str:
    """The language tag token ``<2xx>`` (source tag on the encoder side, forced target tag on the decoder)."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; known languages: {', '.join(LANGUAGES)}")
    return f"<2{language}>"


def detokenize(text: str) -> str:
    """Undo :class:`WordTokenizer`'s spacing around the suffix hyphen: ``"doru - ke" -> "doru-ke"``."""
    return text.replace(" - ", "-").replace(" -", "-").replace("- ", "-")


def check_languages(languages) -> tuple[str, ...]:
    """``languages`` as a tuple if it is a non-empty sequence of distinct non-hub language codes, else a
    ValueError naming the codes that are not."""
    if isinstance(languages, str) or not isinstance(languages, (tuple, list)) or not languages:
        raise ValueError(f"languages must be a non-empty tuple of language codes, got {languages!r}")
    choices = [c for c in LANGUAGES if c != HUB]
    unknown = [c for c in languages if c not in choices]
    if unknown:
        raise ValueError(f"unknown or hub language code(s) {unknown}; the non-hub languages are "
                         f"{', '.join(choices)} (the hub {HUB!r} is on the other side of every direction)")
    if len(set(languages)) != len(languages):
        raise ValueError(f"languages must be distinct, got {languages!r}")
    return tuple(languages)


def zero_shot_directions(languages: tuple[str, ...]) -> list[tuple[str, str]]:
    """The directions between two of ``languages`` (non-hub): never in the training data, which pairs
    every language with the hub only."""
    languages = check_languages(languages)
    return [(a, b) for a in languages for b in languages if a != b]


def train_directions(languages: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """The training directions: ``(x, hub)`` and ``(hub, x)`` for every non-hub language ``x``."""
    languages = tuple(c for c in LANGUAGES if c != HUB) if languages is None else check_languages(languages)
    return [d for x in languages for d in ((x, HUB), (HUB, x))]


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of the world's corpora.

    n_high / n_low: sentence pairs between the hub and each high / low-resource language (each pair is
    used in both directions); low_noise: fraction of the low-resource pairs that are **misaligned** (the
    hub side expresses another meaning), as in mined low-resource bitext; n_valid, n_test: multi-way
    parallel held-out sets (one per split, rendered in every language, always clean); seed: lexicons and
    corpora.
    """

    n_high: int = 20_000
    n_low: int = 200
    low_noise: float = 0.3
    n_valid: int = 100
    n_test: int = 100
    seed: int = 0

    def __post_init__(self):
        check_ints(self, "n_high", "n_low", "n_valid", "n_test")
        check_ints(self, "seed", low=0)
        check_numbers(self, "low_noise", low=0, high=1, open_high=True)


@dataclass(frozen=True)
class World:
    """The generated corpora.

    languages: code -> :class:`Language`; train: ``(x, hub)`` pair -> list of ``(x sentence, hub sentence)``
    for each non-hub language ``x``; valid, test: language -> list of sentences (aligned across languages:
    ``valid[a][i]`` translates ``valid[b][i]``); meanings of the held-out sets never occur in training.
    """

    config: WorldConfig
    languages: dict
    train: dict
    valid: dict
    test: dict

    def pairs(self, source: str, target: str, split: str = "train") -> list[tuple[str, str]]:
        """(source sentence, target sentence) pairs of one direction in ``split``."""
        for code in (source, target):
            if code not in self.languages:
                raise ValueError(f"unknown language {code!r}; known languages: {', '.join(self.languages)}")
        if source == target:
            raise ValueError(f"source and target are both {source!r}; a direction needs two languages")
        if split == "train":
            if (source, HUB) in self.train and target == HUB:
                return list(self.train[(source, HUB)])
            if source == HUB and (target, HUB) in self.train:
                return [(h, x) for x, h in self.train[(target, HUB)]]
            raise ValueError(f"direction {source}->{target} has no training data (zero-shot)")
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
        held = self.valid if split == "valid" else self.test
        return list(zip(held[source], held[target]))

    def texts(self) -> list[str]:
        """Every training sentence (both sides), for fitting the tokenizer."""
        return [s for pairs in self.train.values() for pair in pairs for s in pair]


@functools.lru_cache(maxsize=4)
def make_world(config: WorldConfig = WorldConfig()) -> World:
    """Generate the world of ``config`` (deterministic; cached per config in the process)."""
    languages = make_languages(config.seed)
    rng = random.Random(f"held-out-{config.seed}")
    held = sample_meanings(config.n_valid + config.n_test, rng)
    held_keys = set(held)
    valid_meanings, test_meanings = held[: config.n_valid], held[config.n_valid :]
    train = {}
    for code in HIGH + LOW:
        n = config.n_high if code in HIGH else config.n_low
        rng = random.Random(f"train-{code}-{config.seed}")
        meanings = [m for m in sample_meanings(n + n // 50 + 10, rng) if m not in held_keys][:n]
        hub_side = list(meanings)
        if code in LOW and config.low_noise > 0:  # misaligned pairs: the hub sentence says something else
            noise = random.Random(f"noise-{code}-{config.seed}")
            for i in noise.sample(range(n), round(config.low_noise * n)):
                hub_side[i] = sample_meanings(1, noise)[0]
        train[(code, HUB)] = [
            (languages[code].render(m), languages[HUB].render(h)) for m, h in zip(meanings, hub_side)
        ]
    valid = {code: [lang.render(m) for m in valid_meanings] for code, lang in languages.items()}
    test = {code: [lang.render(m) for m in test_meanings] for code, lang in languages.items()}
    return World(config=config, languages=languages, train=train, valid=valid, test=test)


def build_tokenizer(world: World) -> WordTokenizer:
    """A :class:`WordTokenizer` fitted on the training text, with one ``<2xx>`` tag per language added
    after the special tokens (tags are looked up by id, never produced by splitting text)."""
    fitted = WordTokenizer.fit(world.texts())
    tags = [tag(code) for code in LANGUAGES]
    return WordTokenizer(list(SPECIAL_TOKENS) + tags + fitted.tokens[len(SPECIAL_TOKENS) :])
