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

from zstag.core import console
from zstag.core.atomic import atomic_write
from zstag.core.paths import cache_root


class EmbeddingCache:
    def __init__(self, root: Path | None) -> None:
        self.root = root  # None disables the cache

    @classmethod
    def default(cls) -> EmbeddingCache:
        return cls(cache_root() / "embeddings")

    def _folder(self, key: str) -> Path:
        return Path(self.root or ".") / hashlib.sha256(key.encode()).hexdigest()[:24]

    def get(self, key: str, labels: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `labels`; a damaged shard is a miss, warned about and removed.

        Damage is anything but what `put` writes: an unreadable file, labels that are not a list
        of strings, vectors that are not a finite float matrix with one row per label, or rows of
        another length than the other shards'. Such a shard would otherwise crash (or poison with
        NaN) every later run; removing it lets the recomputed vectors be cached again.
        """
        if self.root is None:
            return {}
        folder = self._folder(key)
        wanted = set(labels)
        found: dict[str, np.ndarray] = {}
        if not folder.is_dir():
            return found
        dim: int | None = None
        for shard in sorted(folder.glob("*.safetensors")):
            try:
                rows = _read_shard(shard, wanted - found.keys(), dim)
            except (OSError, ValueError, TypeError, SafetensorError) as exc:
                console.warn(
                    f"damaged label-vector cache file {shard} ({_one_line(exc)}): "
                    "removed, its vectors will be computed again"
                )
                shard.unlink(missing_ok=True)
                continue
            for name, vector in rows.items():
                dim = len(vector)
                found[name] = vector
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
            atomic_write(
                folder / name,
                lambda tmp: save_file(
                    {"vectors": np.ascontiguousarray(vectors, dtype=np.float32)},
                    tmp,
                    metadata={"labels": json.dumps(labels)},
                ),
            )
        except OSError:
            return  # a read-only cache only costs recomputation


def _read_shard(shard: Path, wanted: set[str], dim: int | None) -> dict[str, np.ndarray]:
    """The rows of `wanted` labels in one shard, after checking the shard is what `put` writes."""
    with safe_open(str(shard), framework="numpy") as f:
        names = json.loads((f.metadata() or {}).get("labels", "null"))
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError("its labels are not a list of strings")
        rows = [i for i, name in enumerate(names) if name in wanted]
        if not rows:
            return {}
        vectors = f.get_tensor("vectors")
    if vectors.ndim != 2 or vectors.shape[0] != len(names) or vectors.dtype != np.float32:
        raise ValueError(f"vectors of shape {vectors.shape} and type {vectors.dtype} for {len(names)} labels")
    if dim is not None and vectors.shape[1] != dim:
        raise ValueError(f"{vectors.shape[1]}-d vectors where the other files hold {dim}-d ones")
    if not np.isfinite(vectors).all():
        raise ValueError("NaN or infinite vectors")
    return {names[i]: vectors[i] for i in rows}


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]
