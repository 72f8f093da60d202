"""What every feature extractor offers the methods.

A backbone maps a batch of normalised images (B, 3, H, W) to the feature maps of its last three
stages, at strides 8, 16 and 32 (28x28, 14x14 and 7x7 at 224 px; VGG19's last two are both at 16:
pool4 and conv5_4, its classifier pooling conv5_4 to pool5 itself). Methods pick what their paper
uses: `region_stage` names the "last convolutional map" that LESA and SGMA attend over (VGG19
conv5_4, 14x14; ResNet layer4, 7x7), (ML)^2P stacks all three, RGCN-PosVAE pools one and also uses
the pretraining classifier's probabilities.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import ClassVar

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Stages(list[torch.Tensor]):
    """The three feature maps, with `pooled`: an image vector the backbone computes beside them,
    or None. CLIP's is its projected class token, which no map holds (they are patch tokens) and
    which its zero-shot classifier reads; the frozen-feature cache keeps it with the maps."""

    def __init__(self, maps: Iterable[torch.Tensor], pooled: torch.Tensor | None = None) -> None:
        super().__init__(maps)
        self.pooled = pooled


class Backbone(nn.Module, ABC):
    """Base class of feature extractors.

    Subclasses set `channels` (the three stages' channel counts), `region_stage` (index into the
    stages of the map methods attend over) and implement `feature_maps`. Where the network was pretrained
    as a classifier, `classifier` maps the last stage (or `Stages.pooled`, where `stages` returns one)
    to logits over `class_names`.
    """

    name: str = ""
    channels: tuple[int, int, int] = (0, 0, 0)
    region_stage: int = 2
    mean: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, float, float]] = IMAGENET_STD

    def __init__(self) -> None:
        super().__init__()
        self.classifier: nn.Module | None = None
        self.class_names: list[str] | None = None

    @abstractmethod
    def feature_maps(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """The three feature maps [stride 8, stride 16, stride 32] for normalised images, one at a
        time: a caller that needs only the first ones stops the network there (`regions`)."""

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """All three feature maps [stride 8, stride 16, stride 32]."""
        return list(self.feature_maps(images))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.stages(images)

    def regions(self, images: torch.Tensor, stage: int | None = None) -> torch.Tensor:
        """The map of `stage` (default: `region_stage`, the region map that attention methods
        use), (B, C, h, w). The stages after it are not computed: for the bundled backbone, whose
        region map is the middle stage, that is a fifth of its multiply-adds (docs/performance.md)."""
        return next(islice(self.feature_maps(images), self.region_stage if stage is None else stage, None))

    @property
    def region_channels(self) -> int:
        return self.channels[self.region_stage]

    def prepare_classifier(self, device: torch.device) -> None:
        """Do now, for `device`, the work `classifier` would otherwise do at its first call, which
        may come inside `torch.compile` (CLIP embeds its class names). Default: nothing, a
        classifier made of weights is ready."""

    def class_logits(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """Pretraining-classifier logits from already computed stages (no second forward pass)."""
        if self.classifier is None:
            raise ValueError(f"backbone {self.name!r} has no pretraining classifier")
        pooled = getattr(stages, "pooled", None)
        return self.classifier(stages[-1] if pooled is None else pooled)
