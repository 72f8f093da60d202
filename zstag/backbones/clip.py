"""CLIP (Radford et al. 2021) from a Hugging Face `CLIPModel` snapshot: its image tower as a backbone,
its text tower as label semantics (`zstag.semantics.clip`), both for zero-shot tagging.

A snapshot (`zstag fetch clip-vit-b32`) holds `config.json`, `model.safetensors` and the tokenizer.
Each tower is built from the config with `transformers` and loaded strictly from the safetensors
file, reading only its own tensors (`vision_model.*` + `visual_projection.*`, or `text_model.*` +
`text_projection.*`); never a pickle.

Stages for the methods (ViT-B/32 at 224 px: a 7x7 grid of 768-d patch tokens): the patch tokens
after a third, two thirds and all of the encoder layers, reshaped to (B, C, h, w), the class token
dropped. The last stage, the region map LESA, SGMA, (ML)^2P and RGCN-PosVAE read, goes through the
tower's final LayerNorm (`post_layernorm`) as the class token does before the projection; the
earlier ones are the raw residual stream. All three share one stride (the patch size), unlike the
CNNs' 8/16/32: (ML)^2P's pyramid then pools three depths of one grid. Other image sizes than the
checkpoint's interpolate the position embeddings (`interpolate_pos_encoding`).
Deviation: images reach the tower as for every zstag model, squashed to a square with bilinear
filtering and normalised with CLIP's mean and std, not through CLIP's own processor (bicubic
resize of the short side, then a centre crop), so a photo's edges are kept and its aspect changes.
`image_embedding` is CLIP's own image vector (class token -> LayerNorm -> projection) that zero-shot
scoring compares with the text vectors; `stages` returns it beside the maps (`Stages.pooled`), so
the frozen-feature cache keeps it too.

The pretraining classifier (`classifier`, `class_names`), which RGCN-PosVAE's external nodes and
ConSE's `backbone_classifier` read as they read a CNN's ImageNet head: CLIP's zero-shot classifier
over the same 1,000 ImageNet-1k names (torchvision's metadata, `imagenet_classes`), logits =
logit_scale * cos(image vector, name vector), with the name vectors of `--semantics clip-vit-b32`
(the text tower, prompt-ensembled, `zstag.semantics.clip`) and the checkpoint's own learnt
logit_scale (100 for OpenAI's). Those 1,000 vectors go through the label-embedding cache, so the
text tower encodes them once per machine and checkpoint; a backbone computes them (or reads them
from that cache) at its classifier's first use, not when it is built: zero-shot tagging and the
methods that never read the classifier do not pay for them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from zstag.backbones.base import Backbone, Stages
from zstag.core.errors import MissingWeightsError, ModelError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHTS_FILE = "model.safetensors"


def clip_folder(name: str) -> Path:
    """The fetched snapshot of CLIP `name`; a MissingWeightsError naming the fetch command when absent."""
    from zstag.store import hub

    folder = hub.cached(name)
    if folder is None or not (Path(folder) / WEIGHTS_FILE).is_file():
        raise MissingWeightsError(f"{name} is not in the cache ({hub.hub_dir()}): run `zstag fetch {name}`")
    return Path(folder)


def clip_config(folder: Path):
    """The snapshot's `CLIPConfig`; the towers' configs get the shared projection size."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    try:
        config = CLIPConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder / 'config.json'}: not a CLIP config ({exc})") from None
    dim = config.projection_dim
    if dim is None:
        raise ModelError(f"{folder / 'config.json'}: no projection_dim")
    # transformers annotates the towers' configs with its __init__'s argument types (dict or None too);
    # a loaded CLIPConfig always holds the built config objects.
    cast(CLIPVisionConfig, config.vision_config).projection_dim = dim
    cast(CLIPTextConfig, config.text_config).projection_dim = dim
    return config


def projection_dim(folder: Path) -> int:
    """The joint embedding size, from config.json alone (no torch model built)."""
    try:
        return int(json.loads((folder / "config.json").read_text(encoding="utf-8"))["projection_dim"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{folder / 'config.json'}: no projection_dim ({exc})") from None


def load_tower(module: nn.Module, folder: Path) -> None:
    """Fill `module` (a tower with its projection) strictly from the snapshot's safetensors file."""
    from safetensors import SafetensorError, safe_open

    path = folder / WEIGHTS_FILE
    own = module.state_dict()
    try:
        with safe_open(str(path), framework="pt") as f:
            present = set(f.keys())
            missing = sorted(set(own) - present)
            if missing:
                raise ModelError(
                    f"{path} does not fit {type(module).__name__} (missing {', '.join(missing[:3])}); "
                    "run `zstag fetch` with --force"
                )
            tensors = {key: f.get_tensor(key) for key in own}
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    wrong = [k for k in own if tuple(own[k].shape) != tuple(tensors[k].shape)]
    if wrong:
        raise ModelError(
            f"{path}: tensor {wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, "
            f"expected {tuple(own[wrong[0]].shape)}"
        )
    module.load_state_dict(tensors, strict=True)


def logit_scale(folder: Path) -> float:
    """CLIP's learnt softmax temperature, exp(`logit_scale`) from the snapshot's weights."""
    from safetensors import SafetensorError, safe_open

    path = folder / WEIGHTS_FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            value = f.get_tensor("logit_scale").float().exp().item() if "logit_scale" in f.keys() else None
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    if value is None or not 0 < value < 1e4:
        raise ModelError(f"{path}: no usable logit_scale tensor ({value})")
    return value


class ZeroShotHead(nn.Module):
    """CLIP's zero-shot classifier over `names`: pooled image vector -> scale * cosine to each name's
    text vector. The vectors come from `--semantics NAME` at the first call, once per device; they are
    not parameters (nothing in a model's weights file), as they follow from the fetched checkpoint."""

    def __init__(self, name: str, names: list[str], scale: float) -> None:
        super().__init__()
        self.name, self.names, self.scale = name, names, scale
        self._vectors: dict[torch.device, torch.Tensor] = {}

    def vectors(self, device: torch.device) -> torch.Tensor:
        """The unit text vectors of the class names, (K, D), on `device`."""
        if device.type == "cuda" and device.index is None:
            # One key per GPU: an engine's `cuda` and its tensors' `cuda:0` are the same vectors.
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._vectors:
            from zstag.semantics import embed_labels, get_semantics

            # A plain tensor even when first asked for under inference mode: training reuses it.
            with torch.inference_mode(False), torch.no_grad():
                vectors = embed_labels(get_semantics(self.name), self.names).vectors
                self._vectors[device] = vectors.to(device)
        return self._vectors[device]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if pooled.dim() != 2:
            # `Backbone.class_logits` falls back to the last stage, a patch map, when the stages
            # carry no `pooled` vector: say so rather than fail later on a matrix product.
            raise ValueError(
                f"CLIP's zero-shot classifier reads the pooled image vector (B, D), got shape {tuple(pooled.shape)}: "
                "the stages passed to class_logits carry no Stages.pooled (a plain list of maps?)"
            )
        image = F.normalize(pooled.float(), dim=-1)
        return self.scale * image @ self.vectors(pooled.device).T


class ClipBackbone(Backbone):
    """The image tower of CLIP `name`; `pretrained=False` keeps the random initialisation (a model
    directory whose weights carry the fine-tuned tower then fills it)."""

    mean: ClassVar[tuple[float, float, float]] = CLIP_MEAN
    std: ClassVar[tuple[float, float, float]] = CLIP_STD
    region_stage = 2

    def __init__(self, name: str, pretrained: bool = True) -> None:
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        folder = clip_folder(name)
        config = clip_config(folder)
        self.name = name
        self.tower = CLIPVisionModelWithProjection(config.vision_config).eval()
        if pretrained:
            load_tower(self.tower, folder)
        hidden = int(config.vision_config.hidden_size)
        self.channels = (hidden, hidden, hidden)
        depth = int(config.vision_config.num_hidden_layers)
        self.depths = (max(1, depth // 3), max(1, 2 * depth // 3), depth)
        self.image_size = int(config.vision_config.image_size)
        from zstag.backbones.torchvision_nets import imagenet_classes

        self.class_names = imagenet_classes()
        self.classifier: ZeroShotHead = ZeroShotHead(name, self.class_names, logit_scale(folder))

    def prepare_classifier(self, device: torch.device) -> None:
        """Embed the class names now (a text-tower pass over 1,000 names), not at the first logits."""
        self.classifier.vectors(device)

    def _encode(self, images: torch.Tensor):
        return self.tower.vision_model(
            pixel_values=images,
            output_hidden_states=True,
            interpolate_pos_encoding=images.shape[-1] != self.image_size or images.shape[-2] != self.image_size,
        )

    def _maps(self, out, images: torch.Tensor) -> Iterator[torch.Tensor]:
        grid = self.tower.config.patch_size
        h, w = images.shape[-2] // grid, images.shape[-1] // grid
        for depth in self.depths:
            tokens = out.hidden_states[depth][:, 1:]
            if depth == self.depths[-1]:
                tokens = self.tower.vision_model.post_layernorm(tokens)
            yield tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

    def feature_maps(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        return self._maps(self._encode(images), images)

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The three maps and, as `Stages.pooled`, the image vector, from one forward pass."""
        out = self._encode(images)
        return Stages(self._maps(out, images), self.tower.visual_projection(out.pooler_output))

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's image vector (not normalised), (B, projection_dim)."""
        return self.tower.visual_projection(self._encode(images).pooler_output)
