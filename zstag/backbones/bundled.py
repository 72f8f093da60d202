"""`bundled`: one of our own trunks (`small` or `small-resnet`, as its config.json says) pretrained
on clip-art, shipped in `weights/bundled/` with the classifier it was pretrained with and its class
names (RGCN-PosVAE's external knowledge for this backbone, as ImageNet-1k is for VGG19 / ResNet).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from zstag.backbones.base import Backbone
from zstag.backbones.small import ARCHITECTURES, build_scratch
from zstag.core.errors import MissingWeightsError, ModelError
from zstag.core.paths import WEIGHTS_DIR

BUNDLED_DIR = WEIGHTS_DIR / "bundled"
CLASSIFIER_WEIGHT = "classifier.2.weight"  # the head's Linear(512, classes) in `_ScratchTrunk`


def _classifier_rows(weights_path: Path) -> int | None:
    """How many classes the shipped classifier has, from the safetensors header alone (no tensor
    is read), or None when the file holds no (classes, 512) classifier weight."""
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            shape = f.get_slice(CLASSIFIER_WEIGHT).get_shape() if CLASSIFIER_WEIGHT in f.keys() else None
    except (SafetensorError, OSError):
        return None
    return shape[0] if shape is not None and len(shape) == 2 else None


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
    # The head is sized by the names: they must be the weights' classes before it is allocated,
    # also without `pretrained` (a model's own weights then fill a head shaped as the shipped one).
    rows = _classifier_rows(weights_path)
    if rows != len(names):
        raise ModelError(
            f"{config_path}: lists {len(names)} class names, but {weights_path} has "
            + (f"a classifier over {rows}" if rows is not None else f"no readable {CLASSIFIER_WEIGHT} tensor")
        )
    backbone = build_scratch(architecture, num_classes=len(names), class_names=names)
    backbone.name = "bundled"
    if pretrained:
        try:
            backbone.load_state_dict(load_file(str(weights_path)), strict=True)
        except (SafetensorError, RuntimeError) as exc:
            raise ModelError(f"{weights_path}: does not fit the bundled backbone ({exc})") from None
    return backbone
