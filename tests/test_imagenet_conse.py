"""`--model imagenet`: ConSE over a fetched network's own ImageNet classifier. The arithmetic on a
hand-made classifier, and fetch -> tag -> eval through the console script against the fake hub."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import synth
import torch
from fakehub import serve, serve_registry, tiny_resnet50_file
from torch import nn

from zstag.backbones.base import Backbone
from zstag.data.labels import LabelSet
from zstag.methods.conse import ConSE

ZSTAG = shutil.which("zstag")


class HandMade(Backbone):
    """One 1x1 'stage' holding the image's first pixel triple; the classifier reads it as 3 logits."""

    name = "hand-made"
    channels = (3, 3, 3)

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Flatten()
        self.class_names = ["cat", "dog", "car"]

    def feature_maps(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        for _ in range(3):
            yield images[:, :, :1, :1]


def test_top_t_probabilities_weight_the_class_vectors():
    seen = LabelSet(["cat", "dog", "car"], torch.eye(3))
    hp = ConSE.hyperparameters({"single_label": True, "top_t": 2, "backbone_classifier": True})
    method = ConSE(HandMade(), seen, hp, lambda names: seen)
    logits = torch.tensor([math.log(6.0), math.log(3.0), math.log(1.0)])  # softmax 0.6, 0.3, 0.1
    images = logits.view(1, 3, 1, 1)
    label = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, 2.0]]), dim=1)
    score = method(images, LabelSet(["pet"], label))
    # top 2: cat (0.6) and dog (0.3) -> (0.6 e1 + 0.3 e2) / 0.9, normalised -> (2, 1, 0) / sqrt(5)
    expected = (2 * 1 + 1 * 2) / math.sqrt(5) / 3
    assert score.item() == pytest.approx(expected, abs=1e-6)
    assert not [n for n, _ in method.named_parameters() if not n.startswith("backbone.")]  # nothing to train


def test_backbone_classifier_must_cover_the_seen_labels():
    from zstag.core.errors import UsageError

    seen = LabelSet(["a", "b"], torch.eye(2))
    hp = ConSE.hyperparameters({"backbone_classifier": True})
    with pytest.raises(UsageError, match="pretraining classifier"):
        ConSE(HandMade(), seen, hp, lambda names: seen)


@pytest.mark.skipif(ZSTAG is None, reason="the zstag console script is not installed")
def test_fetch_tag_eval_with_the_imagenet_model(tmp_path, monkeypatch):
    fake = serve(tmp_path, monkeypatch)
    try:
        (tmp_path / "w").mkdir()
        weights = tiny_resnet50_file(tmp_path / "w")
        serve_registry(fake, tmp_path, monkeypatch, "resnet50", {"model.safetensors": weights})
        data = synth.make_dataset(tmp_path / "data", n=4, size=32)

        def zstag(*args: object) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [ZSTAG, *map(str, args)],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=600,
                env=dict(os.environ),
            )

        missing = zstag("tag", data["images"], "--labels", data["vocab"], "--model", "imagenet")
        assert missing.returncode == 2 and "zstag fetch resnet101" in missing.stderr, missing.stderr
        assert zstag("fetch", "resnet50").returncode == 0
        tagged = zstag(
            "tag", data["images"], "--labels", data["vocab"], "--model", "imagenet", "--top-k", "2", "--device", "cpu"
        )
        assert tagged.returncode == 0, tagged.stderr
        assert len([json.loads(line) for line in tagged.stdout.splitlines()]) == 4
        evaluated = zstag(
            "eval", "--model", "imagenet-resnet50", "--truth", data["manifest"], "--json", "--device", "cpu"
        )
        assert evaluated.returncode == 0, evaluated.stderr
        models = {json.loads(line)["name"]: json.loads(line) for line in zstag("models", "--json").stdout.splitlines()}
        assert models["imagenet"]["backbone"] == "resnet50" and models["imagenet"]["seen"] == 1000
    finally:
        fake.stop()
