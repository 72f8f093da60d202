"""`bundled`: one of our own trunks (`small` or `small-resnet`, as its config.json says) pretrained
on clip-art, shipped in `weights/bundled/` with the classifier it was pretrained with and its class
names (RGCN-PosVAE's external knowledge for this backbone, as ImageNet-1k is for VGG19 / ResNet).
"""

from __future__ import annotations

import json

from safetensors import SafetensorError
from safetensors.torch import load_file

from zstag.backbones.base import Backbone
from zstag.backbones.small import ARCHITECTURES, build_scratch
from zstag.core.errors import MissingWeightsError, ModelError
from zstag.core.paths import WEIGHTS_DIR

BUNDLED_DIR = WEIGHTS_DIR / "bundled"


def load_bundled(pretrained: bool = True) -> Backbone:
    config_path, weights_path = BUNDLED_DIR / "config.json", BUNDLED_DIR / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise MissingWeightsError(
            f"the bundled backbone is missing from {BUNDLED_DIR} (a broken install?); "
            "use --backbone small to train from scratch"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    # Checked field by field before any tensor is allocated; a type check comes before the
    # membership test, which a list or object from the JSON would turn into a TypeError.
    architecture, names = (
        (config.get("architecture"), config.get("class_names")) if isinstance(config, dict) else (None, None)
    )
    if (
        not isinstance(architecture, str)
        or architecture not in ARCHITECTURES
        or not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) for n in names)
    ):
        raise ModelError(
            f"{config_path}: needs an architecture among {', '.join(ARCHITECTURES)} and a list of class names"
        )
    backbone = build_scratch(architecture, num_classes=len(names), class_names=names)
    backbone.name = "bundled"
    if pretrained:
        try:
            backbone.load_state_dict(load_file(str(weights_path)), strict=True)
        except (SafetensorError, RuntimeError) as exc:
            raise ModelError(f"{weights_path}: does not fit the bundled backbone ({exc})") from None
    return backbone
