"""Backbone registry: `--backbone NAME` -> a feature extractor (see `base.Backbone`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zstag.core.errors import UsageError

if TYPE_CHECKING:  # the names stay importable without torch (shell completion lists them)
    from zstag.backbones.base import Backbone

# CLIP checkpoints in the registry: each is a backbone (image tower), a semantics source (text tower)
# and a zero-shot model (`--model NAME`).
CLIP_MODELS = ("clip-vit-b32", "clip-vit-l14")
# Architectures with random initial weights: trained with the head unless frozen explicitly, and
# saved in the model's own weights file.
SCRATCH_BACKBONES = ("small", "small-resnet")
BACKBONES = (*SCRATCH_BACKBONES, "bundled", "vgg19", "resnet50", "resnet101", *CLIP_MODELS)


def build_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build backbone `name`.

    `pretrained=False` builds the architecture only (with its classifier head shaped as when
    pretrained) for a model directory whose own weights file carries the backbone's tensors.
    """
    if name in SCRATCH_BACKBONES:
        from zstag.backbones.small import build_scratch

        return build_scratch(name)
    if name == "bundled":
        from zstag.backbones.bundled import load_bundled

        return load_bundled(pretrained)
    if name in ("vgg19", "resnet50", "resnet101"):
        from zstag.backbones.torchvision_nets import build_torchvision

        return build_torchvision(name, pretrained)
    if name in CLIP_MODELS:
        from zstag.backbones.clip import ClipBackbone

        return ClipBackbone(name, pretrained)
    raise UsageError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")


__all__ = ["BACKBONES", "CLIP_MODELS", "SCRATCH_BACKBONES", "build_backbone"]
