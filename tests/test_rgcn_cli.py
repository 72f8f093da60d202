"""RGCN-PosVAE through the standard commands with the backbones whose classifier supplies its
external knowledge: the bundled backbone, and a fetched ImageNet backbone (a random-weight
stand-in written into the fetch cache under timm's names)."""

from __future__ import annotations

import json

import torch

from test_torchvision_backbones import fake_cache, ours_to_timm  # noqa: F401  (fixture)
from zstag.backbones import build_backbone


def run(cli, dataset, word_vectors, tmp_path, backbone: str) -> dict:
    import synth

    data = synth.make_dataset(tmp_path / "data", n=24, size=32)
    out = tmp_path / "model"
    result = cli("-q", "train", data["manifest"], "--method", "rgcn-posvae", "--backbone", backbone,
                 "--unseen", data["unseen"], "--epochs", "1", "--image-size", "32", "--batch-size", "12",
                 "--device", "cpu", "--workers", "0", "--val-fraction", "0.2", "--out", out)
    assert result.code == 0, result.err
    report = json.loads(cli("eval", "--model", out, "--truth", data["manifest"], "--unseen", data["unseen"], "--json",
                            "--device", "cpu", "--workers", "0").out)
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
