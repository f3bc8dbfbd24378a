"""A synthetic knowledge world for the SaySelf chapter: people, cities, countries and companies; a
pretraining corpus in which each fact about a person appears a Zipf-distributed number of times; and
one-hop and two-hop questions with short reasoning chains.

The world (all of it made up, and stated as such in the chapter)::

    person  --born_in-->   city    --city_in-->  country
    person  --works_for--> company --based_in--> city

Each person has one birthplace and one employer. The facts about places and companies (which country a
city is in, where a company is based) are common knowledge: they appear ``background_mentions`` times
each. The facts about people are not: the fact of Zipf rank ``r`` is mentioned ``Poisson(max_mentions *
r**-zipf_exponent)`` times, so a model trained on the corpus knows a few people well, some barely and
many not at all (their facts appear zero times), which is what makes its confidence worth asking for.

Questions, with the reasoning chain the corpus teaches (word-level tokens; names are capitalised)::

    born_in        where was Kalo born?                          Kalo was born in Dalford.        -> Dalford
    works_for      who employs Kalo?                             Kalo works for Lumaworks.        -> Lumaworks
    born_country   in which country was Kalo born?               Kalo was born in Dalford.
                                                                 Dalford is in Veloria.           -> Veloria
    employer_city  in which city is the employer of Kalo based?  Kalo works for Lumaworks.
                                                                 Lumaworks is based in Dalford.   -> Dalford

The first three are the in-distribution kinds (fine-tuning and its test set); ``employer_city`` is held
out of fine-tuning and is the out-of-distribution test: a relation composition the fine-tuned model
never answered with a confidence. People are split into train and test people; the corpus holds worked
question-answer examples (without any confidence) for train people only, so that the pretrained model
knows the question format; every test question is about a test person.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

from paperlab.tokenizers import SPECIAL_TOKENS, WordTokenizer

__all__ = ["RELATIONS", "KINDS", "ID_KINDS", "OOD_KINDS", "WorldConfig", "Question", "World"]

# relation -> (subject type, object type, statement template)
RELATIONS = {
    "born_in": ("person", "city", "{s} was born in {o}."),
    "works_for": ("person", "company", "{s} works for {o}."),
    "city_in": ("city", "country", "{s} is in {o}."),
    "based_in": ("company", "city", "{s} is based in {o}."),
}
# question kind -> (question template, the chain of relations its reasoning follows)
KINDS = {
    "born_in": ("where was {p} born?", ("born_in",)),
    "works_for": ("who employs {p}?", ("works_for",)),
    "born_country": ("in which country was {p} born?", ("born_in", "city_in")),
    "employer_city": ("in which city is the employer of {p} based?", ("works_for", "based_in")),
}
ID_KINDS = ("born_in", "works_for", "born_country")
OOD_KINDS = ("employer_city",)
FUNCTION_WORDS = ("question reasoning answer reflection confidence : ? . , or is a person i am sure unsure "
                  "where was born in who employs works for which country city the employer of based "
                  "birthplace").split()
CONFIDENCE_WORDS = tuple(str(c) for c in range(1, 11))


@dataclass(frozen=True)
class WorldConfig:
    """Sizes, frequencies and splits of the world; everything is drawn from ``seed``.

    - ``n_people``, ``n_cities``, ``n_countries``, ``n_companies``: how many of each.
    - ``max_mentions``, ``zipf_exponent``: the person fact of rank ``r`` (a random order of all of them)
      is mentioned ``Poisson(max_mentions * r**-zipf_exponent)`` times in the corpus.
    - ``background_mentions``: mentions of each city-country and company-city fact.
    - ``name_mentions``: introductions per person, a question about no fact at all (``"question: who is
      Kalo? reasoning: Kalo is a person. answer: a person."``): every name is seen, and the model learns
      to copy a question's name into its reasoning for every person, not only for those in worked
      examples.
    - ``test_fraction``: share of the people kept for testing.
    - ``qa_per_kind``: worked question-answer examples per in-distribution kind (and ``qa_ood_per_kind``
      for the held-out kind) in the corpus, about train people whose fact the corpus states.
    """

    n_people: int = 300
    n_cities: int = 10
    n_countries: int = 4
    n_companies: int = 8
    max_mentions: float = 30.0
    zipf_exponent: float = 0.6
    background_mentions: int = 30
    name_mentions: int = 1
    test_fraction: float = 0.4
    qa_per_kind: int = 100
    qa_ood_per_kind: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_people", "n_cities", "n_countries", "n_companies"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
                raise ValueError(f"WorldConfig.{name} must be an integer >= 2, got {getattr(self, name)!r}")
        if self.n_countries > self.n_cities:
            raise ValueError(f"WorldConfig.n_countries ({self.n_countries}) must be at most n_cities "
                             f"({self.n_cities}): every country needs a city")
        if not self.max_mentions > 0 or not self.zipf_exponent >= 0:
            raise ValueError("WorldConfig.max_mentions must be > 0 and zipf_exponent >= 0")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"WorldConfig.test_fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("background_mentions", "name_mentions", "qa_per_kind", "qa_ood_per_kind"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"WorldConfig.{name} must be an integer >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Question:
    """One question: its kind, its person, the text of the prompt, the gold reasoning chain and answer,
    ``hops`` (the entity reached after each hop; the last is the answer) and ``mentions``: how often the
    first hop's fact (the one about the person) appears in the pretraining corpus."""

    kind: str
    person: str
    text: str
    reasoning: str
    answer: str
    hops: tuple[str, ...]
    mentions: int

    @property
    def prompt(self) -> str:
        return f"question: {self.text}"


def _names(rng: random.Random, n: int, make, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        name = make(rng)
        if name not in taken and name.lower() not in FUNCTION_WORDS:
            taken.add(name)
            out.append(name)
    return out


CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"


def _syllable(rng: random.Random) -> str:
    return rng.choice(CONSONANTS) + rng.choice(VOWELS)


class World:
    """The entities, facts, corpus and questions of one :class:`WorldConfig` (deterministic)."""

    def __init__(self, config: WorldConfig | None = None):
        self.config = config = config or WorldConfig()
        rng = random.Random(config.seed)
        taken: set[str] = set()

        def named(n: int, *endings: str, syllables: int = 2) -> list[str]:
            """``n`` new pronounceable names: ``syllables`` consonant-vowel pairs and one of ``endings``."""
            return _names(rng, n, lambda r: ("".join(_syllable(r) for _ in range(syllables))
                                             + r.choice(endings)).title(), taken)

        self.people = named(config.n_people, "", "n", "r", "s")
        self.cities = named(config.n_cities, "lford", "nton", "rwick", "smouth", syllables=1)
        self.countries = named(config.n_countries, "ria")
        self.companies = named(config.n_companies, "works", "labs", "tech")
        # every country gets at least one city; the rest are spread at random
        country_of = self.countries + [rng.choice(self.countries) for _ in self.cities[len(self.countries):]]
        rng.shuffle(country_of)
        self.facts: dict[tuple[str, str], str] = {}
        for city, country in zip(self.cities, country_of):
            self.facts["city_in", city] = country
        for company in self.companies:
            self.facts["based_in", company] = rng.choice(self.cities)
        for person in self.people:
            self.facts["born_in", person] = rng.choice(self.cities)
            self.facts["works_for", person] = rng.choice(self.companies)
        # mentions: Zipf over a random order of the person facts, Poisson draws
        person_facts = [(r, p) for p in self.people for r in ("born_in", "works_for")]
        rng.shuffle(person_facts)
        self.statements: dict[tuple[str, str], int] = {}  # times each fact is stated in the corpus
        for rank, fact in enumerate(person_facts, start=1):
            self.statements[fact] = _poisson(rng, config.max_mentions * rank ** -config.zipf_exponent)
        for fact in self.facts:
            if fact[0] in ("city_in", "based_in"):
                self.statements[fact] = config.background_mentions
        self.mentions = dict(self.statements)  # statements plus restatements in worked examples (below)
        shuffled = list(self.people)
        rng.shuffle(shuffled)
        n_test = max(1, round(config.test_fraction * len(shuffled)))
        self.test_people, self.train_people = sorted(shuffled[:n_test]), sorted(shuffled[n_test:])
        # worked examples about train people whose first-hop fact the corpus states; each restates that
        # fact in its reasoning, so it counts as one more mention
        self.worked_examples: list[Question] = []
        for kind, (_, chain) in KINDS.items():
            known = [p for p in self.train_people if self.statements[chain[0], p] > 0]
            count = config.qa_ood_per_kind if kind in OOD_KINDS else config.qa_per_kind
            chosen = rng.sample(known, min(count, len(known)))
            self.worked_examples += [self.question(kind, p) for p in chosen]
        for q in self.worked_examples:
            self.mentions[KINDS[q.kind][1][0], q.person] += 1

    # ------------------------------------------------------------------------------------------ facts
    def object_of(self, relation: str, subject: str) -> str:
        return self.facts[relation, subject]

    def question(self, kind: str, person: str) -> Question:
        """The question of ``kind`` about ``person`` with its gold chain."""
        if kind not in KINDS:
            raise ValueError(f"unknown question kind {kind!r}; kinds: {', '.join(KINDS)}")
        template, chain = KINDS[kind]
        hops, steps, subject = [], [], person
        for relation in chain:
            obj = self.object_of(relation, subject)
            steps.append(RELATIONS[relation][2].format(s=subject, o=obj))
            hops.append(obj)
            subject = obj
        return Question(kind, person, template.format(p=person), " ".join(steps), hops[-1], tuple(hops),
                        self.mentions[chain[0], person])

    def questions(self, kinds: tuple[str, ...], people: list[str]) -> list[Question]:
        """Every question of ``kinds`` about ``people`` (kind-major order)."""
        return [self.question(kind, person) for kind in kinds for person in people]

    # ------------------------------------------------------------------------------------------ corpus
    @cached_property
    def corpus(self) -> list[str]:
        """The pretraining documents, in a fixed random order: fact statements (each as often as its
        statement count), an introduction of every person, and the worked question-answer examples."""
        config = self.config
        rng = random.Random(config.seed + 1)
        docs = []
        for (relation, subject), obj in self.facts.items():
            docs += [RELATIONS[relation][2].format(s=subject, o=obj)] * self.statements[relation, subject]
        docs += [f"question: who is {p}? reasoning: {p} is a person. answer: a person." for p in self.people
                 for _ in range(config.name_mentions)]
        docs += [f"{q.prompt} reasoning: {q.reasoning} answer: {q.answer}." for q in self.worked_examples]
        rng.shuffle(docs)
        return docs

    @cached_property
    def tokenizer(self) -> WordTokenizer:
        """Special tokens, the function words, the confidence levels 1..10 and every name (seen or not)."""
        names = self.people + self.cities + self.countries + self.companies
        words = FUNCTION_WORDS + list(CONFIDENCE_WORDS) + names
        return WordTokenizer(list(SPECIAL_TOKENS) + list(dict.fromkeys(words)))

    def mention_counts(self) -> Counter:
        """How many person facts are mentioned 0, 1, 2, ... times."""
        return Counter(self.mentions[r, p] for p in self.people for r in ("born_in", "works_for"))


def _poisson(rng: random.Random, lam: float) -> int:
    """A Poisson(lam) draw from ``rng`` (Knuth's method for small lam, normal approximation above 30)."""
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    threshold, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1
