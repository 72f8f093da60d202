"""CLIP's text tower as label semantics (`--semantics clip-vit-b32`), with prompt ensembling.

Each label is written into every template of `TEMPLATES`, each sentence embedded by the text tower
(and its projection into the joint image-text space), the unit vectors averaged; `embed_labels`
normalises the mean. That is CLIP's own zero-shot recipe (Radford et al. 2021, Sec. 3.1.4), with
templates for everyday photos rather than its 80 ImageNet ones. The same vectors serve zero-shot
tagging (`--model clip-vit-b32`) and the methods' label semantics. The tower is loaded once per
process and only on a cache miss: a run whose labels are all in the embedding cache never builds it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from zstag.semantics.base import Semantics

TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo containing a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a blurry photo of a {}.",
)
# Bumped whenever TEMPLATES or the recipe change, so cached vectors of the old recipe are not reused.
RECIPE = "prompts-v1"


@functools.lru_cache(maxsize=2)
def _load_text(folder: str):
    """(tokenizer, text tower with projection) of a CLIP snapshot, once per process."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    from zstag.backbones.clip import clip_config, load_tower

    config = clip_config(Path(folder))
    tower = CLIPTextModelWithProjection(config.text_config).eval()
    load_tower(tower, Path(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return tokenizer, tower


class ClipTextSemantics(Semantics):
    """The text tower of registry entry `name`, found in the fetch cache only when needed."""

    def __init__(self, name: str) -> None:
        from zstag.store import hub

        self.name = name
        # The cache key names the registry's revision and weights, so a registry that moves the name
        # to other weights never reads the old vectors (no file is read: the weights may be absent).
        spec = hub.resolve(name)
        weights = next((f.sha256 for f in spec.files if f.name == "model.safetensors"), None)
        self.key = f"{name}@{spec.revision}:{weights or 'unpinned'}:{RECIPE}"

    def _folder(self) -> Path:
        from zstag.backbones.clip import clip_folder

        return clip_folder(self.name)

    @property
    def dim(self) -> int:
        from zstag.backbones.clip import projection_dim

        return projection_dim(self._folder())

    @torch.no_grad()
    def encode(self, labels: list[str]) -> np.ndarray:
        tokenizer, tower = _load_text(str(self._folder()))
        limit = int(tower.config.max_position_embeddings)
        total = torch.zeros(len(labels), self.dim)
        for template in TEMPLATES:
            for start in range(0, len(labels), 256):
                batch = [template.format(label) for label in labels[start : start + 256]]
                tokens = tokenizer(batch, padding=True, truncation=True, max_length=limit, return_tensors="pt")
                vectors = tower(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).text_embeds
                total[start : start + len(batch)] += torch.nn.functional.normalize(vectors.float(), dim=1)
        return (total / len(TEMPLATES)).numpy()
