"""Writers of `zstag tag`: stream rows, the temporary-file / rename / .partial / resume life cycle,
txt sidecars, and `zstag tag --resume` end to end."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest
import synth
import torch
from synth import ON_CPU

from zstag.engine.engine import Engine
from zstag.outputs.sidecars import write_txt_sidecar
from zstag.outputs.streams import StreamOutput, format_row, header, read_done_images
from zstag.store.model import build_model, save_model

TAGS = [("dog", 0.9123456789), ("coral reef", 0.25)]


def test_jsonl_row():
    line = format_row("jsonl", "photos/été.jpg", TAGS)
    assert line.endswith("\n") and line.count("\n") == 1
    assert "été" in line  # not \u-escaped: readable in an editor
    assert json.loads(line) == {
        "image": "photos/été.jpg",
        "tags": [{"label": "dog", "score": 0.912346}, {"label": "coral reef", "score": 0.25}],
    }


@pytest.mark.parametrize("fmt, delimiter", [("csv", ","), ("tsv", "\t")])
def test_delimited_rows(fmt, delimiter):
    text = header(fmt) + format_row(fmt, "a, b.jpg", TAGS) + format_row(fmt, "c.jpg", [])
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    assert rows == [["image", "tags", "scores"], ["a, b.jpg", "dog|coral reef", "0.912346|0.25"], ["c.jpg", "", ""]]


def test_jsonl_has_no_header():
    assert header("jsonl") == ""


def test_stream_output_renames_on_complete(tmp_path):
    target = tmp_path / "out" / "pred.jsonl"
    stream = StreamOutput(str(target), "jsonl", resume=False)
    stream.write("a.jpg", TAGS)
    stream.flush()
    assert not target.exists()  # rows go to a temporary file first
    [tmp] = list(target.parent.iterdir())
    assert tmp.read_text() == format_row("jsonl", "a.jpg", TAGS)
    stream.write("b.jpg", TAGS)
    stream.close(complete=True)
    assert target.read_text() == format_row("jsonl", "a.jpg", TAGS) + format_row("jsonl", "b.jpg", TAGS)
    assert list(target.parent.iterdir()) == [target]


def test_stream_output_replaces_an_old_file_only_when_complete(tmp_path):
    target = tmp_path / "pred.csv"
    old = header("csv") + format_row("csv", "old.jpg", TAGS)
    target.write_text(old)
    stream = StreamOutput(str(target), "csv", resume=False)
    stream.write("a.jpg", TAGS)
    stream.flush()
    assert target.read_text() == old
    stream.close(complete=True)
    assert target.read_text() == "image,tags,scores\n" + format_row("csv", "a.jpg", TAGS)


def test_interrupted_plain_run_leaves_partial(tmp_path):
    target = tmp_path / "pred.jsonl"
    stream = StreamOutput(str(target), "jsonl", resume=False)
    stream.write("a.jpg", TAGS)
    stream.close(complete=False)
    partial = tmp_path / "pred.jsonl.partial"
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.jsonl.partial"]
    assert partial.read_text() == format_row("jsonl", "a.jpg", TAGS)
    # --resume continues the .partial file under the final name.
    resumed = StreamOutput(str(target), "jsonl", resume=True)
    assert resumed.done.images == {"a.jpg"}
    resumed.write("b.jpg", TAGS)
    resumed.close(complete=True)
    assert not partial.exists()
    assert [json.loads(line)["image"] for line in target.read_text().splitlines()] == ["a.jpg", "b.jpg"]


def test_resume_drops_a_torn_last_line(tmp_path):
    target = tmp_path / "pred.jsonl"
    whole = format_row("jsonl", "a.jpg", TAGS) + format_row("jsonl", "b.jpg", TAGS)
    target.write_text(whole + format_row("jsonl", "c.jpg", TAGS)[:20])
    assert read_done_images(target, "jsonl") == {"a.jpg", "b.jpg"}
    assert target.read_text() == whole  # the torn line is cut off the file


def test_resume_csv_skips_the_header_and_appends(tmp_path):
    target = tmp_path / "pred.csv"
    target.write_text(header("csv") + format_row("csv", "image,1.jpg", TAGS) + "c.jp")
    stream = StreamOutput(str(target), "csv", resume=True)
    assert stream.done.images == {"image,1.jpg"}
    stream.write("d.jpg", TAGS)
    stream.close(complete=True)
    rows = list(csv.reader(io.StringIO(target.read_text())))
    assert [r[0] for r in rows] == ["image", "image,1.jpg", "d.jpg"]


def test_resume_without_a_file_starts_one_with_its_header(tmp_path):
    target = tmp_path / "pred.tsv"
    stream = StreamOutput(str(target), "tsv", resume=True)
    assert stream.done.images == set()
    stream.write("a.jpg", TAGS)
    stream.close(complete=True)
    assert target.read_text() == "image\ttags\tscores\n" + format_row("tsv", "a.jpg", TAGS)


def test_read_done_images_of_a_missing_file(tmp_path):
    assert read_done_images(tmp_path / "none.jsonl", "jsonl") == set()


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("overwrite", "dog, coral reef\n"),
        ("append", "cat, dog, coral reef\n"),
        ("skip", "cat, dog\n"),
    ],
)
def test_txt_sidecar_modes(tmp_path, mode, expected):
    image = tmp_path / "x.jpg"
    (tmp_path / "x.txt").write_text("cat, dog\n")
    write_txt_sidecar(image, TAGS, mode)
    assert (tmp_path / "x.txt").read_text() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]  # no temporary file left behind


@pytest.mark.parametrize("mode", ["overwrite", "append", "skip"])
def test_txt_sidecar_new_file(tmp_path, mode):
    write_txt_sidecar(tmp_path / "photo.png", TAGS, mode)
    assert (tmp_path / "photo.txt").read_text() == "dog, coral reef\n"


# --- `zstag tag --resume` end to end --------------------------------------------------------


@pytest.fixture
def tagging_setup(tmp_path, word_vectors):
    """Six small images, the synthetic vocabulary, and an untrained (but saved) fast0tag model."""
    images = tmp_path / "images"
    images.mkdir()
    rng = random.Random(0)
    for i in range(6):
        synth.draw_image(synth.sample_tags(rng), 32, rng).save(images / f"img{i}.png")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(synth.LABELS) + "\n")
    torch.manual_seed(0)
    model = build_model("fast0tag", "small", str(word_vectors), synth.LABELS[:6], {"hidden": 16}, image_size=32)
    save_model(model, tmp_path / "model")
    return {"images": images, "vocab": vocab, "model": tmp_path / "model"}


def test_tag_resume_finishes_a_torn_file_without_recomputing(tagging_setup, cli, tmp_path, monkeypatch):
    setup = tagging_setup
    out = tmp_path / "out.jsonl"
    args = [
        "tag",
        setup["images"],
        "--labels",
        setup["vocab"],
        "--model",
        setup["model"],
        "--top-k",
        "3",
        "--output",
        out,
        *ON_CPU,
        "--batch-size",
        "2",
    ]
    first = cli(*args)
    assert first.code == 0, first.err
    full = out.read_bytes().splitlines(keepends=True)
    assert len(full) == 6
    # A run killed while writing its fourth row: three whole lines and half a line.
    out.write_bytes(b"".join(full[:3]) + full[3][: len(full[3]) // 2])

    scored: list[str] = []
    original = Engine.run

    def recording_run(self, method, paths, labels, image_size):
        scored.extend(str(p) for p in paths)
        return original(self, method, paths, labels, image_size)

    monkeypatch.setattr(Engine, "run", recording_run)
    second = cli(*args, "--resume")
    assert second.code == 0, second.err
    lines = out.read_bytes().splitlines(keepends=True)
    assert lines[:3] == full[:3]  # kept rows are byte-identical
    images = [json.loads(line)["image"] for line in lines]
    assert sorted(images) == sorted(json.loads(line)["image"] for line in full)  # every image exactly once
    assert len(images) == len(set(images)) == 6
    done = {json.loads(line)["image"] for line in full[:3]}
    assert sorted(scored) == sorted(set(images) - done)  # only the missing three were computed
    assert lines[3:] == full[3:]  # and they score as in the first run


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_a_carriage_return_in_a_name_is_quoted(fmt):
    line = format_row(fmt, "a\rb.jpg", TAGS)
    assert line.startswith('"a\rb.jpg"') and line.endswith("\n") and not line.endswith("\r\n")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_a_score_that_is_not_a_number_is_never_written(fmt):
    with pytest.raises(ValueError, match="finite"):
        format_row(fmt, "a.jpg", [("dog", float("nan"))])


def test_labels_holding_a_formats_tag_separator_are_named_before_tagging(tmp_path):
    """A label with '|' comes back from csv/tsv as two labels, one with ',' from txt sidecars: the
    run says so up front (and still tags); jsonl and xmp keep every label whole."""
    from test_console_script import EXAMPLES, zstag

    from zstag.outputs import labels_holding_separator

    vocab = ["rock|roll", "horse", "salt, pepper"]
    assert labels_holding_separator(vocab, "csv") == labels_holding_separator(vocab, "tsv") == ["rock|roll"]
    assert labels_holding_separator(vocab, "txt") == ["salt, pepper"]
    assert labels_holding_separator(vocab, "jsonl") == labels_holding_separator(vocab, "xmp") == []
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    result = zstag("tag", str(EXAMPLES / "photos" / "horse.jpg"), "--labels", "vocab.txt", "-f", "csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 label(s) hold '|', which --format csv writes between tags" in result.stderr
    assert "'rock|roll'" in result.stderr and "horse" in result.stdout
