"""The bundled default model and backbone work on a fresh machine with no network (issue #7)."""

from __future__ import annotations

import json
from pathlib import Path

from zstag.backbones import build_backbone
from zstag.core.paths import WEIGHTS_DIR

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def test_readme_command_tags_the_example_photos_offline(cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("tag", EXAMPLES / "photos", "--labels", EXAMPLES / "vocab.txt", "--top-k", "5", "--workers", "0")
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in result.out.splitlines()]
    vocab = {line for line in (EXAMPLES / "vocab.txt").read_text().splitlines() if line and not line.startswith("#")}
    assert len(rows) == len(list((EXAMPLES / "photos").iterdir())) == 7
    assert all(len(r["tags"]) == 5 and {t["label"] for t in r["tags"]} <= vocab for r in rows)


def test_bundled_backbone_carries_its_classifier_and_class_names():
    backbone = build_backbone("bundled")
    config = json.loads((WEIGHTS_DIR / "bundled" / "config.json").read_text())
    assert backbone.class_names == config["class_names"] and len(backbone.class_names) > 100
    assert backbone.classifier[-1].out_features == len(backbone.class_names)
    default = json.loads((WEIGHTS_DIR / "default" / "config.json").read_text())
    assert default["backbone"] == "bundled" and default["method"] == "ensemble"
    assert {m["method"] for m in default["hp"]["members"]} == {"lesa"} and default["score_norm"] == "seen"
    assert not set(default["seen_labels"]) & set(default["unseen_labels"])
