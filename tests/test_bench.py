"""`zstag bench`: every section runs on a CPU and reports measured, finite, positive numbers, with
its ratios computed from the measured values, never typed in."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zstag.bench.memory import LargestTensor
from zstag.bench.options import SECTIONS, BenchOptions
from zstag.bench.photos import write_photos
from zstag.bench.run import Plan
from zstag.methods import METHODS

SMALL = ("--quick", "--device", "cpu", "--images", "4", "--batch-size", "2", "--image-size", "64")


def numbers(section: dict) -> list[tuple[str, float]]:
    return [
        (f"{i}.{k}", float(v))
        for i, row in enumerate(section["rows"])
        for k, v in row.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]


def check_common(report: dict, sections: list[str]) -> None:
    assert list(report["sections"]) == sections
    assert report["machine"]["torch"] == torch.__version__
    for name in sections:
        section = report["sections"][name]
        assert section["rows"] and section["notes"]
        for where, value in numbers(section):
            assert math.isfinite(value), f"{name} {where} = {value}"
            if not where.endswith(("_mib", "compile_s", "_difference")):  # these may be 0: no memory added, ...
                assert value > 0, f"{name} {where} = {value}"
        for row in section["rows"]:
            assert row["device"].startswith("CPU") and row["torch"] == torch.__version__
            assert row["command"].startswith("zstag bench --quick") and row["batch_size"] > 0 and row["image_size"] > 0


def test_bench_tensor_sections(cli, tmp_path, monkeypatch):
    """Everything but end-to-end (whose fresh processes take most of a minute here): see the slow test.
    The forward section also measures the compiled model (with Dynamo's quick `eager` backend here)."""
    monkeypatch.setenv("ZSTAG_COMPILE_BACKEND", "eager")
    out = tmp_path / "bench.json"
    only = [s for s in SECTIONS if s != "end-to-end"]
    result = cli("bench", *SMALL, "--only", ",".join(only), "--compile", "--repeats", "1", "--json", out)
    assert result.code == 0, result.err
    assert result.out == ""  # tables on stderr, JSON in the file
    assert "zstag bench: vocab-scale" in result.err
    report = json.loads(out.read_text())
    check_common(report, only)
    sections = report["sections"]

    few, many = sections["vocab-scale"]["rows"]
    assert (few["labels"], many["labels"]) == (100, 20_000)  # more than one LABEL_CHUNK
    assert many["ratio"] == pytest.approx(many["ms_per_image"] / few["ms_per_image"])
    assert many["meets_target"] == (many["ratio"] <= many["target"] == 1.10)
    assert many["bounded"] and many["largest_tensor_elements"] < many["images_x_labels_x_dim"] == 2 * 20_000 * 384

    rows = sections["methods"]["rows"]
    assert [r["method"] for r in rows] == list(METHODS)
    assert all(r["backbone"] == "bundled" and r["weights"] == "pretrained" and r["image_size"] == 64 for r in rows)
    assert sections["forward"]["rows"][0]["image_size"] == 64  # the default model, rebuilt at that size
    assert all(
        r["infer_images_per_s"] > 0 and r["train_images_per_s"] > 0 and r["finetune_images_per_s"] > 0 for r in rows
    )
    # The trainer's cached-maps regime for every method but the one that reads the images (SGMA's crops).
    assert [r["method"] for r in rows if r["train_cached_images_per_s"] is None] == ["sgma"]
    assert all(r["train_cached_images_per_s"] > 0 for r in rows if r["method"] != "sgma")
    assert {r["path"].split()[0] for r in sections["decode"]["rows"]} == {"Pillow", "torchvision"}
    eager, compiled = sections["forward"]["rows"]
    assert eager["images_per_s"] == pytest.approx(2 / (eager["ms_per_batch"] / 1e3))
    assert (eager["compiled"], compiled["compiled"]) == (False, True)
    assert compiled["speedup"] == pytest.approx(compiled["images_per_s"] / eager["images_per_s"])
    assert compiled["max_abs_difference"] < 1e-4 and compiled["compile_s"] >= 0
    # The pipeline cut after each stage: every prefix of tagging, then the whole job, over the same photos.
    stages = sections["pipeline"]["rows"]
    assert [r["stage"] for r in stages] == ["read", "decode", "score", "score, compiled", "tag"]
    assert all(r["images_per_s"] == pytest.approx(4 / r["seconds"]) for r in stages)
    assert report["plan"]["repeats"] == 1


@pytest.mark.slow
def test_bench_every_section(cli, tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", *SMALL, "--json", out)
    assert result.code == 0, result.err
    report = json.loads(out.read_text())
    check_common(report, list(SECTIONS))
    batch, single = report["sections"]["end-to-end"]["rows"]
    assert batch["ratio"] == pytest.approx(batch["zstag_images_per_s"] / batch["loop_images_per_s"])
    assert batch["meets_target"] == (batch["ratio"] >= batch["target"] == 1.5)
    for side in ("zstag", "loop"):  # the steady state and the fixed cost split each run's time
        if batch[f"{side}_steady_images_per_s"] is not None:
            whole = batch["images"] / batch[f"{side}_images_per_s"]
            steady = batch["images"] / batch[f"{side}_steady_images_per_s"]
            assert batch[f"{side}_fixed_s"] == pytest.approx(whole - steady)
    assert single["ratio"] == pytest.approx(single["loop_seconds"] / single["zstag_seconds"])
    assert single["zstag_command"].split()[1:4] == ["-m", "zstag", "-q"]


def test_bench_json_to_stdout_and_unknown_section(cli):
    result = cli("bench", *SMALL, "--only", "decode", "--json", "-")
    assert result.code == 0, result.err
    assert list(json.loads(result.out)["sections"]) == ["decode"]
    bad = cli("bench", *SMALL, "--only", "decode,speed")
    assert bad.code == 2 and "--only" in bad.err and "speed" in bad.err


def test_plan_sizes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert Plan.make(BenchOptions(quick=True), cpu).vocab == (100, 20_000)
    assert Plan.make(BenchOptions(), cpu).vocab == (100, 100_000)
    assert Plan.make(BenchOptions(), cuda).batch_size == 256
    assert Plan.make(BenchOptions(), cuda).repeats == 3 and Plan.make(BenchOptions(repeats=5), cpu).repeats == 5
    assert Plan.make(BenchOptions(images=7, batch_size=3), cpu).images == 7


def test_write_photos_links_beyond_the_distinct_ones(tmp_path, monkeypatch):
    import zstag.bench.photos as bench

    monkeypatch.setattr(bench, "DISTINCT_PHOTOS", 2)
    paths = write_photos(tmp_path, 3)
    assert [p.name for p in paths] == ["photo00000.jpg", "photo00001.jpg", "photo00002.jpg"]
    assert paths[2].read_bytes() == paths[0].read_bytes() != paths[1].read_bytes()
    from PIL import Image

    with Image.open(paths[0]) as image:
        assert image.size == (500, 375) and image.format == "JPEG"


def test_largest_tensor_sees_intermediates_not_views():
    a, b = torch.randn(4, 3), torch.randn(3, 5)
    with LargestTensor() as largest:
        (a @ b).sum()
        a[:2].mul_(2)
        a.expand(1000, 4, 3)
    assert largest.numel == 20


PEAK_PROBE = """
import time, torch
from zstag.bench.memory import PeakMemory
with PeakMemory(torch.device("cpu")) as memory:
    block = torch.ones(64, 2**20 // 4)  # 64 MiB, touched
    block.sum()
    time.sleep(0.1)
    del block
print(memory.mib)
"""


def test_peak_memory_sees_a_transient_allocation():
    """Freed before the block ends, the allocation is still seen. It is held for 100 ms, many
    sampling periods: on a loaded machine the 2-ms sampler may not run during a shorter life.
    In a fresh process: inside the suite, memory freed by earlier tests can stay resident and
    be reused, so the resident set need not grow (it failed so, twice, only in the full suite)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", PEAK_PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) >= 32


def test_head_flops_charge_the_backbone_only_for_the_stages_the_method_runs():
    """`python -m tools.heads`: LESA attends over the region map, so its backbone share
    is what `regions` costs, not all three stages; the head's share is what remains, and the
    backbone's methods are its own again afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    from zstag.backbones import build_backbone
    from zstag.bench.heads import build_head, random_labels, scoring_flops

    labels = random_labels(20, 16)
    method = build_head("lesa", build_backbone("small", pretrained=False), labels).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        total, backbone = scoring_flops(method, images, labels)
        regions, stages = FlopCounterMode(display=False), FlopCounterMode(display=False)
        with regions:
            method.backbone.regions(images)
        with stages:
            method.backbone.stages(images)
    assert backbone == regions.get_total_flops() < stages.get_total_flops()
    assert total > backbone > 0
    assert "regions" not in vars(method.backbone)

    # RGCN-PosVAE reaches its backbone twice (all stages, then the pretraining classifier): both count.
    rgcn = build_head("rgcn-posvae", build_backbone("bundled"), labels).eval()
    with torch.inference_mode():
        _, both = scoring_flops(rgcn, images, labels)
        with stages:
            rgcn.backbone.stages(images)
    assert both > stages.get_total_flops()


def test_naive_loop_with_workers_tags_as_without(tmp_path):
    """The GPU side's loop (a DataLoader with workers and pinned memory when on CUDA) writes what
    the one-process loop writes, in the same order."""
    import io

    from zstag.bench.naive import tag_loop

    photos = write_photos(tmp_path / "photos", 3)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("dog\ncat\nsky\n")
    outputs = []
    for workers in (0, 1):
        out = io.StringIO()
        assert tag_loop(photos, vocab, "default", "cpu", 2, out, workers=workers, batch=2) == 3
        outputs.append([json.loads(line) for line in out.getvalue().splitlines()])
    assert [row["image"] for row in outputs[0]] == [str(p) for p in photos]
    for a, b in zip(*outputs):
        assert [t["label"] for t in a["tags"]] == [t["label"] for t in b["tags"]]
        assert [t["score"] for t in a["tags"]] == pytest.approx([t["score"] for t in b["tags"]], abs=1e-5)


def test_json_never_replaces_a_file_that_is_not_a_bench_report(tmp_path):
    """Checked before measuring: someone's file, a folder, a missing folder (exit 2, untouched)."""
    from test_console_script import ZSTAG, zstag

    if ZSTAG is None:
        pytest.skip("the zstag console script is not installed")
    (tmp_path / "notes.json").write_text('{"mine": 1}\n')
    (tmp_path / "folder").mkdir()
    for target, named in (
        ("notes.json", "exists and is not a zstag bench report"),
        ("folder", "is a folder"),
        ("nodir/b.json", "the folder of --json nodir/b.json does not exist"),
    ):
        result = zstag("bench", "--quick", "--device", "cpu", "--only", "decode", "--json", target, cwd=tmp_path)
        assert result.returncode == 2 and named in result.stderr, result.stderr
        assert "bench:" not in result.stderr  # nothing was measured
    assert (tmp_path / "notes.json").read_text() == '{"mine": 1}\n'
