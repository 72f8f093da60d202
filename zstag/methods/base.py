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
optimiser, schedule, validation and checkpoints, reading its recipe from `hp.recipe`. A method reads
only its own settings, `hp.config` (a typed dataclass, `zstag.methods.settings`), and tells the
trainer and `zstag explain` what they need through the class attributes and hooks below.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from zstag.backbones.base import Backbone
from zstag.data.labels import LabelSet
from zstag.methods.settings import Hyperparameters, MethodConfig, Recipe, SingleLabelConfig

# The image code: a tensor or a dict of tensors whose first dimension is the batch.
ImageCode = torch.Tensor | dict[str, torch.Tensor]
# Embeds label strings into a LabelSet with the model's semantics (for labels a method needs
# beyond the vocabulary, e.g. RGCN-PosVAE's external ImageNet classes).
Embedder = Callable[[list[str]], LabelSet]
# The image code of one method: `score` accepts exactly what that method's `encode` returns.
CodeT = TypeVar("CodeT", bound=ImageCode)


def t_norm(scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`scores` (B, L) minus the mean, over the standard deviation, of each image's `reference`
    scores (B, C): what `Method.standardised` and an ensemble's members do."""
    spread = reference.std(dim=1, unbiased=False, keepdim=True).clamp_min(1e-6)
    return (scores - reference.mean(dim=1, keepdim=True)) / spread


@dataclass
class Explanation:
    """Where a method looked, for `zstag explain`: per-label maps, or boxes on the image."""

    maps: torch.Tensor | None = None  # (B, L, h, w) in [0, 1], one map per label
    boxes: torch.Tensor | None = None  # (B, n, 4) as (x0, y0, x1, y1) fractions of the image


def occlusion_maps(method: nn.Module, images: torch.Tensor, labels: LabelSet, grid: int = 7) -> torch.Tensor:
    """(B, L, grid, grid): the drop of each label's score when each cell is set to the mean (zero).

    Needs nothing but the scores, so it explains any method that has no spatial output of its own.
    """
    base = method(images, labels)
    b, _, h, w = images.shape
    drops = torch.zeros(b, len(labels), grid, grid, device=images.device)
    ys = np.linspace(0, h, grid + 1).astype(int)
    xs = np.linspace(0, w, grid + 1).astype(int)
    for i in range(grid):
        for j in range(grid):
            masked = images.clone()
            masked[:, :, ys[i] : ys[i + 1], xs[j] : xs[j + 1]] = 0  # 0 is the mean after normalisation
            drops[:, :, i, j] = (base - method(masked, labels)).clamp(min=0)
    peak = drops.flatten(2).amax(dim=2).clamp(min=1e-12)
    return drops / peak[:, :, None, None]


class Method(nn.Module, ABC, Generic[CodeT]):
    """Base class of tagging methods (paper methods and baselines), generic in their image code."""

    name: ClassVar[str]
    # The paper's training recipe and the type of its architecture settings, with the paper's
    # defaults; every field may be overridden (`hyperparameters`).
    default_recipe: ClassVar[Recipe] = Recipe()
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # True when scoring a slice of the vocabulary gives the same scores as scoring all of it,
    # so the engine may chunk large vocabularies. A method whose scores depend on the whole
    # vocabulary at once (a graph over it) sets False.
    chunkable: ClassVar[bool] = True
    # True when the method reads the images themselves, not only the backbone's maps of them
    # (SGMA crops parts): the trainer then never substitutes cached feature maps for images.
    reads_images: ClassVar[bool] = False
    # Reference labels for the per-image standardisation of scores (`standardised`): the model's
    # seen labels when its config says `"score_norm": "seen"` (set by `store.model.use_score_norm`),
    # else None and scores stay as the method computes them.
    cohort: LabelSet | None = None

    def __init__(self, backbone: Backbone, seen: LabelSet, hp: Hyperparameters, embed: Embedder) -> None:
        super().__init__()
        self.backbone = backbone
        self.hp = hp
        self.dim = seen.dim
        self.num_seen = len(seen)

    @classmethod
    def hyperparameters(cls, overrides: dict[str, Any] | None = None) -> Hyperparameters:
        """The paper's recipe and settings with `overrides` applied, validated (UsageError naming the key)."""
        return Hyperparameters.build(cls.name, cls.default_recipe, cls.Config(), overrides)

    @property
    def trains_backbone(self) -> bool:
        """Whether training updates the backbone (else it is frozen and its features may be cached)."""
        return self.hp.recipe.finetune_backbone

    @classmethod
    def has_single_label_protocol(cls) -> bool:
        """Whether the method can train with a softmax over single labels (`SingleLabelConfig`)."""
        return issubclass(cls.Config, SingleLabelConfig)

    @property
    def single_label(self) -> bool:
        """Whether this model trains and scores with the single-label (softmax) protocol."""
        config = self.hp.config
        return isinstance(config, SingleLabelConfig) and config.single_label

    @abstractmethod
    def encode(self, images: torch.Tensor) -> CodeT:
        """Label-independent code of normalised images (B, 3, H, W).

        Every tensor of the code is batch-first, one row per image, each image's row independent
        of the others in eval mode: the engine's compiled encoder pads a short batch with zeros and
        cuts each tensor back to its first rows (`PaddedEncoder`).
        """

    @abstractmethod
    def score(self, code: CodeT, labels: LabelSet) -> torch.Tensor:
        """Scores (B, L) of `labels` for encoded images; higher means more relevant.

        `labels` may or may not have been through `prepare_labels`; the scores are the same.
        """

    @property
    def linear_in_labels(self) -> bool:
        """Whether `score(code, labels)` equals `labels.vectors @ label_directions(code).T` for any
        labels: one image vector per image in the semantic space. An ensemble of such members
        scores a vocabulary with one product instead of one per member. Default: False."""
        return False

    def label_directions(self, code: CodeT) -> torch.Tensor:
        """(B, D) image vectors u with score = labels.vectors @ u.T; only when `linear_in_labels`."""
        raise TypeError(f"{self.name} does not score linearly in the label vectors")

    def prepare(self, device: torch.device) -> None:
        """Do now, on `device`, the work `encode` would do lazily at its first call. The engine
        calls it before it compiles `encode`, so that such work (CLIP's classifier embedding its
        class names) is not traced. Default: nothing."""

    def prepare_labels(self, labels: LabelSet) -> LabelSet:
        """`labels` with whatever `score` needs from them alone, computed once per vocabulary
        (row-aligned tensors in `LabelSet.derived`). Only valid until the weights change. Default: nothing."""
        return labels

    @abstractmethod
    def loss(
        self, images: torch.Tensor, targets: torch.Tensor, seen: LabelSet
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss for a batch; `targets` (B, S) holds 1 for present seen labels, else 0.

        Returns the total loss and its named parts (as floats, for logging).
        """

    def forward(self, images: torch.Tensor, labels: LabelSet) -> torch.Tensor:
        code = self.encode(images)
        return self.standardised(code, self.score(code, labels))

    def standardised(self, code: CodeT, scores: torch.Tensor) -> torch.Tensor:
        """`scores` (B, L) of the encoded images standardised per image against the cohort: minus
        the mean, over the standard deviation, of the image's scores for the cohort's labels.

        This is T-norm from speaker verification (Auckenthaler et al. 2000; a test sample's score
        is normalised by its scores against a cohort of other models), with the seen labels as the
        cohort. Why: an embedding model gives some images high scores for every label (hubs) and
        others low ones; ranking the images for one label (its AP, mAP over labels) then follows
        that offset as much as the label. Not in any of the papers; a model uses it only when its
        config asks (`zstag calibrate --score-norm seen`). Within one image the order of its tags
        is unchanged (a positive affine map), so only comparisons across images move. The
        cohort's scores depend on the image alone, never on the vocabulary asked for.
        """
        if self.cohort is None:
            return scores
        return t_norm(scores, self.score(code, self.cohort).float())

    def explain(self, images: torch.Tensor, labels: LabelSet) -> Explanation:
        """Where the method looked for each of `labels` in normalised `images`, for `zstag explain`.

        Default: the gradient-free occlusion map (`occlusion_maps`); methods with a spatial output
        of their own (attention maps, part boxes) show that instead.
        """
        return Explanation(maps=occlusion_maps(self, images, labels))

    def on_unseen_labels(self, names: list[str]) -> None:
        """The run's unseen labels, known (by name only) while training on the seen ones.

        A method whose training graph must not contain them (RGCN-PosVAE removes external classes
        named like any target label, seen or unseen) takes note here. Default: nothing.
        """

    def on_train_start(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], seen: LabelSet) -> None:
        """Optional warm-up before the first epoch (k-means initialisations, pretraining phases).

        `batches` yields (images, targets) from the training split on the training device.
        """
