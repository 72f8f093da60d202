"""Scale-out: `--shard I/N` job arrays and torchrun (2 gloo processes on the CPU) give exactly the
rows of a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synth import ON_CPU

from zstag.core.errors import UsageError
from zstag.engine.distributed import Share, current_share, parse_shard
from zstag.store.model import build_model, save_model


@pytest.mark.parametrize("n", [0, 1, 5, 17, 100])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_blocks_cover_every_item_once_in_order(n, count):
    items = list(range(n))
    joined = [x for i in range(count) for x in items[Share(i, count, False).block(n)]]
    assert joined == items
    sizes = [len(items[Share(i, count, False).block(n)]) for i in range(count)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("text", ["3", "a/b", "4/4", "-1/4", "0/0", "1/2/3"])
def test_bad_shard_specs(text):
    with pytest.raises(UsageError, match="--shard expects I/N"):
        parse_shard(text)


def test_share_comes_from_torchrun_or_the_option(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert current_share(None) is None and current_share("0/1") is None
    assert current_share("2/5") == Share(2, 5, torchrun=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert current_share(None) == Share(3, 4, torchrun=True)
    with pytest.raises(UsageError, match="use one of them"):
        current_share("0/2")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, word_vectors) -> Path:
    model = build_model(
        "fast0tag", "small", str(word_vectors), ["red circle", "blue square"], {"hidden": 16}, image_size=32
    )
    model.config["training"] = {}
    out = tmp_path_factory.mktemp("model") / "m"
    save_model(model, out)
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    assert [r["image"] for r in got] == [r["image"] for r in want]
    for a, b in zip(got, want):
        assert [t["label"] for t in a["tags"]] == [t["label"] for t in b["tags"]]
        assert [t["score"] for t in a["tags"]] == pytest.approx([t["score"] for t in b["tags"]], abs=1e-5)


def test_job_array_shards_concatenate_to_the_single_run(dataset, model_dir, cli, tmp_path):
    common = ("--labels", dataset["vocab"], "--model", model_dir, "--top-k", "3", *ON_CPU)
    assert cli("tag", dataset["images"], *common, "-o", tmp_path / "all.jsonl").code == 0
    parts = []
    for i in range(3):
        result = cli("tag", dataset["images"], *common, "--shard", f"{i}/3", "-o", tmp_path / f"part{i}.jsonl")
        assert result.code == 0, result.err
        parts.append(rows(tmp_path / f"part{i}.jsonl"))
    assert [len(p) for p in parts] == [40, 40, 40]
    assert_same_rows([r for p in parts for r in p], rows(tmp_path / "all.jsonl"))


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    # The package under test, installed or not (the ranks start in `cwd`).
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "zstag",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
    )


def test_torchrun_two_gloo_processes_give_the_single_process_rows(dataset, model_dir, cli, tmp_path):
    common = ("--labels", dataset["vocab"], "--model", model_dir, "--top-k", "3", *ON_CPU)
    assert cli("tag", dataset["images"], *common, "-o", tmp_path / "single.jsonl").code == 0
    result = torchrun("-q", "tag", dataset["images"], *common, "-o", tmp_path / "multi.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_rows(rows(tmp_path / "multi.jsonl"), rows(tmp_path / "single.jsonl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi.jsonl", "single.jsonl"], "shards are removed"

    # csv keeps one header; the joined file equals the single run's file row for row.
    assert cli("tag", dataset["images"], *common, "-f", "csv", "-o", tmp_path / "single.csv").code == 0
    result = torchrun("-q", "tag", dataset["images"], *common, "-f", "csv", "-o", tmp_path / "multi.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    multi, single = (
        (tmp_path / "multi.csv").read_text().splitlines(),
        (tmp_path / "single.csv").read_text().splitlines(),
    )
    assert multi[0] == single[0] == "image,tags,scores" and multi.count(multi[0]) == 1
    assert [line.split(",")[:2] for line in multi] == [line.split(",")[:2] for line in single]


def test_torchrun_refuses_stdin_and_stdout(dataset, model_dir, tmp_path):
    result = torchrun(
        "tag", dataset["images"], "--labels", dataset["vocab"], "--model", model_dir, "--device", "cpu", cwd=tmp_path
    )
    assert result.returncode != 0 and "give --output FILE" in result.stderr


def test_torchrun_ddp_training_matches_single_process(dataset, word_vectors, tmp_path):
    """Two gloo ranks, each taking half of every global batch of 8, end with the weights of one
    process training on the whole batches: DDP averages the two halves' gradients, which equals
    the whole batch's gradient for a loss that averages over images (ConSE's cross-entropy; a loss
    normalised over the pairs of the whole batch, like Fast0Tag's, differs slightly)."""
    from safetensors.torch import load_file

    from zstag.training.trainer import TrainOptions, train

    common = [
        "--method",
        "conse",
        "--backbone",
        "small",
        "--semantics",
        str(word_vectors),
        "--unseen",
        str(dataset["unseen"]),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        *ON_CPU,
        "--set",
        "finetune_backbone=false",
    ]
    result = torchrun("-q", "train", dataset["manifest"], "--out", tmp_path / "ddp", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    train(
        TrainOptions(
            data=dataset["manifest"],
            method="conse",
            out=tmp_path / "single",
            unseen=dataset["unseen"],
            backbone="small",
            semantics=str(word_vectors),
            epochs=2,
            batch_size=8,
            image_size=32,
            device="cpu",
            workers=0,
            overrides={"finetune_backbone": False},
        )
    )
    ddp, single = (
        load_file(str(tmp_path / "ddp" / "model.safetensors")),
        load_file(str(tmp_path / "single" / "model.safetensors")),
    )
    assert ddp.keys() == single.keys()
    for key in single:
        assert torch.allclose(ddp[key], single[key], atol=1e-5), key
    # Not vacuous: one process on half batches (rank 0 without its partner's gradients) ends elsewhere.
    train(
        TrainOptions(
            data=dataset["manifest"],
            method="conse",
            out=tmp_path / "half",
            unseen=dataset["unseen"],
            backbone="small",
            semantics=str(word_vectors),
            epochs=2,
            batch_size=4,
            image_size=32,
            device="cpu",
            workers=0,
            overrides={"finetune_backbone": False},
        )
    )
    half = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert any(not torch.allclose(ddp[k], half[k], atol=1e-4) for k in single)
    assert not (tmp_path / "ddp" / "checkpoint.safetensors").exists()
