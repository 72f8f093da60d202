"""Miniature WordNet databases for the tests, in WordNet 3.0's own file format.

The tests never depend on a WordNet installed on the machine: they write one of these folders
(`data.noun`, `index.noun`, `noun.exc`, the files `zstag.methods.rgcn.wordnet` reads) and point
the code at it with `--set wordnet=DIR` / the `wordnet=` argument or the ZSTAG_WORDNET variable.

Each synset is (offset, lemmas, hypernym offsets); depth = synsets on the longest root path.
"""

from __future__ import annotations

from pathlib import Path

# The hand-computed hierarchy of tests/test_wordnet.py:
#   entity(1) > object(2) > animal(3) > dog(4) > puppy(5)      puppy also < pet(2) < entity
#                                     > cat(4) > jaguar_cat(5)
#             > object(2) > artifact(3) > car(4) > sports_car(5), jaguar_car(5)
MINI = [
    (1, ["entity"], []),
    (2, ["object"], [1]),
    (3, ["animal"], [2]),
    (4, ["dog"], [3]),
    (5, ["cat"], [3]),
    (6, ["artifact"], [2]),
    (7, ["puppy"], [4, 9]),
    (8, ["car", "auto"], [6]),
    (9, ["pet"], [1]),
    (10, ["jaguar"], [5]),
    (11, ["jaguar"], [8]),
    (12, ["sports_car"], [8]),
    (13, ["mouse"], [3]),
]

# MINI plus the nouns of the synthetic tagging set (tests/synth.py: "<colour> <shape>") and of the
# test backbones' external classes, for RGCN-PosVAE's tests. Senses follow real WordNet 3.0 where
# it matters for the graph: square, circle and triangle are plane figures (WUP 0.8 here), and
# "square" (an old-fashioned person) and "dog" (a dull unattractive man) both have person senses,
# which is how WordNet links "dog" to "purple square" (WUP 2*3/(5+4) = 0.67 here).
TAGGING = MINI + [
    (20, ["abstraction"], [1]),
    (21, ["attribute"], [20]),
    (22, ["shape", "form"], [21]),
    (23, ["square"], [22]),  # square.n.01, the plane figure
    (24, ["circle"], [22]),
    (25, ["triangle", "trigon"], [22]),
    (26, ["person", "individual"], [2]),
    (27, ["man"], [26]),
    (28, ["dog"], [27]),  # dog.n.03, "informal term for a man" ("you lucky dog")
    (29, ["square", "square_toes"], [26]),  # square.n.02, "someone who doesn't understand what is going on"
    (30, ["fish"], [3]),
    (31, ["goldfish"], [30]),
    (32, ["plant", "flora"], [2]),
    (33, ["daisy"], [32]),
    (34, ["ball"], [6]),
    (35, ["golf_ball"], [34]),
    (36, ["balloon"], [6]),
]


def write_wordnet(folder: Path, synsets: list[tuple[int, list[str], list[int]]] = MINI) -> Path:
    """Write `synsets` as a WordNet 3.0 dict folder (data.noun, index.noun, noun.exc); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    data = ["  1 This is a miniature WordNet for tests (licence header lines start with spaces)."]
    senses: dict[str, list[int]] = {}
    for offset, lemmas, hypernyms in synsets:
        words = " ".join(f"{w} 0" for w in lemmas)
        ptrs = " ".join(f"@ {h:08d} n 0000" for h in hypernyms)
        line = f"{offset:08d} 03 n {len(lemmas):02x} {words} {len(hypernyms):03d} {ptrs} | gloss of {lemmas[0]}"
        data.append(line.replace("  ", " "))
        for w in lemmas:
            senses.setdefault(w, []).append(offset)
    index = ["  1 licence header"]
    for lemma in sorted(senses):
        offs = senses[lemma]
        index.append(f"{lemma} n {len(offs)} 1 @ {len(offs)} 0 " + " ".join(f"{o:08d}" for o in offs))
    (folder / "data.noun").write_text("\n".join(data) + "\n")
    (folder / "index.noun").write_text("\n".join(index) + "\n")
    (folder / "noun.exc").write_text("mice mouse\n")
    return folder


def write_mini_wordnet(folder: Path) -> Path:
    return write_wordnet(folder, MINI)


def write_tagging_wordnet(folder: Path) -> Path:
    return write_wordnet(folder, TAGGING)
