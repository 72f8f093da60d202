"""Manifests (JSONL, CSV, sidecar folders) and the seen/unseen and validation splits.

Every bad file is built in tmp_path so each error message is pinned to the case that causes it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest

from zstag.core.errors import UsageError
from zstag.data.manifest import Sample, dataset_labels, read_dataset
from zstag.data.splits import remove_unseen, split_validation


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def by_image(samples: list[Sample]) -> dict[str, list[str]]:
    return {s.image.name: s.tags for s in samples}


# --- JSONL ---------------------------------------------------------------------------------


def test_jsonl_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    manifest = write_jsonl(
        data / "m.jsonl",
        [
            {"image": "images/a.png", "tags": ["dog", "beach"]},
            "",  # blank lines are allowed
            {"image": "./images/../images/b.png", "tags": ["cat"]},
        ],
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the current directory must not matter
    samples = read_dataset(os.path.relpath(manifest, elsewhere))
    assert [s.image for s in samples] == [data / "images" / "a.png", data / "images" / "b.png"]
    assert all(s.image.is_absolute() for s in samples)
    assert by_image(samples) == {"a.png": ["dog", "beach"], "b.png": ["cat"]}
    assert dataset_labels(samples) == ["beach", "cat", "dog"]


def test_jsonl_path_escaping_the_root_is_refused_but_absolute_is_allowed(tmp_path):
    (tmp_path / "sub").mkdir()
    escaping = write_jsonl(tmp_path / "sub" / "m.jsonl", [{"image": "../outside.png", "tags": ["x"]}])
    with pytest.raises(UsageError, match="escapes the dataset folder"):
        read_dataset(escaping)
    absolute = tmp_path / "outside.png"
    allowed = write_jsonl(tmp_path / "sub" / "abs.jsonl", [{"image": str(absolute), "tags": ["x"]}])
    assert [s.image for s in read_dataset(allowed)] == [absolute]


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "tags": ["x"]}, '{"image": "b.png", "tags": [}'])
    with pytest.raises(UsageError) as info:
        read_dataset(manifest)
    assert f"{manifest}:2" in str(info.value)
    assert "malformed JSON" in str(info.value)


@pytest.mark.parametrize("row", [{"image": "a.png"}, {"tags": ["x"]}, ["a.png", ["x"]]])
def test_jsonl_missing_keys(tmp_path, row):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "ok.png", "tags": []}, row])
    with pytest.raises(UsageError, match=r"m\.jsonl:2: each line must be an object with 'image' and 'tags'"):
        read_dataset(manifest)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"image": "", "tags": ["x"]}, "'image' must be a non-empty string"),
        ({"image": 3, "tags": ["x"]}, "'image' must be a non-empty string"),
        ({"image": "a.png", "tags": [1, 2]}, "'tags' must be a list of strings"),
    ],
)
def test_jsonl_wrong_value_types(tmp_path, row, message):
    with pytest.raises(UsageError, match=message):
        read_dataset(write_jsonl(tmp_path / "m.jsonl", [row]))


def test_jsonl_tags_as_a_string_are_refused(tmp_path):
    """`"tags": "dog"` was read as the list ["dog"] (and "a|b" split): a string where a list is
    expected is refused, naming the line and the list to write instead."""
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"image": "a.png", "tags": ["x"]}, {"image": "b.png", "tags": "dog"}])
    with pytest.raises(
        UsageError, match=r"""m\.jsonl:2: 'tags' must be a list of strings, not the string 'dog' \(write \["dog"\]\)"""
    ):
        read_dataset(manifest)


def test_jsonl_problems_of_every_line_are_reported_together(tmp_path):
    rows = [{"image": "a.png", "tags": "x"}, "{", {"image": "ok.png", "tags": []}, {"tags": ["y"]}]
    rows += [{"image": f"{i}.png", "tags": [i]} for i in range(12)]
    with pytest.raises(UsageError) as info:
        read_dataset(write_jsonl(tmp_path / "m.jsonl", rows))
    lines = str(info.value).splitlines()
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in lines[:3]] == ["1", "2", "4"]
    assert len(lines) == 11 and lines[-1] == "... and 5 more line(s) with problems"


def test_images_listed_twice_are_merged_with_a_warning(tmp_path):
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"image": "a.png", "tags": ["dog", "beach"]},
            {"image": "b.png", "tags": ["cat"]},
            {"image": "./a.png", "tags": ["beach", "sun"]},  # the same file, written differently
        ],
    )
    with pytest.warns(UserWarning, match="1 image\\(s\\) listed more than once"):
        samples = read_dataset(manifest)
    assert by_image(samples) == {"a.png": ["dog", "beach", "sun"], "b.png": ["cat"]}


def test_tags_are_normalised_and_deduplicated(tmp_path):
    manifest = write_jsonl(
        tmp_path / "m.jsonl", [{"image": "a.png", "tags": ["  coral   reef ", "caf\u0065\u0301", "caf\u00e9"]}]
    )
    with pytest.warns(UserWarning, match="duplicate"):
        samples = read_dataset(manifest)
    assert samples[0].tags == ["coral reef", "caf\u00e9"]


def test_empty_manifest_and_unknown_suffix(tmp_path):
    (tmp_path / "m.jsonl").write_text("\n\n")
    with pytest.raises(UsageError, match="no images listed"):
        read_dataset(tmp_path / "m.jsonl")
    (tmp_path / "m.json").write_text("[]")
    with pytest.raises(UsageError, match=r"\.jsonl or \.csv"):
        read_dataset(tmp_path / "m.json")
    with pytest.raises(UsageError, match="dataset not found"):
        read_dataset(tmp_path / "missing.jsonl")


# --- CSV -----------------------------------------------------------------------------------


def test_csv_with_pipe_separated_tags(tmp_path):
    (tmp_path / "m.csv").write_text(
        'image,tags\nimg/a.png,dog|beach\n"img/b, c.png",coral reef\nimg/d.png,\n', encoding="utf-8"
    )
    samples = read_dataset(tmp_path / "m.csv")
    assert [s.image for s in samples] == [
        tmp_path / "img" / "a.png",
        tmp_path / "img" / "b, c.png",
        tmp_path / "img" / "d.png",
    ]
    assert [s.tags for s in samples] == [["dog", "beach"], ["coral reef"], []]


def test_csv_without_the_header_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text("img/a.png,dog|beach\n")
    with pytest.raises(UsageError, match="needs the header 'image,tags'"):
        read_dataset(tmp_path / "m.csv")


def test_csv_unknown_columns_warn_and_are_ignored(tmp_path):
    (tmp_path / "m.csv").write_text("image,tags,width\na.png,dog,640\n")
    with pytest.warns(UserWarning, match="unknown column\\(s\\) width"):
        samples = read_dataset(tmp_path / "m.csv")
    assert by_image(samples) == {"a.png": ["dog"]}


def test_csv_row_without_a_tags_column_is_refused(tmp_path):
    """A short row (no comma) had its tags silently taken as none."""
    (tmp_path / "m.csv").write_text("image,tags\na.png,dog\nb.png\nc.png,\n")
    with pytest.raises(UsageError, match=r"m\.csv:3: the row has no 'tags' column"):
        read_dataset(tmp_path / "m.csv")


def test_csv_escaping_path_names_the_line(tmp_path):
    (tmp_path / "m.csv").write_text("image,tags\na.png,dog\n../b.png,cat\n")
    with pytest.raises(UsageError, match=r"m\.csv:3: image path '\.\./b\.png' escapes"):
        read_dataset(tmp_path / "m.csv")


# --- sidecar folders ------------------------------------------------------------------------


def test_sidecar_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "sub/b.jpg", "c.png"):
        (tmp_path / name).write_bytes(b"")  # only names matter to the manifest reader
    (tmp_path / "a.txt").write_text("dog, beach,\nsun\n")
    (tmp_path / "sub" / "b.txt").write_text("cat")
    # c.png has no sidecar: it is not part of the dataset. notes.txt has no image.
    (tmp_path / "notes.txt").write_text("not tags")
    samples = read_dataset(tmp_path)
    assert by_image(samples) == {"a.png": ["dog", "beach", "sun"], "b.jpg": ["cat"]}
    assert all(s.image.is_absolute() for s in samples)


def test_sidecar_folder_without_sidecars_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(UsageError, match="no image with a .txt sidecar"):
        read_dataset(tmp_path)


# --- splits --------------------------------------------------------------------------------


def samples_of(n: int) -> list[Sample]:
    return [Sample(Path(f"/d/{i}.png"), [f"t{i % 3}"]) for i in range(n)]


def test_remove_unseen_counts_tags_and_keeps_images():
    samples = [
        Sample(Path("/a.png"), ["dog", "cat", "sun"]),
        Sample(Path("/b.png"), ["cat"]),
        Sample(Path("/c.png"), ["sun"]),
    ]
    kept, removed = remove_unseen(samples, ["cat", "moon"])
    assert removed == 2
    assert [(s.image.name, s.tags) for s in kept] == [("a.png", ["dog", "sun"]), ("b.png", []), ("c.png", ["sun"])]
    assert samples[0].tags == ["dog", "cat", "sun"]  # the input is not modified
    assert remove_unseen(samples, [])[1] == 0


def test_split_validation_is_a_seeded_partition():
    samples = samples_of(50)
    train, val = split_validation(samples, 0.2, seed=1)
    assert len(val) == 10 and len(train) == 40
    assert {s.image for s in train}.isdisjoint({s.image for s in val})
    assert {s.image for s in train} | {s.image for s in val} == {s.image for s in samples}
    assert split_validation(samples, 0.2, seed=1) == (train, val)
    other = split_validation(samples, 0.2, seed=2)[1]
    assert {s.image for s in other} != {s.image for s in val}
    # Both parts keep the input order, so a run reads its files in a stable order.
    assert [int(s.image.stem) for s in train] == sorted(int(s.image.stem) for s in train)


def test_split_validation_edges():
    samples = samples_of(5)
    assert split_validation(samples, 0.0, seed=0) == (samples, [])
    assert split_validation(samples[:1], 0.5, seed=0) == (samples[:1], [])
    train, val = split_validation(samples, 0.01, seed=0)
    assert len(val) == 1 and len(train) == 4  # at least one held out
    train, val = split_validation(samples, 0.99, seed=0)
    assert len(train) == 1 and len(val) == 4  # at least one left to train on


def test_no_warning_for_a_clean_manifest(tmp_path):
    manifest = write_jsonl(
        tmp_path / "m.jsonl", [{"image": "a.png", "tags": ["x"]}, {"image": "b.png", "tags": ["y", "z"]}]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert by_image(read_dataset(manifest)) == {"a.png": ["x"], "b.png": ["y", "z"]}


def test_names_with_line_separators_stay_one_row(tmp_path):
    """U+2028 and NEL are not line breaks in a jsonl manifest (str.splitlines would split them)."""
    from zstag.eval.report import load_predictions

    names = ["a\u2028b.jpg", "c\x85d.jpg"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"image": n, "tags": ["dog"]}, ensure_ascii=False) + "\n" for n in names), encoding="utf-8"
    )
    assert [s.image.name for s in read_dataset(manifest)] == names
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(
        manifest.read_text(encoding="utf-8").replace('"tags": ["dog"]', '"tags": []'), encoding="utf-8"
    )
    assert [row["image"] for row in load_predictions(predictions)] == names


@pytest.mark.parametrize(
    "name, text",
    [("m.csv", "image,tags\nimg/a.png,dog|beach\n"), ("m.jsonl", '{"image": "img/a.png", "tags": ["dog", "beach"]}\n')],
)
def test_a_byte_order_mark_from_a_spreadsheet_is_read_past(tmp_path, name, text):
    """Excel's "CSV UTF-8" starts with U+FEFF; it was read as part of the header ('\\ufeffimage')."""
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    samples = read_dataset(tmp_path / name)
    assert [(s.image, s.tags) for s in samples] == [(tmp_path / "img" / "a.png", ["dog", "beach"])]
