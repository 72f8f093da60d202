"""CLIP's zero-shot classifier (`ZeroShotHead`) on a hand-made tower: its class-name vectors are
embedded before the engine compiles a method's `encode`, only for methods that read the classifier,
and an input that is not the pooled image vector is refused with the reason."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zstag.backbones.base import Backbone, Stages
from zstag.backbones.clip import ClipBackbone, ZeroShotHead
from zstag.data.labels import LabelSet
from zstag.engine.engine import Engine
from zstag.methods.base import Method
from zstag.methods.conse import ConSE
from zstag.methods.rgcn.posvae import RGCNPosVAE

NAMES = ["cat", "dog", "car"]


class TinyClip(ClipBackbone):
    """ClipBackbone's classifier hooks over a 1x1 convolution instead of a CLIP tower."""

    def __init__(self) -> None:
        Backbone.__init__(self)  # no tower: nothing to fetch
        self.name, self.channels = "tiny-clip", (4, 4, 4)
        self.conv = nn.Conv2d(3, 4, 1)
        self.class_names = NAMES
        self.classifier = ZeroShotHead("tiny-semantics", NAMES, 10.0)

    def feature_maps(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        maps = self.conv(images)
        for _ in range(3):
            yield maps

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = list(self.feature_maps(images))
        return Stages(maps, maps[-1].mean(dim=(2, 3)))


@pytest.fixture
def traced(monkeypatch) -> list[list[str]]:
    """`torch.compile` replaced by a wrapper that marks its calls as traced, and the class-name
    embedding replaced by one that refuses to run while traced; returns the names it embedded."""
    state = {"tracing": False}
    embedded: list[list[str]] = []

    def compile(fn, **kwargs):
        def traced_call(*args):
            state["tracing"] = True
            try:
                return fn(*args)
            finally:
                state["tracing"] = False

        return traced_call

    def embed_labels(semantics, names):
        assert not state["tracing"], "the class names were embedded inside torch.compile"
        embedded.append(list(names))
        return LabelSet(list(names), F.normalize(torch.randn(len(names), 4), dim=1))

    monkeypatch.setattr(torch, "compile", compile)
    monkeypatch.setattr("zstag.semantics.get_semantics", lambda name: name)
    monkeypatch.setattr("zstag.semantics.embed_labels", embed_labels)
    return embedded


def build(method: str, reads_classifier: bool) -> Method:
    seen = LabelSet(NAMES, torch.eye(3))
    if method == "conse":
        return ConSE(TinyClip(), seen, ConSE.hyperparameters({"backbone_classifier": reads_classifier}), lambda n: seen)
    hp = RGCNPosVAE.hyperparameters({"variant": "rgcn-posvae" if reads_classifier else "rgcn"})
    return RGCNPosVAE(TinyClip(), seen, hp, lambda names: LabelSet(list(names), torch.randn(len(names), 3)))


@pytest.mark.parametrize("method", ["conse", "rgcn-posvae"])
def test_the_class_names_are_embedded_before_encode_is_compiled(traced, method):
    compiled = Engine(device="cpu", batch_size=4, compile=True).compiled(build(method, True).eval())
    assert traced == [NAMES]  # ready before the compiled encode first runs
    with torch.no_grad():
        compiled.encode(torch.randn(2, 3, 8, 8))
    assert traced == [NAMES]


@pytest.mark.parametrize("method", ["conse", "rgcn-posvae"])
def test_a_method_that_never_reads_the_classifier_embeds_nothing(traced, method):
    compiled = Engine(device="cpu", batch_size=4, compile=True).compiled(build(method, False).eval())
    with torch.no_grad():
        compiled.encode(torch.randn(2, 3, 8, 8))
    assert traced == []


def test_a_patch_map_instead_of_the_pooled_vector_names_the_cause():
    head = ZeroShotHead("tiny-semantics", NAMES, 10.0)
    head._vectors[torch.device("cpu")] = F.normalize(torch.randn(3, 4), dim=1)
    assert head(torch.randn(2, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"pooled image vector \(B, D\), got shape \(2, 4, 7, 7\).*Stages.pooled"):
        head(torch.randn(2, 4, 7, 7))
