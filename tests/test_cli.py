"""End to end through the command line: train -> tag (paths on stdin) -> eval, and exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synth import ON_CPU

from zstag.data.manifest import read_dataset
from zstag.eval.metrics import mean_ap
from zstag.eval.report import evaluation_labels


def random_map(manifest, labels) -> float:
    """mAP of uniformly random scores on the same truth: the bar a trained model must clear."""
    samples = read_dataset(manifest)
    truth = np.array([[label in s.tags for label in labels] for s in samples])
    rng = np.random.default_rng(0)
    return float(np.mean([mean_ap(rng.random(truth.shape), truth)[0] for _ in range(20)]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset, word_vectors):
    """One small fast0tag model trained through the CLI (shared by the tests of this module).

    Batches of 8 give 52 optimiser steps in 4 epochs: with the recipe's 32 (12 steps) whether
    the model clears the bar below depended on the seed; with 8 it did for each of seeds 0-4."""
    import sys

    from zstag.cli import main

    out = tmp_path_factory.mktemp("models") / "f0t"
    argv = sys.argv
    sys.argv = [
        "zstag",
        "--quiet",
        "train",
        str(dataset["manifest"]),
        "--method",
        "fast0tag",
        "--backbone",
        "small",
        "--semantics",
        str(word_vectors),
        "--unseen",
        str(dataset["unseen"]),
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--image-size",
        "64",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--workers",
        "0",
    ]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    assert exit_info.value.code == 0
    return out


def test_train_writes_a_model_directory(trained, dataset):
    config = json.loads((trained / "config.json").read_text())
    assert config["method"] == "fast0tag"
    assert set(config["unseen_labels"]) == set(dataset["unseen"].read_text().split("\n")) - {""}
    assert not set(config["seen_labels"]) & set(config["unseen_labels"])
    assert config["training"]["unseen_tags_removed"] > 0
    assert (trained / "model.safetensors").stat().st_size > 0


def test_tag_stdin_then_eval_beats_random(trained, dataset, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(dataset["manifest"].parent)
    paths = "\n".join(f"images/{p.name}" for p in sorted(dataset["images"].iterdir()))
    pred = tmp_path / "pred.jsonl"
    result = cli(
        "tag",
        "-",
        "--labels",
        dataset["vocab"],
        "--model",
        trained,
        "--top-k",
        "0",
        "--output",
        pred,
        *ON_CPU,
        stdin=paths,
    )
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert len(rows) == 120
    assert rows[0]["image"] == "images/img0000.png"
    scores = [t["score"] for t in rows[0]["tags"]]
    assert len(scores) == 18 and scores == sorted(scores, reverse=True)

    result = cli("eval", "--predictions", pred, "--truth", dataset["manifest"], "--unseen", dataset["unseen"], "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert set(report) >= {"zs", "gzs"}
    for section in ("zs", "gzs"):
        assert set(report[section]) >= {"mAP", "miAP", "at_k", "n_images", "n_labels"}
        assert set(report[section]["at_k"]) == {"3", "5"}
        assert all(0 <= v <= 1 for k in ("3", "5") for v in report[section]["at_k"][k].values())
    assert report["gzs"]["n_labels"] == 18 and report["zs"]["n_labels"] == 4
    labels = evaluation_labels([], read_dataset(dataset["manifest"]))
    assert report["gzs"]["mAP"] > random_map(dataset["manifest"], labels) + 0.05


def test_eval_with_model_matches_predictions_file(trained, dataset, cli, tmp_path, monkeypatch):
    """`eval --model` goes through the same engine as `tag`, so both routes agree."""
    monkeypatch.chdir(dataset["manifest"].parent)
    pred = tmp_path / "pred.jsonl"
    assert (
        cli(
            "tag",
            "images",
            "--labels",
            dataset["vocab"],
            "--model",
            trained,
            "--top-k",
            "0",
            "-o",
            pred,
            *ON_CPU,
        ).code
        == 0
    )
    a = json.loads(cli("eval", "-p", pred, "--truth", dataset["manifest"], "--json").out)
    b = json.loads(cli("eval", "--model", trained, "--truth", dataset["manifest"], "--json", *ON_CPU).out)
    # The file holds scores rounded to 6 decimals; rounding can only create ties.
    assert a["gzs"]["mAP"] == pytest.approx(b["gzs"]["mAP"], abs=1e-3)


def test_unreadable_input_exit_3_and_other_rows_kept(trained, dataset, cli, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    good = sorted(dataset["images"].iterdir())[0]
    errors = tmp_path / "errors.jsonl"
    result = cli(
        "tag",
        good,
        bad,
        "--labels",
        dataset["vocab"],
        "--model",
        trained,
        *ON_CPU,
        "--errors",
        errors,
    )
    assert result.code == 3
    assert str(bad) in result.err
    assert [json.loads(line)["image"] for line in result.out.splitlines()] == [str(good)]
    assert json.loads(errors.read_text())["image"] == str(bad)


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_delimited_formats(trained, dataset, cli, fmt):
    import csv
    import io

    images = sorted(dataset["images"].iterdir())[:3]
    result = cli(
        "tag",
        *images,
        "--labels",
        dataset["vocab"],
        "--model",
        trained,
        "--format",
        fmt,
        "--top-k",
        "2",
        *ON_CPU,
    )
    assert result.code == 0, result.err
    rows = list(csv.reader(io.StringIO(result.out), delimiter="," if fmt == "csv" else "\t"))
    assert rows[0] == ["image", "tags", "scores"]
    assert [r[0] for r in rows[1:]] == [str(p) for p in images]
    assert all(len(r[1].split("|")) == 2 for r in rows[1:])


def test_threshold_keeps_only_high_scores(trained, dataset, cli):
    image = sorted(dataset["images"].iterdir())[0]
    full = json.loads(
        cli(
            "tag",
            image,
            "--labels",
            dataset["vocab"],
            "--model",
            trained,
            "--top-k",
            "0",
            *ON_CPU,
        ).out
    )
    ordered = sorted(t["score"] for t in full["tags"])
    cut = (ordered[8] + ordered[9]) / 2  # between two printed scores, away from rounding
    kept = json.loads(
        cli(
            "tag",
            image,
            "--labels",
            dataset["vocab"],
            "--model",
            trained,
            "--top-k",
            "0",
            "--threshold",
            str(cut),
            *ON_CPU,
        ).out
    )
    assert kept["tags"] and all(t["score"] >= cut for t in kept["tags"])
    assert len(kept["tags"]) == sum(t["score"] >= cut for t in full["tags"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "missing.jsonl", "--method", "fast0tag", "--out", "m"], "dataset not found"),
        (["train", "{manifest}", "--method", "nope", "--out", "m"], "unknown method"),
        (["tag", "{manifest}", "--labels", "{empty}"], "has no labels"),
        (["tag", "{manifest}", "--labels", "missing.txt"], "vocabulary file not found"),
        (["eval", "--truth", "{manifest}"], "exactly one of"),
        (["eval", "--predictions", "missing.jsonl", "--truth", "{manifest}"], "missing.jsonl"),
        (["train", "{manifest}", "--method", "fast0tag", "--out", "m", "--set", "novalue"], "KEY=VALUE"),
        (["tag", "{manifest}", "--labels", "{vocab}", "--format", "pdf"], "'--format'"),
        (["train", "{manifest}", "--method", "fast0tag", "--out", "m", "--device", "cuda:7"], "cuda"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args, message, cli, dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    args = [a.format(manifest=dataset["manifest"], empty=empty, vocab=dataset["vocab"]) for a in args]
    result = cli(*args)
    assert result.code == 2, result.err
    assert message in result.err.lower() or message in result.err
    assert "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_version_and_help(cli):
    from zstag import __version__

    assert cli("--version").out.strip() == f"zstag {__version__}"
    for command in ("fetch", "train", "tag", "eval"):
        result = cli(command, "--help")
        assert result.code == 0 and "Example" in result.out


@pytest.mark.parametrize(
    "method, sets",
    [
        ("lesa", []),
        ("lesa", ["attentions=1"]),
        ("ml2p", []),
        ("sgma", []),
        ("conse", []),
        ("rgcn-posvae", ["variant=rgcn"]),
    ],
)
def test_every_method_trains_tags_and_evaluates(method, sets, dataset, word_vectors, cli, tmp_path):
    """Each method goes through the standard commands (one short epoch; learning is pinned per method)."""
    out = tmp_path / "model"
    args = [
        "train",
        dataset["manifest"],
        "--method",
        method,
        "--backbone",
        "small",
        "--semantics",
        word_vectors,
        "--unseen",
        dataset["unseen"],
        "--epochs",
        "1",
        "--image-size",
        "32",
        *ON_CPU,
        "--out",
        out,
    ]
    for s in sets:
        args += ["--set", s]
    result = cli("-q", *args)
    assert result.code == 0, result.err
    pred = tmp_path / "pred.jsonl"
    images = sorted(dataset["images"].iterdir())[:8]
    assert (
        cli(
            "tag",
            *images,
            "--labels",
            dataset["vocab"],
            "--model",
            out,
            "--top-k",
            "0",
            "-o",
            pred,
            *ON_CPU,
        ).code
        == 0
    )
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["tags"]) == 18 for r in rows)
    report = json.loads(
        cli(
            "eval",
            "--model",
            out,
            "--truth",
            dataset["manifest"],
            "--unseen",
            dataset["unseen"],
            "--json",
            *ON_CPU,
        ).out
    )
    assert 0 <= report["gzs"]["mAP"] <= 1 and 0 <= report["zs"]["mAP"] <= 1


def test_sgma_single_label_protocol(word_vectors, cli, tmp_path):
    """Single-label data: SGMA trains with the paper's softmax, and eval reports MCA, A_U, A_S and H."""
    import synth

    data = synth.make_dataset(tmp_path / "single", n=60, single_label=True)
    out = tmp_path / "sgma"
    result = cli(
        "-q",
        "train",
        data["manifest"],
        "--method",
        "sgma",
        "--backbone",
        "small",
        "--semantics",
        word_vectors,
        "--unseen",
        data["unseen"],
        "--epochs",
        "1",
        "--image-size",
        "32",
        *ON_CPU,
        "--out",
        out,
    )
    assert result.code == 0, result.err
    assert json.loads((out / "config.json").read_text())["hp"]["single_label"] is True
    report = json.loads(
        cli(
            "eval",
            "--model",
            out,
            "--truth",
            data["manifest"],
            "--unseen",
            data["unseen"],
            "--json",
            *ON_CPU,
        ).out
    )
    single = report["single_label"]
    assert set(single) >= {"MCA", "A_U", "A_S", "H", "MCA_zs"}
    assert all(0 <= v <= 1 for v in single.values() if v is not None)
