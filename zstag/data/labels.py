"""A vocabulary with its semantic vectors: what every method scores images against."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LabelSet:
    """Label names and their unit-norm semantic vectors, row i belonging to names[i]."""

    names: list[str]
    vectors: torch.Tensor  # (L, D), float32, rows of unit L2 norm
    # Row-aligned label-side tensors a method computed once for this vocabulary
    # (`Method.prepare_labels`, e.g. LESA's W3 v): sliced and moved with the vectors, so scoring
    # a large vocabulary chunk by chunk, batch after batch, does not recompute them.
    derived: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.names):
            raise ValueError(f"{len(self.names)} names but vectors of shape {tuple(self.vectors.shape)}")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def subset(self, index: slice | list[int] | torch.Tensor) -> LabelSet:
        """The labels at `index` (a slice for chunked scoring, a list for seen/unseen subsets)."""
        if isinstance(index, slice):
            return LabelSet(self.names[index], self.vectors[index], {k: v[index] for k, v in self.derived.items()})
        idx = torch.as_tensor(index, dtype=torch.long)
        return LabelSet(
            [self.names[i] for i in idx.tolist()],
            self.vectors[idx],
            {k: v[idx.to(v.device)] for k, v in self.derived.items()},
        )

    def to(self, device: torch.device | str) -> LabelSet:
        return LabelSet(self.names, self.vectors.to(device), {k: v.to(device) for k, v in self.derived.items()})

    def with_derived(self, **tensors: torch.Tensor) -> LabelSet:
        """The same labels with more label-side tensors (each with one row per label)."""
        for key, value in tensors.items():
            if value.shape[0] != len(self.names):
                raise ValueError(f"derived {key!r} has {value.shape[0]} rows for {len(self.names)} labels")
        return LabelSet(self.names, self.vectors, {**self.derived, **tensors})
