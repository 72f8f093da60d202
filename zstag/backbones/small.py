"""Trunks we own, for training from scratch, for tests, and (pretrained on clip-art) as the bundled
backbone that works with no network.

`small` is shaped like a miniature VGG: five stride-2 stages of 3x3 conv-BN-ReLU pairs, so at
224 px the three stages the methods see are 28x28x128, 14x14x256 (the region map, like VGG19's
conv5_4) and 7x7x512. `small-resnet` has ResNet-18's layout with the same three stage shapes.
docs/benchmarks.md compares the two as pretrained trunks.
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


class _ScratchTrunk(Backbone):
    """A trunk we own and train from random weights: a stem, three stages at strides 8, 16 and 32
    (the region map is the middle one, 8x8 at 128 px) and, once pretrained as a classifier, the
    pooled-last-stage linear head over `class_names`."""

    channels = (128, 256, 512)
    region_stage = 1
    stem: nn.Module
    stage3: nn.Module
    stage4: nn.Module
    stage5: nn.Module

    def __init__(self, num_classes: int, class_names: list[str] | None) -> None:
        super().__init__()
        if num_classes:
            self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))
            self.class_names = class_names

    def feature_maps(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        c3 = self.stage3(self.stem(images))
        yield c3
        c4 = self.stage4(c3)
        yield c4
        yield self.stage5(c4)


class SmallBackbone(_ScratchTrunk):
    """The miniature VGG of the module docstring (4.7 M parameters)."""

    name = "small"

    def __init__(self, num_classes: int = 0, class_names: list[str] | None = None) -> None:
        super().__init__(num_classes, class_names)
        self.stem = nn.Sequential(_block(3, 32), _block(32, 64))
        self.stage3 = _block(64, 128)
        self.stage4 = _block(128, 256)
        self.stage5 = _block(256, 512)


class _BasicBlock(nn.Module):
    """ResNet's two-conv residual block, with torchvision's parameter names (so weights saved
    from its `BasicBlock` load unchanged). Ours rather than torchvision's: importing torchvision
    costs a fresh `zstag tag` process about a second on a CPU, a quarter of its start-up."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _resnet_stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Two basic blocks, the first changing width and stride (ResNet-18's `layerN`)."""
    return nn.Sequential(_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1))


class SmallResNet(_ScratchTrunk):
    """ResNet-18's layout (He et al. 2016: a 7x7 stem and max-pool, then four pairs of residual
    3x3 blocks at 64, 128, 256, 512 channels; 11.2 M parameters), from random weights.

    Residual connections let a deeper trunk train from scratch in few epochs; each block's last
    BatchNorm starts at zero, so every block starts as the identity (Goyal et al. 2017), which
    measurably speeds up early training from random weights.
    """

    name = "small-resnet"

    def __init__(self, num_classes: int = 0, class_names: list[str] | None = None) -> None:
        super().__init__(num_classes, class_names)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
            _resnet_stage(64, 64, 1),
        )
        self.stage3, self.stage4, self.stage5 = (
            _resnet_stage(64, 128, 2),
            _resnet_stage(128, 256, 2),
            _resnet_stage(256, 512, 2),
        )
        # torchvision's ResNet initialisation, with zero_init_residual: every block starts as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, _BasicBlock):
                nn.init.zeros_(m.bn2.weight)


ARCHITECTURES: dict[str, type[_ScratchTrunk]] = {"small": SmallBackbone, "small-resnet": SmallResNet}


def build_scratch(architecture: str, num_classes: int = 0, class_names: list[str] | None = None) -> _ScratchTrunk:
    """A trunk of `architecture` (a key of `ARCHITECTURES`) with random weights."""
    return ARCHITECTURES[architecture](num_classes, class_names)
