"""CLIP zero-shot tagging (Radford et al. 2021): cosine between CLIP's image vector and each label's
prompt-ensembled text vector (`zstag.semantics.clip`). Nothing is trained.

It is the method of the ready-made `--model clip-vit-b32` (`store/model.py`), not a `--method` for
`zstag train`: training a head on CLIP's features is what the paper methods do with
`--backbone clip-vit-b32 --semantics clip-vit-b32`. Scores are raw cosines (about 0.1 to 0.35 for
ViT-B/32), not probabilities: CLIP's own temperature only makes a softmax over one vocabulary, which
says nothing about how often a tag is right. `zstag calibrate clip-vit-b32` fits the usual Platt map
on the user's tagged photos and `tag` applies it (`store.catalog.read_calibration`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from zstag.backbones.base import Backbone
from zstag.backbones.clip import ClipBackbone
from zstag.core.errors import UsageError
from zstag.data.labels import LabelSet
from zstag.methods.base import Embedder, Method
from zstag.methods.settings import Hyperparameters


class ClipZeroShot(Method[torch.Tensor]):
    name: ClassVar[str] = "clip-zeroshot"
    backbone: ClipBackbone  # checked in __init__: only CLIP's image tower has an `image_embedding`

    def __init__(self, backbone: Backbone, seen: LabelSet, hp: Hyperparameters, embed: Embedder) -> None:
        if not isinstance(backbone, ClipBackbone):
            raise UsageError(f"zero-shot scoring needs a CLIP backbone, not {backbone.name!r}")
        super().__init__(backbone, seen, hp, embed)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.image_embedding(images).float(), dim=1)

    def score(self, code: torch.Tensor, labels: LabelSet) -> torch.Tensor:
        return code @ labels.vectors.to(code.dtype).T  # cosine: both sides are unit vectors

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, seen: LabelSet
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise UsageError("CLIP zero-shot has nothing to train: train a method on --backbone clip-vit-b32")
