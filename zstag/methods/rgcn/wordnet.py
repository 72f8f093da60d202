"""A small reader of WordNet 3.0's noun hierarchy and the Wu-Palmer similarity over it.

RGCN-PosVAE (Huang et al., BMVC 2020, Sec. 3.2) links two classes when the Wu-Palmer (WUP)
similarity of their WordNet nouns exceeds a threshold. We read the plain-text database that
Debian's `wordnet-base` installs in /usr/share/wordnet (`index.noun`, `data.noun`, `noun.exc`)
ourselves instead of depending on NLTK, and keep only what WUP needs: each noun synset's
hypernyms (instance hypernyms included, as NLTK does) and the lemma -> synsets index.

Where the database is looked for: an explicit folder (`--set wordnet=DIR`, the `folder` argument
below) wins; otherwise the folder named by the environment variable ZSTAG_WORDNET; otherwise
/usr/share/wordnet (`apt-get install wordnet-base` on Debian/Ubuntu). Any folder holding
WordNet 3.0's `data.noun` and `index.noun` (`noun.exc` optional) works, e.g. the `dict/` folder of
Princeton's WordNet-3.0 tarball. Without one, RGCN-PosVAE's graph falls back to cosine edges.

Definitions used throughout (they make WUP a property of per-synset quantities, which is what
lets `zstag.methods.rgcn.graph` vectorise it):

- depth(s): the number of synsets on the *longest* hypernym path from s up to the root
  `entity` (the root has depth 1). Taking the longest path guarantees depth(ancestor) <
  depth(s), so WUP stays in (0, 1] and equals 1 only for a synset with itself.
- LCS(a, b): the common ancestor (each synset is its own ancestor) of greatest depth.
- WUP(a, b) = 2 depth(LCS) / (depth(a) + depth(b))  (Wu & Palmer 1994, with node depths).
  For dog.n.01 / cat.n.01 this gives 2*12/(14+14) = 0.857, the value NLTK prints.
- WUP of two *words* is the maximum over their noun senses (the paper does not say; the max is
  what NLTK-based reference code computes when it loops over synsets). The paper resolves
  ImageNet classes to their exact synsets; zstag cannot, because ImageNet's wnids (WordNet 3.0
  noun offsets such as n01440764) are not available offline: torchvision's weight metadata holds
  only the class names, so an ImageNet class ("crane", "mouse") takes the union of its senses.

Labels are resolved to senses by `WordNet.lookup`: the phrase with spaces as underscores
("sports car" -> sports_car), then its base form (plural "cars" -> car, via noun.exc and the
detachment rules of WordNet's morphy), then the head noun (the last word: "red circle" ->
circle). A label with none of these has no senses and is left to the caller's fallback.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/wordnet")  # where Debian's wordnet-base installs WordNet 3.0
ENV_VAR = "ZSTAG_WORDNET"  # names another WordNet dict folder (tests point it at a miniature)
REQUIRED_FILES = ("index.noun", "data.noun")

# Morphy's detachment rules for nouns (suffix, replacement), from WordNet's morph(7) page.
_NOUN_RULES = (
    ("s", ""),
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
)


def wordnet_dir(folder: str | Path | None = None) -> Path:
    """The WordNet folder to use: `folder` if given, else $ZSTAG_WORDNET if set, else /usr/share/wordnet."""
    if folder:
        return Path(folder)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def has_wordnet(folder: str | Path | None) -> bool:
    """True when `folder` (default: `wordnet_dir()`) holds the noun database files."""
    root = wordnet_dir(folder)
    return all((root / name).is_file() for name in REQUIRED_FILES)


class WordNet:
    """The noun hierarchy of one WordNet 3.0 dict folder, with synsets numbered 0..S-1."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = wordnet_dir(folder)
        self.offsets: list[int] = []  # synset id -> byte offset in data.noun (WordNet's own id)
        self.names: list[str] = []  # synset id -> its first lemma, for messages and tests
        self.hypernyms: list[tuple[int, ...]] = []  # synset id -> hypernym ids (@ and @i)
        self.index: dict[str, tuple[int, ...]] = {}  # lemma -> synset ids, in sense order
        self.exceptions: dict[str, tuple[str, ...]] = {}  # irregular plural -> base forms
        self._parse()
        self.depths = self._depths()
        self._ancestors: dict[int, np.ndarray] = {}

    # -- parsing ---------------------------------------------------------------------------
    def _parse(self) -> None:
        id_of: dict[int, int] = {}
        raw_hypernyms: list[list[int]] = []
        with open(self.folder / "data.noun", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):  # the licence header
                    continue
                fields = line.split(" | ", 1)[0].split()
                # offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [sym offset pos st]...
                n_words = int(fields[3], 16)
                p_at = 4 + 2 * n_words
                pointers = fields[p_at + 1 : p_at + 1 + 4 * int(fields[p_at])]
                id_of[int(fields[0])] = len(self.offsets)
                self.offsets.append(int(fields[0]))
                self.names.append(fields[4].lower())
                raw_hypernyms.append(
                    [int(pointers[i + 1]) for i in range(0, len(pointers), 4) if pointers[i] in ("@", "@i")]
                )
        self.hypernyms = [tuple(id_of[o] for o in hs) for hs in raw_hypernyms]
        with open(self.folder / "index.noun", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):
                    continue
                fields = line.split()
                # lemma pos synset_cnt p_cnt [ptr]... sense_cnt tagsense_cnt [offset]...
                n_synsets = int(fields[2])
                self.index[fields[0]] = tuple(id_of[int(o)] for o in fields[len(fields) - n_synsets :])
        exc = self.folder / "noun.exc"
        if exc.is_file():
            for line in exc.read_text(encoding="utf-8", errors="replace").splitlines():
                words = line.split()
                if len(words) >= 2:
                    self.exceptions[words[0]] = tuple(words[1:])

    def _depths(self) -> np.ndarray:
        """depth(s) = 1 + max depth of its hypernyms (roots: 1), by memoised iteration."""
        depth = np.zeros(len(self.offsets), dtype=np.int64)
        for start in range(len(self.offsets)):
            stack = [start]
            while stack:
                s = stack[-1]
                if depth[s]:
                    stack.pop()
                    continue
                pending = [h for h in self.hypernyms[s] if not depth[h]]
                if pending:
                    stack.extend(pending)
                else:
                    depth[s] = 1 + max((int(depth[h]) for h in self.hypernyms[s]), default=0)
                    stack.pop()
        return depth

    # -- lookup ----------------------------------------------------------------------------
    def synsets(self, word: str) -> tuple[int, ...]:
        """Noun senses of one WordNet lemma (underscores for spaces), trying base forms (morphy)."""
        word = word.lower()
        if word in self.index:
            return self.index[word]
        bases = list(self.exceptions.get(word, ()))
        bases += [word[: -len(suffix)] + repl for suffix, repl in _NOUN_RULES if word.endswith(suffix)]
        senses: list[int] = []
        for base in bases:
            senses += [s for s in self.index.get(base, ()) if s not in senses]
        return tuple(senses)

    def lookup(self, label: str) -> tuple[int, ...]:
        """Noun senses of a free-text label: the phrase, else its head noun; () when neither exists.

        A comma-separated name ("tabby, tabby cat", ImageNet's synonym lists) takes the union of
        its alternatives' senses.
        """
        senses: list[int] = []
        for alternative in label.split(","):
            senses += [s for s in self._lookup_phrase(alternative) if s not in senses]
        return tuple(senses)

    def _lookup_phrase(self, phrase: str) -> tuple[int, ...]:
        words = phrase.lower().split()
        if not words:
            return ()
        joined = "_".join(words)
        for key in (joined, joined.replace("-", "_")):
            found = self.synsets(key)
            if found:
                return found
        head = re.split(r"[_\-]", words[-1])[-1]
        return self.synsets(head) if (len(words) > 1 or head != words[-1]) and head else ()

    # -- similarity ------------------------------------------------------------------------
    def ancestors(self, synset: int) -> np.ndarray:
        """Ids of the hypernym closure of `synset`, itself included (sorted, memoised)."""
        found = self._ancestors.get(synset)
        if found is None:
            parts = [np.array([synset], dtype=np.int64)] + [self.ancestors(h) for h in self.hypernyms[synset]]
            found = np.unique(np.concatenate(parts))
            self._ancestors[synset] = found
        return found

    def wup_synsets(self, a: int, b: int) -> float:
        """Wu-Palmer similarity of two synsets: 2 depth(LCS) / (depth(a) + depth(b))."""
        common = np.intersect1d(self.ancestors(a), self.ancestors(b), assume_unique=True)
        if common.size == 0:
            return 0.0
        return 2.0 * float(self.depths[common].max()) / float(self.depths[a] + self.depths[b])

    def wup(self, word_a: str, word_b: str) -> float | None:
        """WUP of two labels: the max over their noun senses; None if either is not in WordNet."""
        senses_a, senses_b = self.lookup(word_a), self.lookup(word_b)
        if not senses_a or not senses_b:
            return None
        return max(self.wup_synsets(a, b) for a in senses_a for b in senses_b)


@lru_cache(maxsize=4)
def _load(folder: str) -> WordNet:
    return WordNet(folder)


def load_wordnet(folder: str | Path | None = None) -> WordNet | None:
    """The parsed WordNet in `folder` (default: `wordnet_dir()`), shared per process; None if absent."""
    root = wordnet_dir(folder)
    if not has_wordnet(root):
        return None
    return _load(str(root.resolve()))
