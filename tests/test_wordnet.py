"""WordNet reader, Wu-Palmer similarity and the RGCN-PosVAE class graph built from it.

Most checks run on a hand-written miniature WordNet (same file format as WordNet 3.0), so the
expected numbers can be derived by hand; a few run on the real database when it is installed.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import synth  # noqa: E402
from wordnet_fixture import write_mini_wordnet  # noqa: E402

from zstag.methods.rgcn import graph as kg  # noqa: E402
from zstag.methods.rgcn.wordnet import DEFAULT_DIR, ENV_VAR, WordNet, has_wordnet, load_wordnet, wordnet_dir  # noqa: E402

# The real database is optional: everything else runs on the miniature of tests/wordnet_fixture.py.
real_wordnet = pytest.mark.skipif(
    not has_wordnet(DEFAULT_DIR),
    reason="WordNet 3.0 not installed in /usr/share/wordnet (apt-get install wordnet-base); "
    "the miniature WordNet tests cover the same code",
)


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> WordNet:
    return WordNet(write_mini_wordnet(tmp_path_factory.mktemp("wn")))


def sid(wn: WordNet, offset: int) -> int:
    return wn.offsets.index(offset)


def unit(n: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return synth.random_label_vectors(n, dim, seed)


# -- reader and WUP on the miniature ---------------------------------------------------------------


def test_depth_is_the_longest_root_path(mini):
    # puppy has paths entity>object>animal>dog>puppy (5 nodes) and entity>pet>puppy (3 nodes).
    assert mini.depths[sid(mini, 7)] == 5
    assert mini.depths[sid(mini, 1)] == 1
    assert mini.depths[sid(mini, 9)] == 2
    assert sorted(mini.offsets[a] for a in mini.ancestors(sid(mini, 7))) == [1, 2, 3, 4, 7, 9]


def test_wup_on_hand_computed_pairs(mini):
    """WUP = 2 depth(LCS) / (depth(a) + depth(b)) with the depths drawn in MINI."""
    assert mini.wup("dog", "cat") == pytest.approx(2 * 3 / (4 + 4))  # LCS animal
    assert mini.wup("puppy", "cat") == pytest.approx(2 * 3 / (5 + 4))  # LCS animal
    assert mini.wup("puppy", "pet") == pytest.approx(2 * 2 / (5 + 2))  # LCS pet, via the short path
    assert mini.wup("dog", "car") == pytest.approx(0.5)  # LCS object: 2*2/(4+4)
    assert mini.wup("cat", "pet") == pytest.approx(2 * 1 / (4 + 2))  # only the root in common
    assert mini.wup("dog", "dog") == 1.0


def test_word_wup_is_the_max_over_senses(mini):
    # jaguar: the cat (depth 5, LCS with dog = animal: 6/9) or the car (LCS object: 4/9).
    assert mini.wup("jaguar", "dog") == pytest.approx(6 / 9)
    assert mini.wup("jaguar", "sports car") == pytest.approx(2 * 4 / (5 + 5))  # the car sense, LCS car


def test_lookup_phrases_plurals_and_head_nouns(mini):
    assert mini.lookup("Sports Car") == (sid(mini, 12),)  # underscored phrase
    assert mini.lookup("dogs") == (sid(mini, 4),)  # morphy rule -s
    assert mini.lookup("mice") == (sid(mini, 13),)  # noun.exc
    assert mini.lookup("red car") == (sid(mini, 8),)  # head noun
    assert mini.lookup("auto") == (sid(mini, 8),)  # a synonym lemma
    assert mini.lookup("kitten, cat") == (sid(mini, 5),)  # comma-separated alternatives
    assert mini.lookup("zebra") == ()
    assert mini.wup("zebra", "dog") is None


def test_missing_folder_is_reported_not_raised(tmp_path):
    assert not has_wordnet(tmp_path)
    assert load_wordnet(tmp_path) is None


def test_location_argument_then_environment_then_debian_default(tmp_path, monkeypatch):
    folder = write_mini_wordnet(tmp_path / "wn")
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert wordnet_dir() == wordnet_dir("") == DEFAULT_DIR
    monkeypatch.setenv(ENV_VAR, str(folder))
    assert wordnet_dir() == folder and has_wordnet(None)
    assert load_wordnet().offsets == WordNet(folder).offsets  # the default now reads the miniature
    assert wordnet_dir(tmp_path / "other") == tmp_path / "other"  # an explicit folder wins
    assert not has_wordnet(tmp_path / "other")


# -- the real WordNet 3.0 -----------------------------------------------------------------------


@real_wordnet
def test_real_wordnet_dog_cat_exact_and_ordering():
    """dog.n.01 (02084071) and cat.n.01 (02121620), traced in data.noun:

    entity > physical_entity > object > whole > living_thing > organism > animal > chordate >
    vertebrate > mammal > placental > carnivore > canine > dog            (14 synsets)
    entity > ... > animal > domestic_animal > dog                          (9: shorter, ignored)
    entity > ... > placental > carnivore > feline > cat                    (14 synsets)

    LCS = carnivore at depth 12, so WUP = 2*12 / (14 + 14) = 6/7 (NLTK prints 0.857 too).
    """
    wn = load_wordnet(DEFAULT_DIR)
    dog = wn.offsets.index(2084071)
    cat = wn.offsets.index(2121620)
    assert (wn.depths[dog], wn.depths[cat]) == (14, 14)
    assert wn.wup_synsets(dog, cat) == pytest.approx(24 / 28)
    assert wn.wup("dog", "cat") > wn.wup("dog", "car")
    assert wn.wup("sports car", "car") > 0.9
    assert wn.lookup("cars") == wn.lookup("car")


# -- graph construction ---------------------------------------------------------------------------


def build(names, vectors, folder, **kw):
    kg.clear_memory_cache()
    return kg.build_graph(names, vectors, wordnet=folder, cache_dir=False, **kw)


def test_graph_threshold_self_loops_and_symmetry(tmp_path):
    folder = write_mini_wordnet(tmp_path / "wn")
    names = ["dog", "cat", "car", "puppy", "pet", "sports car"]
    adj = build(names, unit(len(names)), folder, wup_threshold=0.5, cosine_threshold=0.99).dense()
    assert adj.diagonal().all()
    assert (adj == adj.T).all()
    i = {n: k for k, n in enumerate(names)}
    assert adj[i["dog"], i["cat"]]  # 0.75
    assert not adj[i["dog"], i["car"]]  # exactly 0.5 is not "greater than"
    assert adj[i["puppy"], i["pet"]]  # 4/7
    assert not adj[i["cat"], i["pet"]]  # 1/3
    assert adj[i["car"], i["sports car"]]  # 8/9
    # Lower the threshold below 0.5 and dog-car appears.
    assert build(names, unit(len(names)), folder, wup_threshold=0.49).dense()[i["dog"], i["car"]]


def test_graph_matches_pairwise_wup(tmp_path):
    """The vectorised construction equals WordNet.wup pair by pair (at two thresholds)."""
    folder = write_mini_wordnet(tmp_path / "wn")
    wn = WordNet(folder)
    names = ["dog", "cat", "car", "puppy", "pet", "jaguar", "sports car", "mice", "animal", "entity", "object"]
    for t in (0.3, 0.6):
        adj = build(names, unit(len(names)), folder, wup_threshold=t).dense()
        expected = np.array([[a == b or wn.wup(a, b) > t for b in names] for a in names])
        assert (adj == expected).all()


@real_wordnet
def test_graph_matches_pairwise_wup_on_real_wordnet():
    wn = load_wordnet(DEFAULT_DIR)
    rng = random.Random(1)
    names = rng.sample(sorted(w for w in wn.index if "_" not in w), 60) + ["tabby cat", "sports car", "coral reef"]
    kg.clear_memory_cache()
    adj = kg.build_graph(names, unit(len(names)), 0.5, wordnet=DEFAULT_DIR, cache_dir=False).dense()
    expected = np.array([[a == b or wn.wup(a, b) > 0.5 for b in names] for a in names])
    assert (adj == expected).all()


def test_cosine_edges_for_labels_outside_wordnet(tmp_path):
    folder = write_mini_wordnet(tmp_path / "wn")
    names = ["dog", "car", "qwzx", "blorf"]
    v = torch.zeros(4, 4)
    v[0, 0] = v[1, 1] = v[3, 3] = 1.0
    v[2] = torch.tensor([0.8, 0.6, 0.0, 0.0])  # cos 0.8 with dog, 0.6 with car
    g = build(names, v, folder, wup_threshold=0.5, cosine_threshold=0.7)
    adj = g.dense()
    assert g.in_wordnet.tolist() == [True, True, False, False]
    assert adj[2, 0] and adj[0, 2]  # cosine 0.8 > 0.7
    assert not adj[2, 1]  # cosine 0.6
    assert adj[3].sum() == 1  # isolated but for its self-loop
    assert not adj[0, 1]  # dog-car still decided by WUP (0.5), not by their cosine


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:") and "WordNet" in line]


def test_without_wordnet_warns_once_and_uses_cosine(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kg, "_warned_missing", set())
    names = ["dog", "puppy", "car"]
    v = torch.tensor([[1.0, 0.0], [0.9, 0.43589], [0.0, 1.0]])
    adj = build(names, v, tmp_path, cosine_threshold=0.5).dense()
    # Every edge is a cosine edge: dog-puppy (cos 0.9) joined, car (cos 0 and 0.44) alone.
    assert adj.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    assert not build(names, v, tmp_path, cosine_threshold=0.95).dense()[0, 1]  # the threshold decides
    build(names[:2], v[:2], tmp_path)  # another vocabulary, same missing folder
    lines = warning_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines  # one line per process, not per graph
    assert str(tmp_path) in lines[0] and "cosine" in lines[0] and "apt-get install wordnet-base" in lines[0]
    assert "ZSTAG_WORDNET" in lines[0]


def test_no_warning_with_wordnet(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kg, "_warned_missing", set())
    build(["dog", "cat"], unit(2), write_mini_wordnet(tmp_path / "wn"))
    assert warning_lines(capsys.readouterr().err) == []


def test_cached_cosine_graph_still_warns_and_is_rebuilt_once_wordnet_is_installed(tmp_path, monkeypatch, capsys):
    """A graph cached while WordNet was missing is cosine-only: reading it back warns again (in a
    new process), and installing WordNet in that folder makes a new graph, not the stale one."""
    names, v = ["dog", "cat"], unit(2)  # random vectors: cosine below 0.5, so no fallback edge
    folder, graphs = tmp_path / "wn", tmp_path / "graphs"
    kg.clear_memory_cache()
    monkeypatch.setattr(kg, "_warned_missing", set())
    assert not kg.build_graph(names, v, wordnet=folder, cache_dir=graphs).dense()[0, 1]
    kg.clear_memory_cache()
    monkeypatch.setattr(kg, "_warned_missing", set())  # as in a new process
    with monkeypatch.context() as m:
        m.setattr(kg, "_build", lambda *a: pytest.fail("should have been read from disk"))
        kg.build_graph(names, v, wordnet=folder, cache_dir=graphs)
    assert len(warning_lines(capsys.readouterr().err)) == 2
    write_mini_wordnet(folder)
    kg.clear_memory_cache()
    assert kg.build_graph(names, v, wordnet=folder, cache_dir=graphs).dense()[0, 1]  # WUP 0.75
    assert len(list(graphs.glob("*.npz"))) == 2


def test_graph_cache_in_memory_and_on_disk(tmp_path, monkeypatch):
    folder = write_mini_wordnet(tmp_path / "wn")
    names = ["dog", "cat", "car"]
    v = unit(3)
    kg.clear_memory_cache()
    first = kg.build_graph(names, v, wordnet=folder, cache_dir=tmp_path / "graphs")
    assert kg.build_graph(names, v, wordnet=folder, cache_dir=tmp_path / "graphs") is first
    files = list((tmp_path / "graphs").glob("*.npz"))
    assert len(files) == 1
    kg.clear_memory_cache()
    monkeypatch.setattr(kg, "_build", lambda *a: pytest.fail("should have been read from disk"))
    again = kg.build_graph(names, v, wordnet=folder, cache_dir=tmp_path / "graphs")
    assert (again.dense() == first.dense()).all() and again.in_wordnet.tolist() == [True] * 3
    # Another threshold is another graph (and another file).
    monkeypatch.undo()
    kg.build_graph(names, v, wup_threshold=0.8, wordnet=folder, cache_dir=tmp_path / "graphs")
    assert len(list((tmp_path / "graphs").glob("*.npz"))) == 2
