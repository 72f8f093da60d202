"""A frozen backbone's feature maps, computed once per image instead of every epoch.

With a frozen backbone every epoch would recompute the same features (LESA's and (ML)^2P's public
code precompute them for this reason). `FeatureCache` runs the backbone once over the images,
through the engine's data path (`Engine.images`), and keeps the maps; `StageCache` then stands in
for the backbone. Whoever trains several heads on the same images and backbone (tools/table.py)
passes one `FeatureCache` to every run; `zstag train` uses a fresh one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from zstag.backbones.base import Backbone, Stages
from zstag.core import console
from zstag.engine.engine import Engine


@dataclass
class Features:
    """The maps of the images that could be read, one row per image, in input order."""

    stages: list[torch.Tensor]  # per stage (N, C, h, w) fp16, on the device when it is a GPU; with
    # the backbone's `Stages.pooled` (N, D) where it has one
    indices: list[int]  # input position of each row
    failures: list[tuple[int, str]]  # (input position, reason) of the images that could not be read


class FeatureCache:
    """Feature maps of the last (backbone, image size, device, images) asked for; one set at a
    time, as a set may take a few hundred MB."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._features: Features | None = None

    def features(
        self,
        engine: Engine,
        backbone: Backbone,
        name: str,
        splits: list[list[str | Path]],
        size: int,
        reusable: bool = True,
    ) -> Features:
        """The maps of the images of `splits` (positions counted across them, in order) under
        `backbone` (named `name`), computed unless this cache holds them.

        `reusable=False` when the weights are not fixed by the name (a randomly initialised backbone).
        """
        key = (name, size, str(engine.device), tuple(tuple(paths) for paths in splits))
        if not reusable or key != self._key or self._features is None:
            self._key, self._features = None, None  # free the old set before computing the new one
            self._features = compute_features(engine, backbone, splits, size)
            self._key = key
        return self._features


def compute_features(engine: Engine, backbone: Backbone, splits: list[list[str | Path]], size: int) -> Features:
    """Run the frozen backbone once over every image (see `Features`); each split is batched on its
    own, as the trainer batches it."""
    parts: list[list[torch.Tensor]] = []
    pooled: list[torch.Tensor] = []
    indices: list[int] = []
    failures: list[tuple[int, str]] = []
    keep_on = engine.device if engine.device.type == "cuda" else torch.device("cpu")
    batches = sum(-(-len(paths) // engine.batch_size) for paths in splits)
    backbone.eval()
    offset = 0
    with torch.inference_mode(), console.progress("computing backbone features", batches) as bar:
        for paths in splits:
            for batch_indices, images, batch_failures in engine.images(backbone, paths, size):
                bar.update(1)
                failures += [(offset + i, reason) for i, reason in batch_failures]
                if images is None:
                    continue
                with engine.autocast():
                    stages = backbone.stages(images)
                parts = parts or [[] for _ in stages]
                for store, stage in zip(parts, stages):
                    store.append(stage.to(keep_on, torch.float16))
                vector = getattr(stages, "pooled", None)
                if vector is not None:
                    pooled.append(vector.to(keep_on, torch.float16))
                indices += [offset + i for i in batch_indices]
            offset += len(paths)
    maps = Stages((torch.cat(p) for p in parts), torch.cat(pooled) if pooled else None)
    return Features(maps, indices, failures)


class StageCache(Backbone):
    """Stands in for a frozen backbone whose feature maps were computed once per image.

    The training loop feeds methods a tensor of row indices instead of images; methods only hand
    their input to the backbone, so they run unchanged. The cached maps are plain attributes,
    never part of the state dict.
    """

    def __init__(self, backbone: Backbone, stages: list[torch.Tensor]) -> None:
        super().__init__()
        self.name, self.channels, self.region_stage = backbone.name, backbone.channels, backbone.region_stage
        self.classifier, self.class_names = backbone.classifier, backbone.class_names
        self.cached = stages
        self.pooled: torch.Tensor | None = getattr(stages, "pooled", None)

    def feature_maps(self, rows: torch.Tensor) -> Iterator[torch.Tensor]:
        index = rows.to(self.cached[0].device)
        return (s[index].to(rows.device).float() for s in self.cached)

    def stages(self, rows: torch.Tensor) -> list[torch.Tensor]:
        maps = list(self.feature_maps(rows))
        if self.pooled is None:
            return maps
        return Stages(maps, self.pooled[rows.to(self.pooled.device)].to(rows.device).float())
