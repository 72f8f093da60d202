"""zstag.eval.report: the report JSON, reading predictions, and matching them to the truth."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import reference_metrics as ref

from zstag.core.errors import UsageError
from zstag.eval.report import evaluate, evaluation_labels, load_predictions, match_predictions


@dataclass(frozen=True)
class Sample:
    """Stand-in for zstag.data.manifest.Sample: only .image (absolute) and .tags are used."""

    image: Path
    tags: list[str]


# Same 4 x 3 case as test_metrics: labels a, b, c; c has no positive image.
SCORES = np.array([[0.9, 0.5, 0.3], [0.8, 0.5, 0.2], [0.7, 0.5, 0.1], [0.6, 0.1, 0.0]])
TRUTH = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
LABELS = ["a", "b", "c"]


def test_report_by_hand_zstag_protocol():
    report = evaluate(SCORES, TRUTH, LABELS, unseen=["b", "c"])
    json.dumps(report, allow_nan=False)
    assert set(report) == {"zs", "gzs"}  # multi-label truth: no single_label section
    zs, gzs = report["zs"], report["gzs"]
    # ZS ranks b, c only. mAP: b's AP is 2/3 (one tie group 2 pos / 3), c left out.
    assert zs["mAP"] == pytest.approx(2 / 3)
    assert zs["n_labels_without_positives"] == 1
    # miAP: img0 ranks b(+) c -> 1; img1 b(+) c -> 1; img2, img3 have no unseen positive -> 1.0.
    assert zs["miAP"] == pytest.approx(1.0)
    # K=3 > 2 labels: every cell is picked, 8 picks, TP = 2 (b in img0, img1), 2 positive cells:
    # P = 2/8, R = 1, F1 = 2(1/4)/(5/4) = 2/5.
    assert [zs["at_k"]["3"][m] for m in "P R F1".split()] == pytest.approx([1 / 4, 1, 2 / 5])
    assert (zs["n_images"], zs["n_labels"]) == (4, 2)
    # GZS: mAP (5/6 + 2/3) / 2 = 3/4; miAP 5/6; K=3 picks all 12 cells, TP 4 of 4 positives:
    # P = 1/3, R = 1, F1 = 1/2; K=5 the same.
    assert gzs["mAP"] == pytest.approx(3 / 4)
    assert gzs["miAP"] == pytest.approx(5 / 6)
    for k in ("3", "5"):
        assert [gzs["at_k"][k][m] for m in "P R F1".split()] == pytest.approx([1 / 3, 1, 1 / 2])
    assert (gzs["n_images"], gzs["n_labels"], gzs["n_labels_without_positives"]) == (4, 3, 1)


def test_report_lesa_protocol_counts_empty_labels_as_zero():
    report = evaluate(SCORES, TRUTH, LABELS, unseen=["b", "c"], ks=(1,), protocol="lesa")
    assert report["zs"]["mAP"] == pytest.approx((2 / 3 + 0) / 2)
    assert report["gzs"]["mAP"] == pytest.approx((5 / 6 + 2 / 3 + 0) / 3)
    assert "n_labels_without_positives" not in report["gzs"]
    assert list(report["gzs"]["at_k"]) == ["1"]


def test_undefined_metrics_are_null_and_bad_arguments_are_usage_errors():
    report = evaluate(SCORES, TRUTH, LABELS, unseen=["c"])  # c has no positive anywhere
    assert report["zs"]["mAP"] is None and report["zs"]["miAP"] is None
    json.dumps(report, allow_nan=False)
    with pytest.raises(UsageError, match="zebra"):
        evaluate(SCORES, TRUTH, LABELS, unseen=["zebra"])
    with pytest.raises(UsageError, match="protocol"):
        evaluate(SCORES, TRUTH, LABELS, protocol="coco")
    with pytest.raises(UsageError):
        evaluate(SCORES, TRUTH, LABELS, ks=(0,))


def test_single_label_report_by_hand():
    labels = ["a", "b", "c", "d"]  # c, d unseen
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.0],  # truth a: GZS argmax a (right)
            [0.6, 0.5, 0.0, 0.0],  # truth b: GZS a (wrong)
            [0.8, 0.0, 0.7, 0.1],  # truth c: GZS a (wrong), ZS c (right)
            [0.1, 0.0, 0.7, 0.2],  # truth c: GZS c (right), ZS c (right)
            [0.0, 0.9, 0.3, 0.2],  # truth d: GZS b (wrong), ZS c (wrong)
        ]
    )
    truth = np.zeros_like(scores, dtype=bool)
    truth[[0, 1, 2, 3, 4], [0, 1, 2, 2, 3]] = True
    single = evaluate(scores, truth, labels, unseen=["c", "d"])["single_label"]
    # Per class (GZS): a 1, b 0, c 1/2, d 0 -> MCA = 1.5/4; A_U = (1/2 + 0)/2; A_S = (1 + 0)/2;
    # H = 2 (1/4)(1/2) / (3/4) = 1/3. ZS: c 2/2, d 0/1 -> MCA_zs = 1/2.
    assert single == pytest.approx({"MCA": 0.375, "A_U": 0.25, "A_S": 0.5, "H": 1 / 3, "MCA_zs": 0.5})
    assert evaluate(scores, truth, labels)["single_label"] == pytest.approx({"MCA": 0.375})


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_random_report_against_reference(seed, ties):
    rng = np.random.default_rng(seed)
    n, n_labels = 30 + seed, 9
    scores = rng.integers(0, 3, (n, n_labels)).astype(float) if ties else rng.normal(size=(n, n_labels))
    scores[rng.random((n, n_labels)) < 0.15] = -np.inf
    truth = rng.random((n, n_labels)) < 0.25
    truth[:, [1, 6]] = False  # one seen and one unseen label without positives
    labels = [f"l{j}" for j in range(n_labels)]
    unseen_idx = [2, 6, 7, 8]
    for protocol in ("zstag", "lesa"):
        report = evaluate(scores, truth, labels, unseen=[labels[j] for j in unseen_idx], protocol=protocol)
        for name, cols, n_empty in (("zs", unseen_idx, 1), ("gzs", list(range(n_labels)), 2)):
            s, t = scores[:, cols].tolist(), truth[:, cols].tolist()
            section = report[name]
            assert section["mAP"] == pytest.approx(ref.mean_ap(s, t, protocol)[0], abs=1e-6)
            assert section["miAP"] == pytest.approx(ref.mean_image_ap(s, t), abs=1e-6)
            for k in (3, 5):
                got = section["at_k"][str(k)]
                assert [got["P"], got["R"], got["F1"]] == pytest.approx(ref.prf_at_k(s, t, k), abs=1e-6)
            if protocol == "zstag":
                assert section["n_labels_without_positives"] == n_empty


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_predictions(tmp_path):
    rows = [{"image": "a.png", "tags": [{"label": "x", "score": 1}]}, "  ", {"image": "b.png", "tags": []}]
    good = write_jsonl(tmp_path / "p.jsonl", rows)
    assert load_predictions(good) == [
        {"image": "a.png", "tags": [{"label": "x", "score": 1.0}]},
        {"image": "b.png", "tags": []},
    ]
    bad_lines = [
        "{not json",
        json.dumps({"tags": []}),
        json.dumps({"image": "a.png", "tags": "x"}),
        json.dumps({"image": "a.png", "tags": [{"label": "x"}]}),
        json.dumps({"image": "a.png", "tags": [{"label": "x", "score": True}]}),
        '{"image": "a.png", "tags": [{"label": "x", "score": NaN}]}',
    ]
    for bad in bad_lines:
        path = write_jsonl(tmp_path / "bad.jsonl", [{"image": "a.png", "tags": []}, "", bad])
        with pytest.raises(UsageError, match=r"bad\.jsonl:3:"):
            load_predictions(path)
    with pytest.raises(UsageError, match="cannot read"):
        load_predictions(tmp_path / "absent.jsonl")
    for header in ("image,tags,scores", "\ufeffimage\ttags\tscores"):
        (tmp_path / "tags.csv").write_text(header + "\na.png,x,0.5\n", encoding="utf-8")
        with pytest.raises(UsageError, match=r"looks like CSV/TSV; predictions are JSON lines"):
            load_predictions(tmp_path / "tags.csv")


@pytest.fixture()
def tree(tmp_path, monkeypatch):
    """Images a.png, sub/b.png, sub/c.png, x.png under tmp_path, which is the current directory."""
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "sub/b.png", "sub/c.png", "x.png"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_match_relative_paths_extra_rows_and_absent_labels(tree):
    truth = [
        Sample(tree / "a.png", ["dog"]),
        Sample(tree / "sub" / "b.png", ["cat", "dog"]),
        Sample(tree / "sub/c.png", []),
    ]
    rows = [
        {"image": "sub/../sub/b.png", "tags": [{"label": "cat", "score": 0.4}, {"label": "owl", "score": 0.9}]},
        {"image": "a.png", "tags": [{"label": "dog", "score": 0.7}, {"label": "dog", "score": 0.2}]},
        {"image": str(tree / "sub" / "c.png"), "tags": [{"label": "cat", "score": -3.0}]},
        {"image": "x.png", "tags": [{"label": "dog", "score": 1.0}]},  # not in the truth
    ]
    scores, truth_m, n_ignored = match_predictions(rows, truth, ["cat", "dog"])
    assert n_ignored == 1
    # Rows follow the truth order; "owl" is not evaluated; absent labels are -inf; a repeated
    # label keeps its higher score.
    np.testing.assert_array_equal(scores, [[-np.inf, 0.7], [0.4, -np.inf], [-3.0, -np.inf]])
    np.testing.assert_array_equal(truth_m, [[False, True], [True, True], [False, False]])
    # The absent label ranks below every score: dog's ranking is img0 (+, .7), then img1 (+) and
    # img2 tied at -inf -> AP = (1/1 + 2/3) / 2 = 5/6.
    report = evaluate(scores, truth_m, ["cat", "dog"])
    assert report["gzs"]["mAP"] == pytest.approx((1 + 5 / 6) / 2)  # cat: img1 first -> AP 1


def test_match_follows_symlinks(tree):
    os.symlink(tree / "sub", tree / "link")
    truth = [Sample(tree / "link" / "b.png", ["cat"])]
    rows = [{"image": "sub/b.png", "tags": [{"label": "cat", "score": 0.5}]}]
    scores, _, n_ignored = match_predictions(rows, truth, ["cat"])
    assert scores.tolist() == [[0.5]] and n_ignored == 0


def test_match_errors(tree):
    truth = [Sample(tree / f"m{i:02d}.png", ["cat"]) for i in range(12)] + [Sample(tree / "a.png", ["cat"])]
    rows = [{"image": "a.png", "tags": []}]
    with pytest.raises(UsageError) as err:
        match_predictions(rows, truth, ["cat"])
    message = str(err.value)
    assert message.startswith("12 truth image(s) have no prediction")
    assert "m00.png" in message and "m09.png" in message and "m10.png" not in message and "and 2 more" in message
    assert "no prediction matched" not in message  # a.png matched: the paths are not the problem
    with pytest.raises(UsageError, match="more than one prediction"):
        match_predictions(rows + [{"image": "./a.png", "tags": []}], truth[-1:], ["cat"])
    elsewhere = [{"image": "other/a.png", "tags": []}]
    with pytest.raises(UsageError, match=r"no prediction matched: .* other/a.png is .*other/a.png; truth paths"):
        match_predictions(elsewhere, truth[-1:], ["cat"])


def test_evaluation_labels():
    truth = [Sample(Path("/a.png"), ["dog", "cat"]), Sample(Path("/b.png"), ["sky"])]
    rows = [{"image": "a.png", "tags": [{"label": "owl", "score": 1.0}, {"label": "cat", "score": 0.5}]}]
    assert evaluation_labels(rows, truth) == ["cat", "dog", "owl", "sky"]
    assert evaluation_labels(rows, truth, unseen=["zebra"]) == ["cat", "dog", "owl", "sky", "zebra"]
    assert evaluation_labels(rows, truth, labels=["sky", "cat", "sky"]) == ["sky", "cat"]


def test_with_the_real_manifest_reader(tmp_path, monkeypatch):
    """Truth read by zstag.data.manifest, predictions relative to the current directory: perfect scores."""
    manifest = pytest.importorskip("zstag.data.manifest")
    from synth import make_dataset

    paths = make_dataset(tmp_path / "data", n=6, size=16, seed=3)
    samples = manifest.read_dataset(paths["manifest"])
    monkeypatch.chdir(tmp_path)
    rows = [
        {
            "image": str(Path("data") / s.image.relative_to(tmp_path / "data")),
            "tags": [{"label": t, "score": 1.0} for t in s.tags],
        }
        for s in samples
    ]
    labels = evaluation_labels(rows, samples)
    scores, truth, n_ignored = match_predictions(rows, samples, labels)
    report = evaluate(scores, truth, labels)
    assert n_ignored == 0 and report["gzs"]["n_images"] == 6
    assert report["gzs"]["mAP"] == pytest.approx(1.0) and report["gzs"]["miAP"] == pytest.approx(1.0)


@pytest.mark.skipif(shutil.which("zstag") is None, reason="the zstag console script is not installed")
def test_top_k_predictions_are_evaluated_with_a_warning(tmp_path):
    """A `zstag tag` file keeps 10 labels per image by default; eval says the rest rank last, tied."""
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"")
    write_jsonl(tmp_path / "truth.jsonl", [{"image": "a.png", "tags": ["cat"]}, {"image": "b.png", "tags": ["dog"]}])
    full = [{"label": "cat", "score": 0.9}, {"label": "dog", "score": 0.1}, {"label": "owl", "score": 0.0}]
    write_jsonl(tmp_path / "all.jsonl", [{"image": n, "tags": full} for n in ("a.png", "b.png")])
    write_jsonl(tmp_path / "top1.jsonl", [{"image": n, "tags": full[:1]} for n in ("a.png", "b.png")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(predictions: str) -> subprocess.CompletedProcess[str]:
        args = ["zstag", "eval", "-p", predictions, "--truth", "truth.jsonl"]
        return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)

    cut, whole = run("top1.jsonl"), run("all.jsonl")
    assert cut.returncode == whole.returncode == 0, cut.stderr + whole.stderr
    assert "score at most 1 of the 2 labels per image" in cut.stderr and "--top-k 0" in cut.stderr
    assert "score at most" not in whole.stderr
