"""Small pieces several methods share."""

from __future__ import annotations

import torch

from zstag.backbones.base import Backbone


def global_feature(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """Global average pool of the last backbone stage, (B, C)."""
    return backbone.stages(images)[-1].mean(dim=(2, 3))


def pairwise_mask(targets: torch.Tensor) -> torch.Tensor:
    """(B, S, S) mask whose [b, p, n] is 1 when label p is present and n absent in image b."""
    pos = targets > 0
    return (pos.unsqueeze(2) & ~pos.unsqueeze(1)).float()
