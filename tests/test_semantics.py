"""Label semantics: the GloVe/word2vec file source, unit vectors, the on-disk cache, MiniLM.

The vector-file tests use a hand-made 3-d file so phrase vectors can be checked to the digit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zstag.core.errors import UsageError
from zstag.semantics import EmbeddingCache, embed_labels, get_semantics
from zstag.semantics.base import Semantics
from zstag.semantics.vectors import VectorFileSemantics, words_of

VECTORS = "dog 1 0 0\npuppy 0 2 0\nhot 0 0 4\nSun 2 2 0\n"


@pytest.fixture
def vector_file(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(VECTORS, encoding="utf-8")
    return path


class Exploding(Semantics):
    """A source that must not be asked: proves a result came from the cache."""

    def __init__(self, key: str, dim: int = 3) -> None:
        self.key, self._dim = key, dim

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, labels: list[str]) -> np.ndarray:
        raise AssertionError(f"encode called for {labels}")


def test_words_of_splits_phrases():
    assert words_of("Hot_dog, Sun's-rays") == ["hot", "dog", "sun's", "rays"]


def test_phrase_is_the_mean_of_its_word_vectors(vector_file):
    source = get_semantics(str(vector_file))
    assert isinstance(source, VectorFileSemantics)
    assert source.dim == 3
    vectors = source.encode(["dog", "hot dog", "puppy hot dog", "Dog", "sun"])
    np.testing.assert_allclose(
        vectors,
        [
            [1, 0, 0],
            [0.5, 0, 2],  # (dog + hot) / 2
            [1 / 3, 2 / 3, 4 / 3],
            [1, 0, 0],  # labels are looked up in lower case
            [2, 2, 0],  # a capitalised word in the file still serves a lower-case label
        ],
        rtol=0,
        atol=1e-6,
    )


def test_word2vec_header_line_is_skipped(tmp_path):
    path = tmp_path / "w2v.txt"
    path.write_text("4 3\n" + VECTORS)
    source = VectorFileSemantics(path, key="w2v")
    assert source.dim == 3
    np.testing.assert_allclose(source.encode(["puppy"]), [[0, 2, 0]])


def test_out_of_vocabulary_word_warns_and_is_left_out(vector_file):
    source = VectorFileSemantics(vector_file, key="oov")
    with pytest.warns(UserWarning, match="1 word\\(s\\) not in tiny.txt.*kitten"):
        vectors = source.encode(["kitten dog"])
    np.testing.assert_allclose(vectors, [[1, 0, 0]])


def test_label_with_no_known_word_is_a_usage_error(vector_file):
    source = VectorFileSemantics(vector_file, key="unknown")
    with pytest.raises(UsageError, match="1 label\\(s\\) have no word in tiny.txt: 'carburetor'"):
        source.encode(["dog", "carburetor"])


def test_a_file_that_is_not_vectors_is_a_usage_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\nworld\n")
    with pytest.raises(UsageError, match="not a GloVe/word2vec text file"):
        VectorFileSemantics(path, key="notes").dim


def test_unknown_semantics_name(tmp_path):
    with pytest.raises(UsageError, match="unknown semantics"):
        get_semantics(str(tmp_path / "missing.txt"))


def test_embed_labels_gives_unit_rows_in_order(vector_file, tmp_path):
    source = VectorFileSemantics(vector_file, key="unit")
    labels = embed_labels(source, ["hot dog", "puppy", "dog"], EmbeddingCache(tmp_path / "cache"))
    assert labels.names == ["hot dog", "puppy", "dog"]
    assert labels.vectors.dtype == torch.float32
    torch.testing.assert_close(labels.vectors.norm(dim=1), torch.ones(3))
    expected = torch.tensor([[0.5, 0, 2], [0, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(labels.vectors, expected / expected.norm(dim=1, keepdim=True))


def test_second_call_is_served_by_the_cache(vector_file, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    key = "vec:test-cache"
    first = embed_labels(VectorFileSemantics(vector_file, key=key), ["dog", "hot dog"], cache)
    again = embed_labels(Exploding(key), ["hot dog", "dog", "dog"], cache)
    assert again.names == ["hot dog", "dog", "dog"]
    torch.testing.assert_close(again.vectors, first.vectors[[1, 0, 0]])
    # Only missing labels are computed: a new one reaches the source.
    with pytest.raises(AssertionError, match=r"encode called for \['puppy'\]"):
        embed_labels(Exploding(key), ["dog", "puppy"], cache)
    # The cache is per model: another key misses.
    with pytest.raises(AssertionError):
        embed_labels(Exploding("vec:another-model"), ["dog"], cache)


def test_cache_disabled_with_no_root(vector_file):
    cache = EmbeddingCache(None)
    embed_labels(VectorFileSemantics(vector_file, key="nocache"), ["dog"], cache)
    assert cache.get("nocache", ["dog"]) == {}


def rewrite_shard(shard: Path, vectors: object, labels: object) -> None:
    """Replace a cache shard with one holding these (perhaps hostile) vectors and labels metadata."""
    from safetensors.numpy import save_file

    save_file({"vectors": np.asarray(vectors)}, str(shard), metadata={"labels": json.dumps(labels)})


DAMAGE = {
    "garbage": lambda shard: shard.write_bytes(b"\x00garbage, not a safetensors file"),
    "truncated": lambda shard: shard.write_bytes(shard.read_bytes()[:-7]),
    "nan vectors": lambda shard: rewrite_shard(shard, np.full((2, 3), np.nan, np.float32), ["dog", "puppy"]),
    "inf vectors": lambda shard: rewrite_shard(shard, np.full((2, 3), np.inf, np.float32), ["dog", "puppy"]),
    "labels not a list": lambda shard: rewrite_shard(shard, np.ones((2, 3), np.float32), 5),
    "fewer rows than labels": lambda shard: rewrite_shard(shard, np.ones((1, 3), np.float32), ["dog", "puppy"]),
    "one-dimensional": lambda shard: rewrite_shard(shard, np.ones(3, np.float32), ["dog", "puppy"]),
    "integer vectors": lambda shard: rewrite_shard(shard, np.ones((2, 3), np.int64), ["dog", "puppy"]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_cache_shard_is_a_miss_warned_about_and_recomputed(vector_file, tmp_path, damage, capsys):
    cache = EmbeddingCache(tmp_path / "cache")
    source = VectorFileSemantics(vector_file, key="vec:damaged")
    first = embed_labels(source, ["dog", "puppy"], cache)
    [shard] = list((tmp_path / "cache").rglob("*.safetensors"))
    DAMAGE[damage](shard)
    again = embed_labels(source, ["dog", "puppy"], cache)  # used to crash (or return NaN) on every later run
    torch.testing.assert_close(again.vectors, first.vectors)
    assert "damaged label-vector cache file" in capsys.readouterr().err
    # the recomputed vectors were cached again: a third run needs no source and warns no more
    third = embed_labels(Exploding("vec:damaged"), ["dog", "puppy"], cache)
    torch.testing.assert_close(third.vectors, first.vectors)
    assert "damaged" not in capsys.readouterr().err


def test_a_shard_of_another_dimension_is_damage(vector_file, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    embed_labels(VectorFileSemantics(vector_file, key="vec:dims"), ["dog"], cache)
    cache.put("vec:dims", ["puppy"], np.ones((1, 5), np.float32))
    found = cache.get("vec:dims", ["dog", "puppy"])
    assert len(found) == 1  # never a mixture of 3-d and 5-d rows, which would crash np.stack


def test_a_folder_with_only_pickled_weights_is_refused(tmp_path):
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04\x95 a pickle")
    with pytest.raises(UsageError, match="pytorch_model.bin: pickled weights are never loaded"):
        get_semantics(str(folder))
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(UsageError, match="holds no model.safetensors"):
        get_semantics(str(folder))


def test_a_user_may_still_name_a_vector_file_anywhere(vector_file):
    assert get_semantics(str(vector_file)).source == vector_file


def test_minilm_relates_dog_to_puppy():
    """Loads the real all-MiniLM-L6-v2 (a declared dependency, so no skip when it is missing)."""
    labels = embed_labels(get_semantics("minilm"), ["dog", "puppy", "carburetor"], EmbeddingCache(None))
    assert labels.dim == 384
    v = labels.vectors
    torch.testing.assert_close(v.norm(dim=1), torch.ones(3))
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.1
