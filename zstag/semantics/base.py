"""The interface of a semantics source."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class Semantics(ABC):
    """Maps label strings to vectors. `key` identifies the model in the embedding cache."""

    key: str
    source: Path | None = None  # the local file or folder it reads; None for a registry source (minilm, glove-300)

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of the vectors."""

    @abstractmethod
    def encode(self, labels: list[str]) -> np.ndarray:
        """(len(labels), dim) vectors, not necessarily normalised."""
