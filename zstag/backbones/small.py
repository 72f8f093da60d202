"""`small`: a compact CNN we own, for training from scratch, for tests, and (pretrained on
OpenClipart) as the bundled backbone that works with no network.

Shaped like a miniature VGG: five stride-2 stages of 3x3 conv-BN-ReLU pairs, so at 224 px the
three stages the methods see are 28x28x128, 14x14x256 (the region map, like VGG19's conv5_4) and
7x7x512.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from zstag.backbones.base import Backbone


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Downsample by 2, then refine: two 3x3 conv-BN-ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallBackbone(Backbone):
    name = "small"
    channels = (128, 256, 512)
    region_stage = 1

    def __init__(self, num_classes: int = 0, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.stem = nn.Sequential(_block(3, 32), _block(32, 64))
        self.stage3 = _block(64, 128)
        self.stage4 = _block(128, 256)
        self.stage5 = _block(256, 512)
        if num_classes:
            self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))
            self.class_names = class_names

    def feature_maps(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        c3 = self.stage3(self.stem(images))
        yield c3
        c4 = self.stage4(c3)
        yield c4
        yield self.stage5(c4)
