"""What the training loop iterates over: datasets, samplers and batches on the training device.

Images come through the engine's loader (`Engine.loader`) as uint8 batches and are normalised and
augmented on the device (`ImageBatches`); with a frozen backbone whose maps were computed once
(`zstag.training.features`), batches are row indices into those maps instead (`CachedBatches`).
Both draw their order from `ShuffledBatches`, so a resumed run sees the same batches either way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from zstag.backbones.base import Backbone
from zstag.data.manifest import Sample
from zstag.engine.distributed import Share
from zstag.engine.engine import Engine, ImageFiles, SizedDataset
from zstag.methods.settings import Recipe


class TaggedImages(SizedDataset):
    """Decoded training images with multi-hot targets over the seen labels."""

    def __init__(self, samples: list[Sample], seen: list[str], size: int) -> None:
        self.files = ImageFiles([s.image for s in samples], size)
        index = {label: i for i, label in enumerate(seen)}
        self.targets = torch.zeros(len(samples), len(seen))
        for row, s in enumerate(samples):
            for t in s.tags:
                if t in index:
                    self.targets[row, index[t]] = 1

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return (*self.files[i], self.targets[i])


def collate_tagged(
    items: list[tuple[int, torch.Tensor | None, str | None, torch.Tensor]],
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[tuple[int, str]]]:
    """(images, targets) of the decoded items, and the (index, reason) of those that failed."""
    ok = [(t, y) for _, t, _, y in items if t is not None]
    failures = [(i, reason) for i, _, reason, _ in items if reason is not None]  # a reason exactly when no image
    if not ok:
        return None, None, failures
    return torch.stack([t for t, _ in ok]), torch.stack([y for _, y in ok]), failures


def augment(images: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """Random flips and scale crops, per image, on the training device (one affine resampling)."""
    flip, scale = recipe.flip, recipe.crop_scale
    if not flip and scale >= 1.0:
        return images
    b = images.shape[0]
    theta = torch.zeros(b, 2, 3, device=images.device)
    s = torch.empty(b, device=images.device).uniform_(min(scale, 1.0), 1.0)
    sign = (
        torch.where(torch.rand(b, device=images.device) < 0.5, -1.0, 1.0)
        if flip
        else torch.ones(b, device=images.device)
    )
    theta[:, 0, 0], theta[:, 1, 1] = s * sign, s
    theta[:, 0, 2] = (torch.rand(b, device=images.device) * 2 - 1) * (1 - s)
    theta[:, 1, 2] = (torch.rand(b, device=images.device) * 2 - 1) * (1 - s)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


class ShuffledBatches(Sampler[list[int]]):
    """Index batches of one shuffled order per epoch, drawn from the trainer's generator.

    Under torchrun every rank draws the same order (same seed) and takes its block of each global
    batch, so `batch_size` is the global batch and DDP's gradient average over the ranks equals the
    single-process gradient of that batch (for losses that average over images).
    """

    def __init__(
        self, n: int, batch_size: int, generator: torch.Generator | None, drop_last: bool, share: Share | None = None
    ) -> None:
        self.n, self.batch_size, self.generator, self.drop_last, self.share = n, batch_size, generator, drop_last, share

    def __len__(self) -> int:
        if self.drop_last and self.n >= self.batch_size:
            return self.n // self.batch_size
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.generator is not None else torch.arange(self.n)
        for b in range(len(self)):
            pick = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield (pick[self.share.block(len(pick))] if self.share is not None else pick).tolist()


class ImageBatches:
    """Training batches as normalised images from the data loader, augmented when given a recipe."""

    def __init__(self, engine: Engine, loader, backbone: Backbone, augmenting: Recipe | None) -> None:
        self.engine, self.loader, self.backbone, self.augmenting = engine, loader, backbone, augmenting
        self.failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, targets, failures in self.loader:
            self.failed.update(i for i, _ in failures)
            if images is None:
                continue
            x = self.engine.normalise(images, self.backbone.mean, self.backbone.std)
            yield (augment(x, self.augmenting) if self.augmenting is not None else x), targets.to(self.engine.device)


class CachedBatches:
    """Training batches as row indices into cached feature maps, in the batches of a ShuffledBatches."""

    def __init__(
        self, rows: torch.Tensor, targets: torch.Tensor, batches: ShuffledBatches, device: torch.device
    ) -> None:
        self.rows, self.targets, self.batches, self.device = rows, targets, batches, device

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for pick in self.batches:
            yield self.rows[pick].to(self.device), self.targets[pick].to(self.device)
