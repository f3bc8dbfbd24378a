"""Synthetic authors who write short emails, each in a distinct, measurable style (stated as synthetic).

Every message says one thing (its **content**, shared by all authors and drawn from a small grammar) in
one author's **style**. The content is a request to someone::

    prompt:   "sam move_event meeting friday:"
    message:  "hi sam, hope you are well. could you please reschedule the meeting to friday? no rush. best"

and the style is one option in each of six dimensions (:data:`STYLE`): the greeting, an opening line, how
the request is framed, the verbs used (three lexicons), a closing line and the sign-off. An author has a
preferred option per dimension and uses it with probability ``consistency`` (else another option, uniformly),
so an author's messages vary, as a person's do, around a recognisable style. Because the options are
fixed strings, :func:`parse_style` reads back which option a message used in each dimension, and
:func:`content_kept` whether it still says what the prompt asked.

Three disjoint groups of authors (:func:`make_cast`): many **pretraining** authors (the base model learns
their mixture: the "collective voice of many"), a few **dev** authors (hyperparameters are tuned on them),
and the **target** authors, whose style combinations the base model never saw (each differs from every
pretraining author in at least ``min_distance`` dimensions). Only the targets are evaluated.

The model reads and writes text in one format: a message is its prompt, the message and the separator
:data:`SEPARATOR`; a few-shot prompt is demonstrations in that format followed by the new prompt
(:func:`few_shot_prompt`). Derivation and pictures: ``book/10-ditto.md`` (sec-ditto-data).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from paperlab.config import check_ints, check_numbers, check_that
from paperlab.tokenizers import WordTokenizer

__all__ = [
    "NAMES", "EVENTS", "DOCUMENTS", "DAYS", "INTENTS", "STYLE", "DIMENSIONS", "SEPARATOR",
    "Content", "Author", "Example", "CastConfig", "Cast", "make_cast", "random_content", "write",
    "demonstrations", "eval_contents", "few_shot_prompt", "message_text", "parse_style", "content_kept",
    "style_match", "make_tokenizer", "style_description",
]

NAMES = ("sam", "alex", "maria", "john", "lena", "omar", "kim", "ruth", "ivan", "zoe")
EVENTS = ("meeting", "lunch", "demo", "standup", "workshop", "interview")
DOCUMENTS = ("report", "slides", "notes", "budget", "draft", "contract")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "tomorrow")

# intent -> (the task's words, with {verb} and slots; the slots it takes; the verb of each lexicon)
INTENTS: dict[str, tuple[str, tuple[str, ...], tuple[str, str, str]]] = {
    "move_event": ("{verb} the {event} to {day}", ("event", "day"), ("move", "reschedule", "push")),
    "send_doc": ("{verb} the {document} by {day}", ("document", "day"), ("send", "share", "forward")),
    "join_event": ("{verb} the {event} on {day}", ("event", "day"), ("join", "attend", "come to")),
    "review_doc": ("{verb} the {document} before {day}", ("document", "day"),
                   ("check", "review", "look over")),
    "call_about": ("{verb} me about the {document}", ("document",), ("call", "phone", "ring")),
    "book_room": ("{verb} a room for the {event}", ("event",), ("book", "reserve", "grab")),
}
SLOT_VALUES = {"event": EVENTS, "document": DOCUMENTS, "day": DAYS}

# The six style dimensions and their options ("" = nothing in that place). "lexicon" picks the verbs.
STYLE: dict[str, tuple[str, ...]] = {
    "greeting": ("hi {name},", "hello {name},", "dear {name},", "hey {name}!", "{name},",
                 "good morning {name},"),
    "opener": ("", "hope you are well.", "quick question.", "i hope this finds you well.", "happy friday!"),
    "request": ("can you {task}?", "could you please {task}?", "please {task}.",
                "would you be able to {task}?", "i need you to {task}."),
    "lexicon": ("plain", "formal", "casual"),
    "closer": ("", "let me know.", "thanks in advance.", "no rush.", "appreciate it!"),
    "signoff": ("", "best", "thanks!", "cheers", "kind regards", "talk soon"),
}
DIMENSIONS = tuple(STYLE)
SEPARATOR = "|"  # ends every message in the model's text format


@dataclass(frozen=True)
class Content:
    """What a message says: to ``name``, the ``intent`` with its ``slots`` (e.g. event and day)."""

    name: str
    intent: str
    slots: tuple[tuple[str, str], ...]

    @property
    def prompt(self) -> str:
        """The model's prompt: ``"sam move_event meeting friday:"``."""
        return " ".join([self.name, self.intent, *(value for _, value in self.slots)]) + ":"

    def task(self, lexicon: int) -> str:
        """The request's words in lexicon ``lexicon``: ``"reschedule the meeting to friday"``."""
        template, _, verbs = INTENTS[self.intent]
        return template.format(verb=verbs[lexicon], **dict(self.slots))


@dataclass(frozen=True)
class Author:
    """An author: the preferred option index in each of :data:`DIMENSIONS`, used w.p. ``consistency``."""

    style: tuple[int, ...]
    consistency: float

    def __post_init__(self):
        if len(self.style) != len(DIMENSIONS):
            raise ValueError(f"Author.style needs one option per dimension {DIMENSIONS}, got {self.style}")
        for dimension, option in zip(DIMENSIONS, self.style):
            if not 0 <= option < len(STYLE[dimension]):
                raise ValueError(f"Author.style: option {option} of {dimension!r} is not in "
                                 f"[0, {len(STYLE[dimension])})")
        if not 0 < self.consistency <= 1:
            raise ValueError(f"Author.consistency must be in (0, 1], got {self.consistency}")


@dataclass(frozen=True)
class Example:
    """A (prompt, message) pair in text: a demonstration, or a reference message of an author."""

    prompt: str
    message: str

    @property
    def text(self) -> str:
        """The model's format: ``prompt message |``."""
        return f"{self.prompt} {self.message} {SEPARATOR}"


def random_content(rng: random.Random) -> Content:
    """A content drawn uniformly: a name, an intent, and a value for each of its slots."""
    intent = rng.choice(tuple(INTENTS))
    slots = tuple((slot, rng.choice(SLOT_VALUES[slot])) for slot in INTENTS[intent][1])
    return Content(rng.choice(NAMES), intent, slots)


def _pick(author: Author, d: int, rng: random.Random) -> int:
    """The preferred option of dimension ``d`` w.p. ``consistency``, else one of the others uniformly."""
    preferred, n = author.style[d], len(STYLE[DIMENSIONS[d]])
    if rng.random() < author.consistency or n == 1:
        return preferred
    return rng.choice([o for o in range(n) if o != preferred])


def message_text(content: Content, options: tuple[int, ...]) -> str:
    """The message that says ``content`` with the given option in each dimension."""
    choice = dict(zip(DIMENSIONS, options))
    parts = [STYLE["greeting"][choice["greeting"]].format(name=content.name),
             STYLE["opener"][choice["opener"]],
             STYLE["request"][choice["request"]].format(task=content.task(choice["lexicon"])),
             STYLE["closer"][choice["closer"]],
             STYLE["signoff"][choice["signoff"]]]
    return " ".join(p for p in parts if p)


def write(author: Author, content: Content, rng: random.Random) -> str:
    """One message of ``author`` saying ``content`` (each dimension drawn independently)."""
    return message_text(content, tuple(_pick(author, d, rng) for d in range(len(DIMENSIONS))))


# --------------------------------------------------------------------------------------------------
# Reading a message back: its style and whether it kept the content
# --------------------------------------------------------------------------------------------------
def parse_style(content: Content, text: str) -> tuple[int | None, ...]:
    """The option of each dimension that ``text`` uses when it says ``content`` (None where none fits).

    Exact string matching: a greeting at the start, a request (frame and lexicon together) saying the
    content's task, openers and closers anywhere, a sign-off at the end. A garbled message gets None in
    the dimensions it garbled.
    """
    text = text.strip()
    greeting = None
    for i, option in sorted(enumerate(STYLE["greeting"]), key=lambda io: -len(io[1])):  # longest first
        words = option.format(name=content.name)
        if text.startswith(words + " ") or text == words:
            greeting = i
            break
    request = lexicon = None
    for r, frame in sorted(enumerate(STYLE["request"]), key=lambda io: -len(io[1])):
        for x in range(len(STYLE["lexicon"])):
            if f" {frame.format(task=content.task(x))}" in f" {text}":
                request, lexicon = r, x
                break
        if request is not None:
            break

    def anywhere(dimension: str) -> int:
        found = [i for i, option in enumerate(STYLE[dimension]) if option and f" {option}" in f" {text}"]
        return found[0] if len(found) == 1 else (0 if not found else None)

    ends = [i for i, option in enumerate(STYLE["signoff"]) if option and text.endswith(f" {option}")]
    signoff = max(ends, key=lambda i: len(STYLE["signoff"][i])) if ends else 0
    return greeting, anywhere("opener"), request, lexicon, anywhere("closer"), signoff


def content_kept(content: Content, text: str) -> bool:
    """Does ``text`` greet the right person and state the requested task (in any style)?"""
    greeting, _, request, _, _, _ = parse_style(content, text)
    return greeting is not None and request is not None


def style_match(author: Author, content: Content, text: str) -> float:
    """Fraction of the six dimensions in which ``text`` uses ``author``'s preferred option."""
    parsed = parse_style(content, text)
    return sum(p == s for p, s in zip(parsed, author.style)) / len(DIMENSIONS)


def style_description(author: Author) -> str:
    """The author's preferred options in words, e.g. ``greeting 'hi {name} ,', opener none, ...``."""
    def shown(dimension: str, option: int) -> str:
        value = STYLE[dimension][option]
        return repr(value) if value else "none"

    return ", ".join(f"{d} {shown(d, o)}" for d, o in zip(DIMENSIONS, author.style))


# --------------------------------------------------------------------------------------------------
# The cast: pretraining, dev and target authors
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CastConfig:
    """How many authors of each group, how consistent they are, and how new the targets are.

    ``min_distance``: every dev and target author differs from every pretraining author (and from each
    other) in at least this many dimensions, so their styles are combinations the base model never saw.
    """

    n_pretrain_authors: int = 48
    n_dev_authors: int = 2
    n_target_authors: int = 3
    consistency: float = 0.85
    min_distance: int = 2
    seed: int = 0

    def __post_init__(self):
        check_ints(self, "n_pretrain_authors", "n_dev_authors", "n_target_authors")
        check_ints(self, "min_distance", low=1, high=len(DIMENSIONS))
        check_ints(self, "seed", low=0)
        check_numbers(self, "consistency", low=0, high=1, open_low=True)
        combinations = 1
        for options in STYLE.values():
            combinations *= len(options)
        total = self.n_pretrain_authors + self.n_dev_authors + self.n_target_authors
        check_that(self, total <= combinations // 100, "n_pretrain_authors",
                   f"small enough that {total} authors fit among {combinations} styles")


@dataclass(frozen=True)
class Cast:
    """The three groups of authors; ``all`` is pretrain + dev + target (the judge's label order)."""

    pretrain: tuple[Author, ...]
    dev: tuple[Author, ...]
    target: tuple[Author, ...]

    @property
    def all(self) -> tuple[Author, ...]:
        return self.pretrain + self.dev + self.target

    def label(self, group: str, index: int) -> int:
        """The judge's label of author ``index`` of ``group`` ("pretrain", "dev" or "target")."""
        groups = {"pretrain": 0, "dev": len(self.pretrain), "target": len(self.pretrain) + len(self.dev)}
        if group not in groups:
            raise ValueError(f"unknown author group {group!r}; the groups are {tuple(groups)}")
        size = len(getattr(self, group))
        if not (isinstance(index, int) and 0 <= index < size):
            raise ValueError(f"unknown {group} author {index!r}: there are {size} (indices 0..{size - 1})")
        return groups[group] + index

    def author(self, group: str, index: int) -> Author:
        return self.all[self.label(group, index)]


def _distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return sum(x != y for x, y in zip(a, b))


def make_cast(config: CastConfig) -> Cast:
    """Draw the authors' styles (deterministic from ``config.seed``); dev and target styles are at least
    ``min_distance`` dimensions away from every pretraining style and from each other."""
    rng = random.Random(config.seed)
    sizes = [len(STYLE[d]) for d in DIMENSIONS]
    pretrain: list[tuple[int, ...]] = []
    while len(pretrain) < config.n_pretrain_authors:
        style = tuple(rng.randrange(n) for n in sizes)
        if style not in pretrain:
            pretrain.append(style)
    held_out: list[tuple[int, ...]] = []
    for _ in range(100_000):
        if len(held_out) == config.n_dev_authors + config.n_target_authors:
            break
        style = tuple(rng.randrange(n) for n in sizes)
        if all(_distance(style, other) >= config.min_distance for other in pretrain + held_out):
            held_out.append(style)
    else:  # pragma: no cover - the config check keeps the cast far below the number of styles
        raise ValueError("could not draw enough new styles; lower min_distance or the number of authors")

    def authors(styles):
        return tuple(Author(s, config.consistency) for s in styles)

    return Cast(authors(pretrain), authors(held_out[:config.n_dev_authors]),
                authors(held_out[config.n_dev_authors:]))


# --------------------------------------------------------------------------------------------------
# Demonstrations, evaluation prompts, the model's text format
# --------------------------------------------------------------------------------------------------
def demonstrations(author: Author, n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[Example]:
    """``n`` demonstrations of ``author`` (contents and messages drawn with ``seed``), with distinct prompts
    that are not in ``exclude`` (the held-out prompts)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of demonstrations must be a positive integer, got {n!r}: DITTO, SFT "
                         "and few-shot prompting all need at least one demonstration")
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    while len(out) < n:
        content = random_content(rng)
        if content.prompt in seen:
            continue
        seen.add(content.prompt)
        out.append(Example(content.prompt, write(author, content, rng)))
    return out


def eval_contents(n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[Content]:
    """``n`` distinct held-out contents (their prompts not in ``exclude``), drawn with ``seed``."""
    rng = random.Random(seed)
    out, seen = [], set(exclude)
    while len(out) < n:
        content = random_content(rng)
        if content.prompt not in seen:
            seen.add(content.prompt)
            out.append(content)
    return out


def few_shot_prompt(demos: list[Example], prompt: str) -> str:
    """The demonstrations in the model's format, then the new prompt: the model writes the next message."""
    return " ".join([*(d.text for d in demos), prompt])


def make_tokenizer() -> WordTokenizer:
    """A word tokenizer whose vocabulary holds every word any author can write (nothing is ``<unk>``)."""
    texts = [SEPARATOR, *NAMES, *EVENTS, *DOCUMENTS, *DAYS, *INTENTS, ":", ",", ".", "!", "?"]
    for template, _, verbs in INTENTS.values():
        texts += [template, *verbs]
    for options in STYLE.values():
        texts += [o.replace("{name}", "").replace("{task}", "") for o in options]
    return WordTokenizer.fit(texts)
