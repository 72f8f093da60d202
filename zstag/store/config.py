"""A model directory's files and its config, read without importing torch.

`zstag models` lists every model on the machine and `zstag push` checks a directory before any
upload; both only need to know what a directory claims to be, so they read `config.json` and the
safetensors header here, in well under a second, instead of rebuilding the model. `model_io`
uses the same checks before it loads tensors, so a directory is judged alike everywhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from zstag.core.errors import ModelError
from zstag.methods import ASSEMBLED, METHODS
from zstag.store import CALIBRATION_LIMIT, CONFIG, SEMANTICS_NAMES, WEIGHTS

_REQUIRED = ("method", "backbone", "seen_labels", "hp", "image_size")
FORMAT = 1  # the model-directory format this zstag writes and reads
IMAGE_SIZE = (16, 4096)  # pixels, as `zstag train --image-size` allows
SEMANTIC_DIM = (1, 65536)
MAX_LABELS = 100_000  # per list (seen, unseen): far above any vocabulary trained on, far below what hurts
MAX_LABEL_CHARS = 1000
MAX_CONFIG_BYTES = 64 << 20  # a config with MAX_LABELS long labels stays well below this
_CALIBRATION_NUMBERS = ("scale", "bias", "base_rate", "log_loss", "pairs", "positives")
SCORE_NORMS = ("none", "seen")  # `Method.standardised`: raw scores, or standardised against the seen labels


class _Bad(ValueError):
    """A config field that is wrong: its name and what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")


def read_config(folder: Path) -> dict[str, Any]:
    """The config of a model directory, after checking both files exist and every field is usable.

    Everything a model is built from is checked here, before any tensor, backbone or text model
    is allocated: a hostile config (an image size of 100000, a label list of a million entries,
    NaN calibration, a semantics path outside the folder) would otherwise cost gigabytes or read
    files it has no business reading. The `hp` object must be a JSON object; its fields are the
    method's typed settings' to validate (`Method.hyperparameters`). Raises a one-line ModelError
    naming the file and the field.
    """
    folder = Path(folder)
    config_path = folder / CONFIG
    for p in (config_path, folder / WEIGHTS):
        if not p.is_file():
            raise ModelError(f"{folder} is not a model directory: {p.name} is missing")
    try:
        if config_path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES >> 20} MB")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise TypeError("not a JSON object")
        missing = [key for key in _REQUIRED if key not in config]
        if missing:
            raise KeyError(", ".join(missing))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ModelError(f"{config_path}: unreadable model config ({exc})") from None
    if not isinstance(config["method"], str) or config["method"] not in {**METHODS, **ASSEMBLED}:
        raise ModelError(f"{config_path}: unknown method {_short(config['method'])} (made by a newer zstag?)")
    try:
        _check_fields(config, folder)
        _check_header(config, folder)
    except _Bad as exc:
        raise ModelError(f"{config_path}: {exc}") from None
    return config


def _check_fields(config: dict[str, Any], folder: Path) -> None:
    from zstag.backbones import BACKBONES  # names only, no torch

    if config.get("format", FORMAT) != FORMAT or isinstance(config.get("format"), bool):
        raise _Bad("format", f"is {config.get('format')!r}; this zstag reads format {FORMAT} (made by a newer zstag?)")
    if not isinstance(config["backbone"], str) or config["backbone"] not in BACKBONES:
        raise _Bad("backbone", f"{_short(config['backbone'])} is not one of {', '.join(BACKBONES)}")
    _integer(config, "image_size", *IMAGE_SIZE)
    if "semantic_dim" in config:
        _integer(config, "semantic_dim", *SEMANTIC_DIM)
    _labels(config, "seen_labels", minimum=1)
    if "unseen_labels" in config:
        _labels(config, "unseen_labels", minimum=0)
    if not isinstance(config["hp"], dict):
        raise _Bad("hp", "must be a JSON object")
    if not isinstance(config.get("backbone_in_weights", True), bool):
        raise _Bad("backbone_in_weights", "must be true or false")
    if config.get("calibration") is not None:
        check_calibration(config["calibration"])
    if config.get("score_norm", "none") not in SCORE_NORMS:
        raise _Bad("score_norm", f"must be one of {', '.join(SCORE_NORMS)}, got {_short(config['score_norm'])}")
    if config.get("score_norm") == "seen" and len(config["seen_labels"]) < 2:
        raise _Bad("score_norm", "is seen, which standardises against the seen labels: it needs two or more")
    _semantics_path(config, folder)


def _integer(config: dict[str, Any], field: str, low: int, high: int) -> None:
    value = config[field]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _Bad(field, f"must be a whole number from {low} to {high}, got {_short(value)}")


def _labels(config: dict[str, Any], field: str, minimum: int) -> None:
    value = config[field]
    if not isinstance(value, list) or not minimum <= len(value) <= MAX_LABELS:
        raise _Bad(field, f"must be a list of {minimum} to {MAX_LABELS} labels, got {_short(value)}")
    for label in value:
        if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL_CHARS:
            raise _Bad(
                field, f"must hold non-empty strings of at most {MAX_LABEL_CHARS} characters, got {_short(label)}"
            )


def check_calibration(value: Any) -> None:
    """Refuse a calibration that is not what `zstag.eval.calibration.fit` writes: finite numbers of
    bounded size, scale and bias present and the scale positive (a non-positive one would reverse
    the method's ranking, which `fit` refuses to produce). Raises ValueError naming the field; one
    rule for a model's config and for a ready-made model's stored calibration (`store.catalog`)."""
    if not isinstance(value, dict) or not {"scale", "bias"} <= value.keys():
        raise _Bad("calibration", "must be an object with numbers scale and bias")
    for key in _CALIBRATION_NUMBERS:
        number = value.get(key, 0.0)
        if (
            isinstance(number, bool)
            or not isinstance(number, (int, float))
            or not math.isfinite(number)
            or abs(number) > (CALIBRATION_LIMIT if key in ("scale", "bias") else 1e12)
        ):
            raise _Bad(f"calibration.{key}", f"must be a finite number of moderate size, got {_short(number)}")
    if not value["scale"] > 0:
        raise _Bad("calibration.scale", f"must be positive (at 0 or below it breaks the ranking), got {value['scale']}")


def _short(value: Any) -> str:
    """A value for an error line: its repr, cut short (a hostile field may be megabytes long)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def semantics_source(config: dict[str, Any], folder: Path) -> str:
    """What a (read_config-checked) model's `semantics` names, for `get_semantics`: a registry name,
    or the absolute path of a file or folder inside the model directory."""
    try:
        return _semantics_path(config, Path(folder))
    except _Bad as exc:
        raise ModelError(f"{Path(folder) / CONFIG}: {exc}") from None


def _semantics_path(config: dict[str, Any], folder: Path) -> str:
    """The registry name, or the resolved path inside `folder`, that `semantics` names.

    A model directory (perhaps fetched from anyone's Hub repository) may not make zstag read a
    file elsewhere on the machine (`/etc/passwd`, a user's home): anything but a registry name
    must be a relative path that stays inside the folder once symbolic links are resolved (or, for a
    snapshot in the Hugging Face cache, in its repository's blobs).
    """
    name = config.get("semantics", "minilm")
    if not isinstance(name, str) or not name:
        raise _Bad(
            "semantics",
            f"must be a name ({', '.join(SEMANTICS_NAMES)}) or a path inside the model directory, got {_short(name)}",
        )
    if name in SEMANTICS_NAMES:
        return name
    root = folder.resolve()
    target = (root / name).resolve()
    if Path(name).is_absolute() or not any(place in target.parents for place in _inside(root)):
        raise _Bad(
            "semantics",
            f"{_short(name)} is neither {' nor '.join(SEMANTICS_NAMES)} nor a path inside "
            f"the model directory (pass --semantics to use vectors from elsewhere)",
        )
    if not target.exists():
        raise _Bad("semantics", f"{_short(name)} is not in the model directory")
    return str(folder / name)


def _inside(root: Path) -> list[Path]:
    """Where a model directory's files may really live: in it, and for a snapshot in huggingface_hub's
    cache (`models--O--R/snapshots/REV`, whose files are links) in that repository's `blobs/`."""
    return [root, root.parent.parent / "blobs"] if root.parent.name == "snapshots" else [root]


def weight_header(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor in `model.safetensors`, from its header only.

    safetensors checks on opening that the header's offsets lie inside the file, so the shapes
    read here are bounded by the file's size and nothing is allocated for them.
    """
    path = Path(folder) / WEIGHTS
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape())) for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None


def weight_names(folder: Path) -> list[str]:
    """The tensor names in `model.safetensors`, from its header only (no tensor is read)."""
    return list(weight_header(folder))


def _check_header(config: dict[str, Any], folder: Path) -> None:
    """What the config implies about the tensors, checked against the header before anything is built.

    Every method maps label vectors through weights that have `semantic_dim` as one of their
    sides, and a `seen_vectors` tensor (SGMA, ConSE) holds one row per training label; a config
    edited to other labels or another semantics is caught here instead of after allocating the model.
    """
    header = weight_header(folder)
    head = {name: shape for name, (_, shape) in header.items() if not name.startswith("backbone.")}
    dim = config.get("semantic_dim")
    if dim is not None and head and not any(dim in shape for shape in head.values()):
        raise _Bad("semantic_dim", f"is {dim}, but no tensor in {WEIGHTS} has that size")
    seen = head.get("seen_vectors")
    if seen is not None and seen[0] != len(config["seen_labels"]):
        raise _Bad(
            "seen_labels",
            f"lists {len(config['seen_labels'])} labels, but {WEIGHTS} was trained "
            f"on {seen[0]} (seen_vectors {list(seen)})",
        )


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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return True
    return isinstance(config, dict) and ("method" in config or "zstag_version" in config)


def epochs_run(config: dict[str, Any]) -> int | None:
    """The last epoch training recorded in config.json, None for a model with no training history."""
    training = config.get("training")
    history = training.get("history") if isinstance(training, dict) else None
    epochs = [e["epoch"] for e in history or () if isinstance(e, dict) and isinstance(e.get("epoch"), int)]
    return max(epochs, default=None)
