"""A model directory's files and its config, read without importing torch.

`zstag models` lists every model on the machine and `zstag push` checks a directory before any
upload; both only need to know what a directory claims to be, so they read `config.json` and the
safetensors header here, in well under a second, instead of rebuilding the model. `model_io`
uses the same checks before it loads tensors, so a directory is judged alike everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from zstag.core.errors import ModelError
from zstag.methods import METHODS

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
_REQUIRED = ("method", "backbone", "seen_labels", "hp", "image_size")


def read_config(folder: Path) -> dict[str, Any]:
    """The config of a model directory, after checking both files exist and the config is usable.

    Raises a one-line ModelError naming what is wrong (missing file, unreadable JSON, missing
    key, a method this zstag does not know).
    """
    folder = Path(folder)
    config_path = folder / CONFIG
    for p in (config_path, folder / WEIGHTS):
        if not p.is_file():
            raise ModelError(f"{folder} is not a model directory: {p.name} is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise TypeError("not a JSON object")
        missing = [key for key in _REQUIRED if key not in config]
        if missing:
            raise KeyError(", ".join(missing))
        int(config["image_size"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{config_path}: unreadable model config ({exc})") from None
    if config["method"] not in METHODS:
        raise ModelError(f"{config_path}: unknown method {config['method']!r} (made by a newer zstag?)")
    return config


def weight_names(folder: Path) -> list[str]:
    """The tensor names in `model.safetensors`, from its header only (no tensor is read)."""
    path = Path(folder) / WEIGHTS
    try:
        with safe_open(str(path), framework="numpy") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None


def looks_like_model(folder: Path) -> bool:
    """Whether a folder found while searching is meant to be a zstag model (working or broken).

    Searches meet other things with a `config.json` (a sentence-transformers snapshot in the
    cache, the bundled backbone); those say nothing of a zstag method or version. A config that
    cannot be parsed counts, so a damaged model is listed with its error rather than hidden.
    """
    path = Path(folder) / CONFIG
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True
    return isinstance(config, dict) and ("method" in config or "zstag_version" in config)


def epochs_run(config: dict[str, Any]) -> int | None:
    """The last epoch training recorded in config.json, None for a model with no training history."""
    training = config.get("training")
    history = training.get("history") if isinstance(training, dict) else None
    epochs = [e["epoch"] for e in history or () if isinstance(e, dict) and isinstance(e.get("epoch"), int)]
    return max(epochs, default=None)
