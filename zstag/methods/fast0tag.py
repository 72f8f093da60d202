"""Fast0Tag (Zhang, Gong & Shah, "Fast Zero-Shot Image Tagging", CVPR 2016): a baseline.

The paper's idea: for an image, the word vectors of its relevant tags rank ahead of the others
along one *principal direction*. A network f maps the image to that direction w = f(x), and every
label, seen or unseen, is scored by the inner product <w, v_label>. Training uses the RankNet
pairwise loss log(1 + exp(<w, v_n> - <w, v_p>)) over (relevant p, irrelevant n) pairs.

Here f is an MLP over the globally average-pooled last backbone stage (the paper used VGG-19 fc7
features and a two-hidden-layer MLP; the pooled map plays the role of fc7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zstag.backbones.base import Backbone
from zstag.data.labels import LabelSet
from zstag.methods.base import Embedder, Method
from zstag.methods.common import global_feature, pairwise_mask
from zstag.methods.settings import WIDTH_LIMIT, Hyperparameters, MethodConfig, Recipe, setting


@dataclass(frozen=True)
class Fast0TagConfig(MethodConfig):
    """The width of f's two hidden layers."""

    hidden: int = setting(1024, 1, WIDTH_LIMIT)


class Fast0Tag(Method[torch.Tensor]):
    name = "fast0tag"
    default_recipe: ClassVar[Recipe] = Recipe(
        optimizer="adam", lr=1e-3, batch_size=32, epochs=20, schedule="plateau", lr_factor=0.5, early_stopping=5
    )
    Config: ClassVar[type[Fast0TagConfig]] = Fast0TagConfig

    def __init__(
        self, backbone: Backbone, seen: LabelSet, hp: Hyperparameters[Fast0TagConfig], embed: Embedder
    ) -> None:
        super().__init__(backbone, seen, hp, embed)
        hidden = hp.config.hidden
        self.direction = nn.Sequential(
            nn.Linear(backbone.channels[-1], hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, self.dim),
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The principal direction w = f(x), (B, D)."""
        return self.direction(global_feature(self.backbone, images))

    def score(self, code: torch.Tensor, labels: LabelSet) -> torch.Tensor:
        return code @ labels.vectors.to(code.dtype).T

    @property
    def linear_in_labels(self) -> bool:
        return True

    def label_directions(self, code: torch.Tensor) -> torch.Tensor:
        """The principal direction w itself."""
        return code.float()

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, seen: LabelSet
    ) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self.score(self.encode(images), seen).float()
        # RankNet over every (present p, absent n) pair of each image: log(1 + exp(s_n - s_p)).
        diff = scores.unsqueeze(1) - scores.unsqueeze(2)  # [b, p, n] = s_n - s_p
        mask = pairwise_mask(targets)
        rank = (F.softplus(diff) * mask).sum() / mask.sum().clamp(min=1)
        return rank, {"rank": rank.item()}
