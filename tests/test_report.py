"""`zstag report` and `zstag eval --plots`, through the installed console script: the page's data,
its escaping, thumbnails (made, reused, replaced), exit codes, the numbers shared with `zstag eval`,
and a 100,000-row build. tests/test_report_browser.py opens the pages in Chromium."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from zstag.eval.report import label_curves, pr_curve

ROOT = Path(__file__).resolve().parents[1]
ZSTAG = shutil.which("zstag")
pytestmark = pytest.mark.skipif(ZSTAG is None, reason="the zstag console script is not installed")

HOSTILE = "<script>alert(1)</script>"
HOSTILE_IMG = '<img src="http://127.0.0.1:9/x" onerror="window.__pwned=1">'
LABELS = ["cat", "dog", "red car", "sky", HOSTILE, HOSTILE_IMG]
UNSEEN = ["sky", HOSTILE]


def zstag(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ZSTAG, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def make_set(folder: Path, n: int = 12, seed: int = 0) -> dict[str, Any]:
    """n small PNGs (one with quotes and '#' in its name), predictions with scores, a truth manifest
    and an unseen list; returns their paths and the rows written."""
    rng = random.Random(seed)
    images = folder / "images"
    images.mkdir(parents=True)
    rows, truth = [], []
    for i in range(n):
        name = f"img {i:02d}.png" if i else """it's "quoted" #1.png"""
        picture = Image.new("RGB", (96, 72), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        ImageDraw.Draw(picture).ellipse([10, 10, 60, 60], fill=(255, 255, 255))
        picture.save(images / name)
        tags = sorted(((label, round(rng.random(), 3)) for label in rng.sample(LABELS, 3)), key=lambda t: -t[1])
        rows.append({"image": f"images/{name}", "tags": [{"label": l, "score": s} for l, s in tags]})
        truth.append({"image": f"images/{name}", "tags": rng.sample(LABELS, 2)})
    paths = {"pred": folder / "p.jsonl", "truth": folder / "truth.jsonl", "unseen": folder / "unseen.txt"}
    paths["pred"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["truth"].write_text("".join(json.dumps(r) + "\n" for r in truth))
    paths["unseen"].write_text("\n".join(UNSEEN) + "\n")
    return {**paths, "rows": rows, "truth_rows": truth, "folder": folder}


def page_data(page: Path) -> dict[str, Any]:
    """The JSON blob of a report page, as the page's script reads it."""
    text = page.read_text(encoding="utf-8")
    found = re.search(r'<script id="zstag-data" type="application/json">(.*?)</script>', text, re.S)
    assert found, "no data blob"
    return json.loads(found.group(1))


@pytest.fixture
def photo_set(tmp_path: Path) -> dict[str, Any]:
    return make_set(tmp_path)


def test_report_page_holds_every_row_with_thumbnails(photo_set):
    folder = photo_set["folder"]
    result = zstag("report", "p.jsonl", "-o", "r.html", cwd=folder)
    assert result.returncode == 0, result.stderr
    data = page_data(folder / "r.html")
    assert len(data["images"]) == 12 and data["eval"] is None
    assert [row[0] for row in data["images"]] == [r["image"] for r in photo_set["rows"]]
    thumbs = sorted((folder / "r_files").glob("*.webp"))
    assert len(thumbs) == 12
    for row in data["images"]:
        assert row[2].startswith("r_files/") and (folder / row[2]).is_file()
        with Image.open(folder / row[2]) as thumb:
            assert thumb.format == "WEBP" and max(thumb.size) <= 160
        assert not row[1].startswith(("/", "file:")), "images must be referenced by relative path"
    # the name with quotes and '#' is URL-quoted, so the link still reaches the file
    assert data["images"][0][1] == "images/it%27s%20%22quoted%22%20%231.png"
    # scores come sorted, highest first, with their labels
    for row, given in zip(data["images"], photo_set["rows"]):
        assert [data["labels"][j] for j in row[3]] == [t["label"] for t in given["tags"]]
        assert row[4] == [t["score"] for t in given["tags"]]


def test_hostile_labels_cannot_close_the_data_script(photo_set):
    folder = photo_set["folder"]
    assert zstag("report", "p.jsonl", "-o", "r.html", "--no-thumbnails", cwd=folder).returncode == 0
    text = (folder / "r.html").read_text(encoding="utf-8")
    assert HOSTILE not in text and HOSTILE_IMG not in text and "<img" not in text
    assert text.count("</script>") == 2  # the data blob's and the script's own, nothing from the data
    assert HOSTILE in page_data(folder / "r.html")["labels"]  # but the blob still says what the label is
    assert "default-src 'none'" in text


def test_thumbnails_are_reused_remade_when_the_image_changes_and_stale_ones_removed(photo_set):
    folder = photo_set["folder"]
    assert zstag("report", "p.jsonl", "-o", "r.html", cwd=folder).returncode == 0
    first = {p.name: p.stat().st_mtime_ns for p in (folder / "r_files").glob("*.webp")}
    again = zstag("report", "p.jsonl", "-o", "r.html", cwd=folder)
    assert again.returncode == 0 and "0 made, 12 reused" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "r_files").glob("*.webp")} == first
    changed = folder / "images" / "img 03.png"
    Image.new("RGB", (50, 50), "blue").save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = zstag("report", "p.jsonl", "-o", "r.html", cwd=folder)
    assert third.returncode == 0 and "1 made, 11 reused" in third.stderr
    now = {p.name for p in (folder / "r_files").glob("*.webp")}
    assert len(now) == 12 and len(now - set(first)) == 1  # the old thumbnail of img 03 is gone
    row = page_data(folder / "r.html")["images"][3]
    with Image.open(folder / row[2]) as thumb:
        assert thumb.convert("RGB").getpixel((10, 10)) == pytest.approx((0, 0, 255), abs=12)


def test_unreadable_image_exits_3_names_it_and_keeps_the_rest(photo_set):
    folder = photo_set["folder"]
    (folder / "images" / "img 05.png").write_bytes(b"<html>not a png</html>")
    (folder / "images" / "img 06.png").unlink()
    result = zstag("report", "p.jsonl", "-o", "r.html", cwd=folder)
    assert result.returncode == 3, result.stderr
    assert "img 05.png" in result.stderr and "img 06.png" in result.stderr
    thumbs = [row[2] for row in page_data(folder / "r.html")["images"]]
    assert thumbs[5] is None and thumbs[6] is None and sum(t is not None for t in thumbs) == 10


@pytest.mark.parametrize("existing", ["r.html", "r_files/notes.txt"])
def test_refuses_to_overwrite_what_zstag_did_not_write(photo_set, existing):
    folder = photo_set["folder"]
    target = folder / existing
    target.parent.mkdir(exist_ok=True)
    target.write_text("my own notes")
    result = zstag("report", "p.jsonl", "-o", "r.html", cwd=folder)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not written by zstag report" in result.stderr or "not made by zstag report" in result.stderr
    assert target.read_text() == "my own notes"


def test_bad_predictions_file_exits_2_with_one_line(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"image": "a.png"}\n')
    result = zstag("report", "p.jsonl", "-o", "r.html", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "p.jsonl:1" in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_truth_gives_the_numbers_of_zstag_eval(photo_set):
    folder = photo_set["folder"]
    result = zstag(
        "report",
        "p.jsonl",
        "--truth",
        "truth.jsonl",
        "--unseen",
        "unseen.txt",
        "-o",
        "r.html",
        "--no-thumbnails",
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr
    data = page_data(folder / "r.html")
    evaluated = zstag("eval", "-p", "p.jsonl", "--truth", "truth.jsonl", "--unseen", "unseen.txt", "--json", cwd=folder)
    assert evaluated.returncode == 0, evaluated.stderr
    assert data["eval"]["report"] == json.loads(evaluated.stdout)
    ap = [v for v in data["eval"]["ap"] if v is not None]
    assert np.mean(ap) == pytest.approx(data["eval"]["report"]["gzs"]["mAP"])
    unseen_ap = [data["eval"]["ap"][j] for j in data["unseen"] if data["eval"]["ap"][j] is not None]
    assert np.mean(unseen_ap) == pytest.approx(data["eval"]["report"]["zs"]["mAP"])
    assert sorted(data["labels"][j] for j in data["unseen"]) == sorted(UNSEEN)
    assert data["eval"]["pr"]["gzs"] and data["eval"]["pr"]["zs"]
    for row, given in zip(data["images"], photo_set["truth_rows"]):
        assert sorted(data["labels"][j] for j in row[5]) == sorted(given["tags"])


def test_pr_curve_points_one_per_threshold_with_ties_grouped():
    scores = np.array([[0.9, 0.5], [0.5, 0.1]])
    truth = np.array([[True, False], [True, True]])
    # thresholds 0.9 (1 of 1 right), 0.5 (a tie: 2 more cells, 1 right), 0.1 (1 more, right)
    assert pr_curve(scores, truth) == [
        [pytest.approx(1 / 3, abs=1e-4), 1.0],
        [pytest.approx(2 / 3, abs=1e-4), pytest.approx(2 / 3, abs=1e-4)],
        [1.0, 0.75],
    ]
    assert pr_curve(scores, np.zeros_like(truth)) == []
    many = pr_curve(
        np.random.default_rng(0).random((50, 40)), np.random.default_rng(1).random((50, 40)) < 0.2, max_points=25
    )
    assert len(many) == 25 and many[-1][0] == 1.0
    curves = label_curves(scores, truth, ["a", "b"], ["b"])
    assert curves["positives"] == [2, 1] and curves["ap"] == [1.0, 0.5]
    assert curves["pr"]["zs"] == [[0.0, 0.0], [1.0, 0.5]]  # b: 0.5 is a negative, 0.1 its positive


def test_eval_plots_draws_both_charts(photo_set):
    folder = photo_set["folder"]
    result = zstag(
        "eval", "-p", "p.jsonl", "--truth", "truth.jsonl", "--unseen", "unseen.txt", "--plots", "plots", cwd=folder
    )
    assert result.returncode == 0, result.stderr
    assert "mAP" in result.stdout  # the table still prints
    for name, colour in (("pr_curves.png", (214, 39, 40)), ("ap_per_label.png", (31, 119, 180))):
        with Image.open(folder / "plots" / name) as chart:
            pixels = np.asarray(chart.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 10, f"{name} is blank"
        assert (pixels == colour).all(axis=1).any(), f"{name} lacks its data colour"


def test_eval_plots_replaces_its_own_charts_only_and_refuses_a_file(photo_set):
    folder = photo_set["folder"]
    args = ("eval", "-p", "p.jsonl", "--truth", "truth.jsonl", "--plots")
    assert zstag(*args, "charts", cwd=folder).returncode == 0
    assert zstag(*args, "charts", cwd=folder).returncode == 0  # a rerun replaces its own charts
    (folder / "charts" / "pr_curves.png").write_bytes(b"someone's chart")
    refused = zstag(*args, "charts", cwd=folder)
    assert refused.returncode == 2 and "pr_curves.png" in refused.stderr and "did not write" in refused.stderr
    assert refused.stdout == ""  # refused before the evaluation, not after printing it
    assert (folder / "charts" / "pr_curves.png").read_bytes() == b"someone's chart"
    a_file = zstag(*args, "p.jsonl", cwd=folder)
    assert a_file.returncode == 2 and a_file.stderr.strip() == "error: --plots p.jsonl is a file; give a folder"


def test_a_100000_row_report_builds_quickly(tmp_path):
    labels = [f"label {i}" for i in range(300)]
    rng = np.random.default_rng(0)
    with open(tmp_path / "p.jsonl", "w") as fh:
        for i in range(100_000):
            picks = rng.choice(300, 5, replace=False)
            tags = [
                {"label": labels[j], "score": round(float(s), 4)} for j, s in zip(picks, np.sort(rng.random(5))[::-1])
            ]
            fh.write(json.dumps({"image": f"photos/{i:06d}.jpg", "tags": tags}) + "\n")
    start = time.perf_counter()
    result = zstag("report", "p.jsonl", "--no-thumbnails", "-o", "big.html", cwd=tmp_path)
    took = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert took < 60, f"{took:.1f} s"
    page = tmp_path / "big.html"
    assert page.stat().st_size < 20_000_000
    assert len(page_data(page)["images"]) == 100_000
