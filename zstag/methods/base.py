"""The small protocol every tagging method follows.

A method is an `nn.Module` built from a backbone, the training labels with their semantic vectors
and its hyperparameters. It splits inference in two so the engine can score any vocabulary in
bounded memory:

- `encode(images)` computes what the method knows about each image, independent of labels
  (LESA's M attention features, (ML)^2P's group vectors, Fast0Tag's principal direction...);
- `score(code, labels)` ranks a set of labels for those images from their semantic vectors.

Label-side work that does not depend on the images (LESA's projection W3 v) may be done once per
vocabulary in `prepare_labels`; the engine calls it before the first batch and passes the prepared
labels, chunk by chunk, to `score`.

Training calls `loss(images, targets, seen)`; the one training loop (`zstag.training.trainer`) owns the
optimiser, schedule, validation and checkpoints, reading its recipe from `defaults`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from zstag.backbones.base import Backbone
from zstag.data.labels import LabelSet

# The image code: a tensor or a dict of tensors whose first dimension is the batch.
ImageCode = torch.Tensor | dict[str, torch.Tensor]
# Embeds label strings into a LabelSet with the model's semantics (for labels a method needs
# beyond the vocabulary, e.g. RGCN-PosVAE's external ImageNet classes).
Embedder = Callable[[list[str]], LabelSet]

# Keys of `defaults` read by the training loop rather than by the method.
RECIPE_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",  # adam | adamw | rmsprop | sgd
    "lr": 1e-3,
    "weight_decay": 0.0,
    "momentum": 0.9,  # sgd / rmsprop
    "batch_size": 32,
    "epochs": 20,
    "schedule": "plateau",  # plateau (lr x lr_factor when validation degrades) | step | none
    "lr_factor": 0.1,
    "lr_milestones": [],  # epochs at which `step` multiplies the lr by lr_factor
    "min_lr": 0.0,
    "early_stopping": 0,  # epochs without improvement before stopping; 0 = never
    "finetune_backbone": False,
    "flip": True,  # random horizontal flips during training
    "crop_scale": 1.0,  # < 1: random crops covering this fraction of the side or more, resized back
    # With a frozen backbone, compute its feature maps once per image instead of every epoch
    # (no flips or crops then: they would need the backbone again).
    "cache_features": True,
}


class Method(nn.Module, ABC):
    """Base class of tagging methods (paper methods and baselines)."""

    name: ClassVar[str]
    # The paper's recipe and architecture defaults; every key is overridable with `--set key=value`.
    defaults: ClassVar[dict[str, Any]] = {}
    # True when scoring a slice of the vocabulary gives the same scores as scoring all of it,
    # so the engine may chunk large vocabularies. A method whose scores depend on the whole
    # vocabulary at once (a graph over it) sets False.
    chunkable: ClassVar[bool] = True
    # True when the method reads the images themselves, not only the backbone's maps of them
    # (SGMA crops parts): the trainer then never substitutes cached feature maps for images.
    reads_images: ClassVar[bool] = False

    def __init__(self, backbone: Backbone, seen: LabelSet, hp: dict[str, Any], embed: Embedder) -> None:
        super().__init__()
        self.backbone = backbone
        self.hp = hp
        self.dim = seen.dim
        self.num_seen = len(seen)

    @classmethod
    def hyperparameters(cls, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Recipe defaults, then the method's defaults, then the user's overrides."""
        return {**RECIPE_DEFAULTS, **cls.defaults, **(overrides or {})}

    @abstractmethod
    def encode(self, images: torch.Tensor) -> ImageCode:
        """Label-independent code of normalised images (B, 3, H, W)."""

    @abstractmethod
    def score(self, code: ImageCode, labels: LabelSet) -> torch.Tensor:
        """Scores (B, L) of `labels` for encoded images; higher means more relevant.

        `labels` may or may not have been through `prepare_labels`; the scores are the same.
        """

    def prepare_labels(self, labels: LabelSet) -> LabelSet:
        """`labels` with whatever `score` needs from them alone, computed once per vocabulary
        (row-aligned tensors in `LabelSet.derived`). Only valid until the weights change. Default: nothing."""
        return labels

    @abstractmethod
    def loss(self, images: torch.Tensor, targets: torch.Tensor, seen: LabelSet) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss for a batch; `targets` (B, S) holds 1 for present seen labels, else 0.

        Returns the total loss and its named parts (as floats, for logging).
        """

    def forward(self, images: torch.Tensor, labels: LabelSet) -> torch.Tensor:
        return self.score(self.encode(images), labels)

    def on_train_start(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], seen: LabelSet) -> None:
        """Optional warm-up before the first epoch (k-means initialisations, pretraining phases).

        `batches` yields (images, targets) from the training split on the training device.
        """
