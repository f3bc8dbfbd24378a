"""Extract the WordNet 3.0 noun subset that the geometry chapter (book/06-geometry.md) ships in data/wordnet/.

Source: Princeton WordNet 3.0 as installed by Debian's ``wordnet-base`` package (database files under
/usr/share/wordnet), read with nltk's :class:`WordNetCorpusReader`. Run (as a user who can install it):

    apt-get install -y wordnet-base
    .venv/bin/python tools/make_wordnet_subset.py            # writes data/wordnet/nouns.tsv + LICENSE

What is kept (deterministic: everything is sorted, the JSON is written with sorted keys):

- every noun synset in the hyponym closure of the ``ROOTS`` below (animals and plants), plus the synsets
  on the hypernym paths from those roots up to ``entity.n.01`` (so that path similarities are defined);
- for each synset: its single-word lemmas (letters only, lowercased; multi-word lemmas such as
  ``golden_retriever`` and names with digits or hyphens are dropped, because the chapter's model has one
  token per lemma) and its hypernym edges restricted to the subset (both ``hypernyms`` and
  ``instance_hypernyms``); no definitions (they would triple the size);
- synsets left with no single-word lemma and no kept hyponym are pruned (repeatedly), since they carry
  no token.

Format (``nouns.tsv``): ``#`` comment lines (source, roots, counts), then one line per synset, sorted by
name: ``name<TAB>lemmas separated by spaces<TAB>hypernyms separated by spaces``.

nltk 3.10 cannot read /usr/share/wordnet directly (see ../shared/TOOLING.md): the files are copied into a
temporary nltk data directory, the ``lexnames`` file is generated from the man page ``lexnames.5WN``,
and ``map_wn`` (the Open Multilingual Wordnet mapping, not needed here) is disabled.
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDNET_DIR = Path("/usr/share/wordnet")
LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")
COPYRIGHT = Path("/usr/share/doc/wordnet-base/copyright")
ROOTS = ("animal.n.01", "plant.n.02")
WORD = re.compile(r"^[a-z]+$")


def lexnames_from_man(path: Path = LEXNAMES_MAN) -> str:
    """The ``lexnames`` file (``NN<TAB>name<TAB>category``) rebuilt from the table in lexnames.5WN."""
    text = gzip.open(path, "rt").read()
    categories = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
    lines = []
    for match in re.finditer(r"^(\d\d)\t(\w+\.\w+)\s*\t", text, re.M):
        number, name = match.groups()
        lines.append(f"{number}\t{name}\t{categories[name.split('.')[0]]}")
    if len(lines) != 45 or [int(line[:2]) for line in lines] != list(range(45)):
        raise RuntimeError(f"could not parse the 45 lexicographer files from {path}")
    return "\n".join(lines) + "\n"


def open_wordnet(wordnet_dir: Path = WORDNET_DIR):
    """nltk's WordNet 3.0 reader on a private copy of the Debian database files."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if not (wordnet_dir / "data.noun").is_file():
        raise FileNotFoundError(f"no WordNet database in {wordnet_dir}: apt-get install -y wordnet-base")

    class Reader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):  # the OMW mapping needs nltk_data; not used here
            return None

    data_root = Path(tempfile.mkdtemp(prefix="paperlab-wordnet-"))
    corpus = data_root / "corpora" / "wordnet"
    corpus.mkdir(parents=True)
    for path in sorted(wordnet_dir.iterdir()):
        if path.is_file() and not path.is_symlink():
            shutil.copyfile(path, corpus / path.name)
    (corpus / "lexnames").write_text(lexnames_from_man())
    nltk.data.path.insert(0, str(data_root))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        return Reader(nltk.data.find("corpora/wordnet"), None)


def extract(wn, roots=ROOTS) -> dict:
    """The subset as a JSON-able dict (see the module docstring)."""
    keep: set = set()
    for name in roots:
        root = wn.synset(name)
        keep.add(root)
        keep.update(root.closure(lambda s: s.hyponyms() + s.instance_hyponyms()))
        for path in root.hypernym_paths():
            keep.update(path)
    synsets = {}
    for synset in sorted(keep, key=lambda s: s.name()):
        lemmas = sorted({name.lower() for name in synset.lemma_names() if WORD.match(name.lower())})
        parents = sorted(p.name() for p in synset.hypernyms() + synset.instance_hypernyms() if p in keep)
        synsets[synset.name()] = {"lemmas": lemmas, "hypernyms": parents}
    children: dict[str, set] = {name: set() for name in synsets}
    for name, entry in synsets.items():
        for parent in entry["hypernyms"]:
            children[parent].add(name)
    pruned = True
    while pruned:  # drop token-less leaves until none is left
        pruned = False
        for name in sorted(synsets):
            if not synsets[name]["lemmas"] and not children[name]:
                for parent in synsets.pop(name)["hypernyms"]:
                    children[parent].discard(name)
                pruned = True
    return {
        "source": "Princeton WordNet 3.0 (Debian package wordnet-base), via nltk's WordNetCorpusReader",
        "made_by": "tools/make_wordnet_subset.py",
        "roots": list(roots),
        "n_synsets": len(synsets),
        "n_lemmas": len({lemma for s in synsets.values() for lemma in s["lemmas"]}),
        "synsets": synsets,
    }


def to_tsv(subset: dict) -> str:
    """The subset in the shipped format (see the module docstring)."""
    lines = [
        f"# {subset['source']}",
        f"# made by {subset['made_by']}; licence: LICENSE (WordNet 3.0)",
        f"# roots: {' '.join(subset['roots'])}",
        f"# n_synsets: {subset['n_synsets']}",
        f"# n_lemmas: {subset['n_lemmas']}",
        "# name\tlemmas\thypernyms",
    ]
    for name, entry in sorted(subset["synsets"].items()):
        lines.append(f"{name}\t{' '.join(entry['lemmas'])}\t{' '.join(entry['hypernyms'])}")
    return "\n".join(lines) + "\n"


def licence_text(path: Path = COPYRIGHT) -> str:
    """The WordNet 3.0 licence, as quoted in the Debian package's copyright file."""
    text = path.read_text()
    match = re.search(r"^License: WordNet3\.0\n(.*?)(?=^\S|\Z)", text, re.M | re.S)
    if not match:
        raise RuntimeError(f"no 'License: WordNet3.0' paragraph in {path}")
    body = "\n".join(line[1:] if line.startswith(" ") else line for line in match.group(1).splitlines())
    body = body.replace("\n.\n", "\n\n").strip()
    return "WordNet Release 3.0\n\n" + body + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "wordnet")
    args = parser.parse_args()
    wn = open_wordnet()
    dog = wn.synset("dog.n.01")
    assert len(dog.hypernym_paths()) == 2, "sanity check: dog has two hypernym paths in WordNet 3.0"
    subset = extract(wn)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nouns.tsv").write_text(to_tsv(subset))
    (args.out / "LICENSE").write_text(licence_text())
    size = (args.out / "nouns.tsv").stat().st_size
    print(
        f"{subset['n_synsets']} synsets, {subset['n_lemmas']} lemmas -> {args.out / 'nouns.tsv'} "
        f"({size / 1024:.0f} KiB)"
    )


if __name__ == "__main__":
    main()
