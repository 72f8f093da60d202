"""GloVe / word2vec text files: a phrase is the mean of its words' vectors.

The file is streamed once per run and only the needed words are kept, so a 5 GB GloVe file costs
time but not memory. Out-of-vocabulary words are reported; a label none of whose words is known is
an error rather than a silent zero vector.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from zstag.core.errors import UsageError
from zstag.semantics.base import Semantics

_WORD = re.compile(r"[\w']+")


def words_of(label: str) -> list[str]:
    return _WORD.findall(label.lower().replace("_", " "))


class VectorFileSemantics(Semantics):
    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self._dim: int | None = None

    def _scan(self, wanted: set[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self.path.open(encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f):
                if not wanted and self._dim is not None:
                    break
                parts = line.rstrip().split(" ")
                if n == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    self._dim = int(parts[1])  # word2vec header "count dim"
                    continue
                if len(parts) < 3:
                    continue
                if self._dim is None:
                    self._dim = len(parts) - 1
                word = parts[0]
                key = word if word in wanted else word.lower()
                if key in wanted and key not in found and len(parts) - 1 == self._dim:
                    found[key] = np.asarray(parts[1:], dtype=np.float32)
                    if len(found) == len(wanted):
                        break
        if self._dim is None:
            raise UsageError(f"{self.path} is not a GloVe/word2vec text file")
        return found

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._scan(set())
        return int(self._dim or 0)

    def encode(self, labels: list[str]) -> np.ndarray:
        per_label = [words_of(label) for label in labels]
        table = self._scan({w for ws in per_label for w in ws})
        missing_words = sorted({w for ws in per_label for w in ws if w not in table})
        unknown = [label for label, ws in zip(labels, per_label) if not any(w in table for w in ws)]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:10])
            raise UsageError(f"{len(unknown)} label(s) have no word in {self.path.name}: {shown}")
        if missing_words:
            warnings.warn(
                f"{len(missing_words)} word(s) not in {self.path.name}, left out of their phrases: "
                + ", ".join(missing_words[:10]),
                stacklevel=2,
            )
        return np.stack([np.mean([table[w] for w in ws if w in table], axis=0) for ws in per_label])
