"""On-disk cache of label vectors, keyed by semantics model and label.

Each `put` writes one safetensors shard (the vectors, with the labels in its metadata) into the
model's folder; `get` reads the shards' metadata and only the rows it needs. Shards are never
rewritten, so concurrent runs cannot corrupt each other (writes go through a temporary file and an
atomic rename). The device machine, which cannot load MiniLM, reads a cache computed elsewhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from zstag.core.atomic import atomic_write
from zstag.core.paths import cache_root


class EmbeddingCache:
    def __init__(self, root: Path | None) -> None:
        self.root = root  # None disables the cache

    @classmethod
    def default(cls) -> "EmbeddingCache":
        return cls(cache_root() / "embeddings")

    def _folder(self, key: str) -> Path:
        return Path(self.root or ".") / hashlib.sha256(key.encode()).hexdigest()[:24]

    def get(self, key: str, labels: list[str]) -> dict[str, np.ndarray]:
        if self.root is None:
            return {}
        folder = self._folder(key)
        wanted, found = set(labels), {}
        if not folder.is_dir():
            return found
        for shard in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(shard), framework="numpy") as f:
                    names = json.loads((f.metadata() or {}).get("labels", "[]"))
                    rows = [i for i, name in enumerate(names) if name in wanted and name not in found]
                    if rows:
                        vectors = f.get_tensor("vectors")
                        found.update((names[i], vectors[i]) for i in rows)
            except (OSError, ValueError, SafetensorError):
                continue  # a damaged shard is only a cache miss
            if len(found) == len(wanted):
                break
        return found

    def put(self, key: str, labels: list[str], vectors: np.ndarray) -> None:
        if self.root is None or not labels:
            return
        folder = self._folder(key)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "model.txt").write_text(key + "\n")
            name = hashlib.sha256("\n".join(labels).encode()).hexdigest()[:24] + ".safetensors"
            atomic_write(folder / name, lambda tmp: save_file(
                {"vectors": np.ascontiguousarray(vectors, dtype=np.float32)}, tmp, metadata={"labels": json.dumps(labels)}))
        except OSError:
            return  # a read-only cache only costs recomputation
