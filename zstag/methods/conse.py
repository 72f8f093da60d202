"""ConSE (Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings",
ICLR 2014): a baseline.

A classifier over the seen labels gives probabilities p(s | x). The image is embedded as the
probability-weighted mean of the semantic vectors of its top-T seen labels,
    f(x) = 1/Z * sum_{t=1..T} p(s_t | x) v_{s_t},   Z = sum_t p(s_t | x),
and any label is ranked by cosine(f(x), v_label).

Multi-label adaptation (a deviation): the paper's classifier is a softmax over single labels; for
multi-label tagging the classifier is trained with per-label sigmoid cross-entropy and its sigmoid
outputs weight the combination. Single-label data (`single_label`) uses the softmax as published.

`backbone_classifier`: the seen labels are the classes of the backbone's own pretraining classifier
(ImageNet-1k), whose logits are used as they are, with nothing to train: the paper's own setting,
which `--model imagenet` builds (`store/model.py`) with the softmax and T = 10, the paper's best T
on ImageNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zstag.backbones.base import Backbone
from zstag.core.errors import UsageError
from zstag.data.labels import LabelSet
from zstag.methods.base import Embedder, Method
from zstag.methods.common import global_feature
from zstag.methods.settings import Hyperparameters, Recipe, SingleLabelConfig, setting


@dataclass(frozen=True)
class ConSEConfig(SingleLabelConfig):
    """T, the number of top seen labels combined (`single_label`: the published softmax)."""

    top_t: int = setting(10, 1, 1_000_000)
    backbone_classifier: bool = setting(False)


class ConSE(Method[torch.Tensor]):
    name = "conse"
    default_recipe: ClassVar[Recipe] = Recipe(
        optimizer="adam", lr=1e-3, batch_size=32, epochs=20, schedule="plateau", lr_factor=0.5, early_stopping=5
    )
    Config: ClassVar[type[ConSEConfig]] = ConSEConfig
    seen_vectors: torch.Tensor  # buffer (S, D), declared so attribute access is typed as a tensor

    def __init__(self, backbone: Backbone, seen: LabelSet, hp: Hyperparameters[ConSEConfig], embed: Embedder) -> None:
        super().__init__(backbone, seen, hp, embed)
        self.classifier: nn.Module | None = None
        if not hp.config.backbone_classifier:
            self.classifier = nn.Linear(backbone.channels[-1], self.num_seen)
        elif backbone.classifier is None or len(backbone.class_names or ()) != self.num_seen:
            raise UsageError(
                f"backbone {backbone.name!r} has no pretraining classifier over the {self.num_seen} seen labels"
            )
        # The seen vectors are part of the model: f(x) lives in their span.
        self.register_buffer("seen_vectors", seen.vectors.clone())
        self.top_t = min(hp.config.top_t, self.num_seen)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1) if self.single_label else logits.sigmoid()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Seen-label logits (B, S): the trained linear classifier, or the backbone's own."""
        if self.classifier is None:
            return self.backbone.class_logits(self.backbone.stages(images)).float()
        return self.classifier(global_feature(self.backbone, images)).float()

    def prepare(self, device: torch.device) -> None:
        if self.classifier is None:
            self.backbone.prepare_classifier(device)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """f(x): the convex combination of the top-T seen vectors, unit length, (B, D)."""
        p = self.probabilities(self.logits(images))
        top_p, top_i = p.topk(self.top_t, dim=1)
        weights = top_p / top_p.sum(dim=1, keepdim=True).clamp(min=1e-12)
        embedding = torch.einsum("bt,btd->bd", weights, self.seen_vectors[top_i])
        return F.normalize(embedding, dim=1)

    def score(self, code: torch.Tensor, labels: LabelSet) -> torch.Tensor:
        return code @ labels.vectors.to(code.dtype).T  # cosine: both sides are unit vectors

    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, seen: LabelSet
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits(images)
        if self.single_label:
            loss = F.cross_entropy(logits, targets.argmax(dim=1))
        else:
            loss = F.binary_cross_entropy_with_logits(logits, targets)
        return loss, {"cls": loss.item()}
