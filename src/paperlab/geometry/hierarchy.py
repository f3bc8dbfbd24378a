"""The WordNet noun hierarchy the chapter uses, read from the subset shipped in ``data/wordnet/nouns.tsv``
(made by ``tools/make_wordnet_subset.py`` from WordNet 3.0; no WordNet install is needed at run time),
and the extraction of *concepts* from it.

A concept is a noun synset ``w`` with its token set ``Y(w)``: the lemmas of ``w`` and of all its hyponyms
(recursively) that are single tokens of the vocabulary at hand (Park et al., 2024, section 5; their
``hierarchical/`` code). Concepts with fewer than ``min_tokens`` tokens are dropped, and a concept that is
its parent's only child is merged into the parent when the parent has fewer than ``MERGE_MARGIN`` (5)
lemmas beyond it (the reference code's rule for close pairs; identical sets are the extreme case).
Each concept's parent in the concept tree is its nearest ancestor concept along the hypernym paths (ties:
shorter path, then alphabetical), so the concept hierarchy is a tree even where WordNet has several
hypernyms. Everything is sorted, so the extraction is deterministic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

__all__ = ["DATA_FILE", "Hierarchy", "Concepts", "load_hierarchy", "shipped_hierarchy", "unknown_synsets",
           "extract_concepts", "concept_tokens", "MERGE_MARGIN"]

DATA_FILE = Path(__file__).resolve().parents[3] / "data" / "wordnet" / "nouns.tsv"


@dataclass(frozen=True)
class Hierarchy:
    """Noun synsets (``"mammal.n.01"``), their single-word lemmas and hypernym edges."""

    lemmas: dict[str, tuple[str, ...]]
    hypernyms: dict[str, tuple[str, ...]]
    header: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        unknown = sorted({p for ps in self.hypernyms.values() for p in ps} - set(self.lemmas))
        if unknown:
            raise ValueError(f"hypernym edges point to synsets not in the hierarchy: {unknown[:5]}")

    # ------------------------------------------------------------------------------------------ lookups
    def check(self, synset: str) -> str:
        """``synset`` if it is in the hierarchy, else a KeyError naming it (and a close name if any)."""
        if synset not in self.lemmas:
            head = synset.split(".")[0]
            close = sorted(s for s in self.lemmas if s.split(".")[0] == head)[:3]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(
                f"unknown synset {synset!r}: not in the WordNet subset ({len(self.lemmas)} "
                f"noun synsets under {', '.join(self.roots)}){hint}"
            )
        return synset

    @cached_property
    def hyponyms(self) -> dict[str, tuple[str, ...]]:
        children: dict[str, list[str]] = {s: [] for s in self.lemmas}
        for s, parents in self.hypernyms.items():
            for p in parents:
                children[p].append(s)
        return {s: tuple(sorted(c)) for s, c in children.items()}

    @cached_property
    def roots(self) -> tuple[str, ...]:
        declared = tuple(self.header.get("roots", "").split())
        return declared or tuple(sorted(s for s, p in self.hypernyms.items() if not p))

    def descendants(self, synset: str) -> list[str]:
        """``synset`` and all its hyponyms, recursively (sorted, each once)."""
        seen, stack = {self.check(synset)}, [synset]
        while stack:
            for child in self.hyponyms[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return sorted(seen)

    def ancestors(self, synset: str) -> dict[str, int]:
        """Every hypernym of ``synset`` (itself included) -> its shortest distance in edges."""
        distance, queue = {self.check(synset): 0}, deque([synset])
        while queue:
            s = queue.popleft()
            for p in self.hypernyms[s]:
                if p not in distance:
                    distance[p] = distance[s] + 1
                    queue.append(p)
        return distance

    def path_similarity(self, a: str, b: str) -> float:
        """WordNet's path similarity ``1 / (1 + shortest hypernym/hyponym path length)`` between two synsets
        (as nltk's ``path_similarity``: the path goes up to a common hypernym and down); 0 if none."""
        up_a, up_b = self.ancestors(a), self.ancestors(b)
        common = set(up_a) & set(up_b)
        if not common:
            return 0.0
        return 1.0 / (1 + min(up_a[c] + up_b[c] for c in common))

    def tokens(self, synset: str, vocabulary: Iterable[str] | None = None) -> list[str]:
        """``Y(w)``: lemmas of ``synset`` and its hyponyms (in ``vocabulary`` if given), sorted."""
        words = {lemma for s in self.descendants(synset) for lemma in self.lemmas[s]}
        if vocabulary is not None:
            words &= set(vocabulary)
        return sorted(words)

    @cached_property
    def all_lemmas(self) -> list[str]:
        return sorted({lemma for lemmas in self.lemmas.values() for lemma in lemmas})


@cache
def shipped_hierarchy() -> Hierarchy:
    """The shipped subset (:func:`load_hierarchy` with its default path), read once per process: the
    configs check the synsets they name against it before any work starts."""
    return load_hierarchy()


def unknown_synsets(synsets: Iterable[str], roots: Iterable[str] = ()) -> str | None:
    """Why some of ``synsets`` cannot be used, or None: not in the shipped subset, or (when ``roots`` are
    given) not under any of them."""
    hierarchy, roots = shipped_hierarchy(), tuple(roots)
    for synset in synsets:
        try:
            hierarchy.check(synset)
        except KeyError as err:
            return err.args[0]
        if roots and not set(roots) & set(hierarchy.ancestors(synset)):
            return f"{synset!r} is not under the corpus roots {', '.join(roots)}"
    return None


def load_hierarchy(path: str | Path | None = None) -> Hierarchy:
    """Read the shipped subset (``data/wordnet/nouns.tsv``): ``#`` header lines, then
    ``name<TAB>lemmas<TAB>hypernyms`` per synset."""
    path = Path(path) if path is not None else DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"WordNet subset not found at {path}; regenerate it with tools/make_wordnet_subset.py"
        )
    lemmas, hypernyms, header = {}, {}, {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("#"):
            if ":" in line and "\t" not in line:
                key, value = line[1:].split(":", 1)
                header[key.strip()] = value.strip()
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected 3 tab-separated fields, got {len(parts)}")
        name, words, parents = parts
        lemmas[name] = tuple(words.split())
        hypernyms[name] = tuple(parents.split())
    hierarchy = Hierarchy(lemmas, hypernyms, header)
    if "n_synsets" in header and int(header["n_synsets"]) != len(lemmas):
        raise ValueError(f"{path}: header says {header['n_synsets']} synsets, the file has {len(lemmas)}")
    return hierarchy


@dataclass(frozen=True)
class Concepts:
    """The concept tree: ``names`` in depth-first (hierarchy) order, ``tokens[name]`` = Y(w) (sorted),
    ``parent[name]`` (None for a root) and ``depth[name]`` (0 for a root)."""

    names: tuple[str, ...]
    tokens: dict[str, tuple[str, ...]]
    parent: dict[str, str | None]
    depth: dict[str, int]
    min_tokens: int

    def children(self, name: str) -> list[str]:
        self.check(name)
        return [c for c in self.names if self.parent[c] == name]

    def check(self, name: str) -> str:
        if name not in self.tokens:
            raise KeyError(
                f"{name!r} is not a concept here ({len(self.names)} concepts with at least "
                f"{self.min_tokens} tokens each); pick one of e.g. {', '.join(self.names[:5])}"
            )
        return name

    def ancestors(self, name: str) -> list[str]:
        """The concept path from the root down to ``name`` (included)."""
        path = [self.check(name)]
        while self.parent[path[-1]] is not None:
            path.append(self.parent[path[-1]])
        return path[::-1]

    def pairs(self) -> list[tuple[str, str]]:
        """Every (parent, child) edge of the concept tree, in hierarchy order."""
        return [(self.parent[c], c) for c in self.names if self.parent[c] is not None]


MERGE_MARGIN = 5  # an only child is merged into its parent unless the parent has this many lemmas beyond it


def extract_concepts(
    hierarchy: Hierarchy, vocabulary: Iterable[str], min_tokens: int = 10, roots: Iterable[str] | None = None
) -> Concepts:
    """The concepts under ``roots`` (default: the hierarchy's roots) whose token sets, restricted to
    ``vocabulary``, have at least ``min_tokens`` tokens. Raises if a root is unknown or too small."""
    if not isinstance(min_tokens, int) or min_tokens < 2:
        raise ValueError(
            f"min_tokens must be an int >= 2 (a covariance needs two tokens), got {min_tokens!r}"
        )
    vocabulary = set(vocabulary)
    if isinstance(roots, str):
        raise ValueError(f"roots must be a sequence of synset names, not one string: wrap it, ({roots!r},)")
    roots = tuple(roots) if roots is not None else hierarchy.roots
    if not roots or not all(isinstance(r, str) for r in roots):
        raise ValueError(f"roots must be a non-empty sequence of synset names (e.g. 'animal.n.01'), "
                         f"got {roots!r}")
    for root in roots:
        hierarchy.check(root)
    candidates: dict[str, tuple[str, ...]] = {}
    for root in roots:
        for synset in hierarchy.descendants(root):
            if synset not in candidates:
                candidates[synset] = tuple(hierarchy.tokens(synset, vocabulary))
    for root in roots:
        if len(candidates[root]) < min_tokens:
            raise ValueError(
                f"root concept {root!r} has {len(candidates[root])} tokens in the vocabulary, "
                f"fewer than min_tokens = {min_tokens}"
            )
    kept = {s for s, toks in candidates.items() if len(toks) >= min_tokens}

    def nearest_parent(synset: str) -> str | None:
        distance = hierarchy.ancestors(synset)
        above = [(d, s) for s, d in distance.items() if d > 0 and s in kept]
        return min(above)[1] if above else None

    # merge only children (after the reference code, hierarchical/category.py): deepest first, a kept
    # synset that is its kept parent's only child, and leaves the parent fewer than MERGE_MARGIN lemmas of
    # its own, is collapsed into the parent (which keeps its name and tokens; the child's children move up).
    # An identical token set (0 lemmas beyond) is the extreme case. The reference also collapses every only
    # child with a single parent; our concept tree gives each synset one parent, so we keep only children
    # that differ from their parent by MERGE_MARGIN or more lemmas (see the chapter).
    height = {s: max(hierarchy.ancestors(s).values(), default=0) for s in kept}
    changed = True
    while changed:
        changed = False
        parents = {s: nearest_parent(s) for s in kept}
        only_children: dict[str, list[str]] = {}
        for s, p in parents.items():
            if p is not None:
                only_children.setdefault(p, []).append(s)
        for synset in sorted(kept, key=lambda s: (-height[s], s)):
            p = parents[synset]
            if p is not None and only_children[p] == [synset] and \
                    len(set(candidates[p]) - set(candidates[synset])) < MERGE_MARGIN:
                kept.discard(synset)
                changed = True
                break
    parent = {s: nearest_parent(s) for s in sorted(kept)}
    children: dict[str | None, list[str]] = {}
    for s, p in parent.items():
        children.setdefault(p, []).append(s)
    names, depth = [], {}
    stack = [(r, 0) for r in sorted(children.get(None, []), reverse=True)]
    while stack:  # depth-first, children in alphabetical order
        s, d = stack.pop()
        names.append(s)
        depth[s] = d
        stack.extend((c, d + 1) for c in sorted(children.get(s, []), reverse=True))
    return Concepts(tuple(names), {s: candidates[s] for s in names}, parent, depth, min_tokens)


def concept_tokens(
    hierarchy: Hierarchy, synset: str, vocabulary: Iterable[str], min_tokens: int
) -> list[str]:
    """Y(w) for one synset, raising if it has fewer than ``min_tokens`` tokens in ``vocabulary``."""
    tokens = hierarchy.tokens(synset, vocabulary)
    if len(tokens) < min_tokens:
        raise ValueError(
            f"concept {synset!r} has {len(tokens)} tokens in the vocabulary, fewer than "
            f"min_tokens = {min_tokens}: too few to estimate its vector"
        )
    return tokens
