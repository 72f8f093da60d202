"""Vocabulary files: comments, BOM, Unicode normalisation, duplicates, and the error cases."""

from __future__ import annotations

import pytest

from zstag.core.errors import UsageError
from zstag.data.vocab import normalise_label, read_vocabulary, unique_labels

COMPOSED = "caf\u00e9"  # é as one code point
DECOMPOSED = "cafe\u0301"  # e followed by a combining acute accent


def test_comments_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# animals\ndog\n\n   \n  # indented comment\ncoral reef\r\nApple\napple\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="differ only in case and are kept apart: 'Apple' / 'apple'"):
        assert read_vocabulary(path) == ["dog", "coral reef", "Apple", "apple"]


def test_inline_comments_start_at_a_hash_after_whitespace(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("boat  # the sea kind\nC#\nno.#5\tx\ncar\t# tab before\n", encoding="utf-8")
    assert read_vocabulary(path) == ["boat", "C#", "no.#5 x", "car"]


def test_a_control_character_is_a_usage_error_naming_the_line(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("dog\nca\x01t\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"v.txt:2: .*control character"):
        read_vocabulary(path)


def test_an_endless_file_is_refused_with_a_size_limit():
    with pytest.raises(UsageError, match="/dev/zero is larger than"):
        read_vocabulary("/dev/zero")


def test_bom_is_stripped(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes("\ufeffdog\ncat\n".encode("utf-8"))
    assert read_vocabulary(path) == ["dog", "cat"]
    # A BOM in front of a comment must not turn the comment into a label.
    path.write_bytes("\ufeff# header\ncat\n".encode("utf-8"))
    assert read_vocabulary(path) == ["cat"]


def test_nfc_normalisation_makes_decomposed_equal_composed(tmp_path):
    assert DECOMPOSED != COMPOSED
    assert normalise_label(DECOMPOSED) == COMPOSED
    path = tmp_path / "v.txt"
    path.write_text(f"{DECOMPOSED}\n", encoding="utf-8")
    assert read_vocabulary(path) == [COMPOSED]


def test_whitespace_is_collapsed():
    assert normalise_label("  coral \t  reef ") == "coral reef"


def test_duplicates_are_merged_with_a_warning(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text(f"{COMPOSED}\ndog\n{DECOMPOSED}\ndog \ncat\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"2 duplicate label\(s\) merged") as record:
        labels = read_vocabulary(path)
    assert labels == [COMPOSED, "dog", "cat"]
    assert str(path) in str(record[0].message)


def test_unique_labels_keeps_first_seen_order_and_drops_empties():
    assert unique_labels(["b", " ", "a", "", "c"], "x") == ["b", "a", "c"]


def test_empty_vocabulary_is_a_usage_error(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# only comments\n\n  \n")
    with pytest.raises(UsageError, match="has no labels"):
        read_vocabulary(path)
    assert read_vocabulary(path, allow_empty=True) == []


def test_non_utf8_is_a_usage_error(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes("dog\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8") as info:
        read_vocabulary(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="vocabulary file not found"):
        read_vocabulary(tmp_path / "missing.txt")
    with pytest.raises(UsageError, match="is a directory"):
        read_vocabulary(tmp_path)
