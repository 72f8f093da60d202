"""Heads for `zstag bench` and tools/heads.py: each method on a backbone with random label vectors,
and the FLOPs its scoring costs (the backbone's share counted apart)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from zstag.backbones.base import Backbone
from zstag.data.labels import LabelSet
from zstag.methods import method_class
from zstag.methods.base import Method


def scoring_flops(method: Method, images: torch.Tensor, labels: LabelSet) -> tuple[int, int]:
    """(all, backbone's) FLOPs of scoring `images`, the backbone's counted where the method calls
    it: a method that stops at the region map (`Backbone.regions`) is not charged for the stages
    after it, and the rest is the head's."""
    backbone, outer, inside = method.backbone, FlopCounterMode(display=False), []
    entry_points = ("regions", "stages", "class_logits")  # how methods reach their backbone

    def counted(call):
        def run(*args):
            counter = FlopCounterMode(display=False)  # one per call: entering a counter resets it
            with counter:
                result = call(*args)
            inside.append(counter.get_total_flops())
            return result

        return run

    for name in entry_points:
        setattr(backbone, name, counted(getattr(backbone, name)))  # instance attributes shadow the methods
    try:
        with outer:
            method.score(method.encode(images), labels)
    finally:
        for name in entry_points:
            delattr(backbone, name)
    return outer.get_total_flops(), sum(inside)


def random_labels(n: int, dim: int, seed: int = 0, names: list[str] | None = None) -> LabelSet:
    """`n` labels with random unit vectors: a method's cost does not depend on what its labels mean,
    so benchmarks need no text model."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    return LabelSet(names if names is not None else [f"l{i}" for i in range(n)], vectors)


def build_head(method_name: str, backbone: Backbone, seen: LabelSet) -> Method:
    """`method_name` on `backbone` with its recipe's defaults and random label semantics.

    RGCN-PosVAE falls back to its variant without external nodes when the backbone has no
    pretraining classifier to supply them.
    """
    cls = method_class(method_name)
    hp = cls.hyperparameters(
        {"variant": "rgcn"} if method_name == "rgcn-posvae" and backbone.classifier is None else {}
    )
    return cls(backbone, seen, hp, lambda names: random_labels(len(names), seen.dim, seed=1, names=names))
