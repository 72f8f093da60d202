"""RGCN-PosVAE through the standard commands with the backbones whose classifier supplies its
external knowledge: the bundled backbone, and a fetched ImageNet backbone (a random-weight
stand-in written into the fetch cache under timm's names). The graph comes from the miniature
WordNet of tests/wordnet_fixture.py (ZSTAG_WORDNET), or from no WordNet at all for the fallback."""

from __future__ import annotations

import json

import pytest
import torch
from synth import ON_CPU
from test_torchvision_backbones import fake_cache, ours_to_timm  # noqa: F401  (fixture)
from wordnet_fixture import write_tagging_wordnet

from zstag.backbones import build_backbone
from zstag.methods.rgcn import graph as kg


@pytest.fixture(autouse=True)
def _wordnet(tmp_path, monkeypatch):
    """The paper's WordNet graph from the miniature, whatever WordNet the machine has (or lacks)."""
    monkeypatch.setenv("ZSTAG_WORDNET", str(write_tagging_wordnet(tmp_path / "wordnet")))
    monkeypatch.setattr(kg, "_warned_missing", set())  # each test is a fresh run


def wordnet_warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "WordNet" in line]


def train(cli, tmp_path, backbone: str, *extra: str):
    import synth

    data = synth.make_dataset(tmp_path / "data", n=24, size=32)
    out = tmp_path / "model"
    result = cli(
        "-q",
        "train",
        data["manifest"],
        "--method",
        "rgcn-posvae",
        "--backbone",
        backbone,
        "--unseen",
        data["unseen"],
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "12",
        *ON_CPU,
        "--val-fraction",
        "0.2",
        "--out",
        out,
        *extra,
    )
    return data, out, result


def run(cli, dataset, word_vectors, tmp_path, backbone: str) -> dict:
    data, out, result = train(cli, tmp_path, backbone)
    assert result.code == 0, result.err
    assert wordnet_warnings(result.err) == []  # the miniature WordNet was found
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
    return {"config": json.loads((out / "config.json").read_text()), "report": report}


def test_rgcn_posvae_on_the_bundled_backbone(cli, dataset, word_vectors, tmp_path):
    got = run(cli, dataset, word_vectors, tmp_path, "bundled")
    assert got["config"]["backbone"] == "bundled" and got["config"]["hp"]["variant"] == "rgcn-posvae"
    assert 0 <= got["report"]["gzs"]["mAP"] <= 1


def test_rgcn_posvae_on_a_fetched_imagenet_backbone(cli, dataset, word_vectors, tmp_path, fake_cache):  # noqa: F811
    torch.manual_seed(0)
    fake_cache("resnet50", ours_to_timm("resnet50", build_backbone("resnet50", pretrained=False).state_dict()))
    got = run(cli, dataset, word_vectors, tmp_path, "resnet50")
    assert got["config"]["backbone"] == "resnet50"
    assert 0 <= got["report"]["zs"]["mAP"] <= 1


def test_rgcn_posvae_without_wordnet_says_so_in_one_line(cli, tmp_path, monkeypatch):
    """No WordNet where ZSTAG_WORDNET points: training still runs, on a cosine-only graph, and
    stderr carries exactly one warning about it (not one per batch, epoch or vocabulary)."""
    monkeypatch.setenv("ZSTAG_WORDNET", str(tmp_path / "no-wordnet"))
    _, out, result = train(cli, tmp_path, "bundled", "--epochs", "2")
    assert result.code == 0, result.err
    lines = wordnet_warnings(result.err)
    assert lines == ["warning: " + kg.missing_wordnet_message(tmp_path / "no-wordnet")], result.err
    assert "apt-get install wordnet-base" in lines[0] and "cosine" in lines[0]
    assert (out / "config.json").is_file()
