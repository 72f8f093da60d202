"""`zstag models`: every tagging model on this machine, one row each, from config.json alone.

Three places hold models: `weights/` (bundled with zstag), the fetch cache (`zstag fetch
hf://...`, also the standard Hugging Face cache) and folders the user names (a model directory,
or a folder such as `runs/` searched for them). Ready-made models (`imagenet`, `clip-vit-b32`, see
`ReadyMade`) have no directory: they are listed once the weights they are assembled from are fetched,
and `zstag calibrate` keeps their calibration in zstag's cache root (`read_calibration`).
Rows are built from `config.json` and the safetensors header only, never from tensors, so listing
a cache of many models takes a moment and needs neither torch nor the network. A broken directory
becomes a row with `error` set: one bad model must not hide the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from zstag.backbones import CLIP_MODELS
from zstag.core import console
from zstag.core.atomic import atomic_write_text
from zstag.core.errors import UsageError, ZstagError
from zstag.core.paths import WEIGHTS_DIR, cache_root
from zstag.store import CONFIG, hub
from zstag.store.config import check_calibration, epochs_run, looks_like_model, read_config, weight_names

DEFAULT = "default"


@dataclass
class ModelRow:
    """One listed model; `name` is what `--model` accepts, fields it cannot know are None."""

    name: str
    where: str  # bundled, fetched or local
    method: str | None = None
    backbone: str | None = None
    semantics: str | None = None
    seen: int | None = None
    unseen: int | None = None
    image_size: int | None = None
    size: int | None = None  # bytes of the files in the folder (symbolic links followed)
    best_val_mAP: float | None = None  # the name training writes in config.json
    epochs: int | None = None
    path: str = ""
    error: str | None = None


COLUMNS = tuple(f.name for f in fields(ModelRow))


IMAGENET = "imagenet"
IMAGENET_BACKBONES = ("resnet101", "resnet50", "vgg19")  # `imagenet` uses the first one fetched
IMAGENET_CLASSES = 1000
CONSE_T = 10  # Norouzi et al.'s best T on ImageNet


@dataclass(frozen=True)
class ReadyMade:
    """A model assembled in memory from fetched weights, with nothing trained and no directory.

    `imagenet` (or `imagenet-resnet50`, ...): ConSE over the backbone's own ImageNet-1k classifier,
    the softmax's top T = 10 classes weighting the MiniLM vectors of their torchvision names.
    `clip-vit-b32` (any of `CLIP_MODELS`): CLIP zero-shot with prompt ensembling.
    """

    name: str
    method: str
    backbone: str
    semantics: str
    hp: dict[str, Any]
    image_size: int = 224

    @property
    def weights(self) -> str:
        """The registry entry it is assembled from (what `zstag fetch` needs)."""
        return self.backbone

    @property
    def key(self) -> str:
        """The one name of this model: `imagenet` spelt with the backbone it resolved to."""
        return f"{IMAGENET}-{self.backbone}" if self.method == "conse" else self.name

    def identity(self) -> dict[str, str]:
        """What its scores depend on: the registry's pin of its weights (the sha256 where pinned, as
        the CLIP text-vector cache keys it) and its label semantics. No file is read."""
        spec = hub.resolve(self.weights)
        sha = next((f.sha256 for f in spec.files if f.name == "model.safetensors"), None)
        return {"weights": f"{spec.repo}@{spec.revision}:{sha or 'unpinned'}", "semantics": self.semantics}


# --- ready-made models' calibration --------------------------------------------------------------

CALIBRATIONS = "calibrations"
_CALIBRATION_FORMAT = "zstag ready-made calibration 1"


def calibration_file(made: ReadyMade, cache_dir: str | Path | None = None) -> Path:
    """Where `zstag calibrate NAME` keeps a ready-made model's calibration: zstag's own cache root,
    never the fetched snapshot (a download other tools share, and `--force` replaces)."""
    return cache_root(cache_dir) / CALIBRATIONS / f"{made.key}.json"


def read_calibration(made: ReadyMade, cache_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The calibration fitted for `made`, or None (raw scores) when there is none, when the file is not
    one zstag wrote, or when it was fitted for other weights or semantics (each with a warning)."""
    path = calibration_file(made, cache_dir)
    if not path.is_file():
        return None
    record = _calibration_record(path)
    if record is None:
        console.warn(f"{path} is not a calibration zstag wrote: {made.name} gives raw scores")
        return None
    if record["identity"] != made.identity():
        console.warn(
            f"{path} was fitted for other weights or semantics than {made.name} now uses "
            f"({record['identity']}): raw scores until `zstag calibrate {made.name}` fits them again"
        )
        return None
    return record["calibration"]


def write_calibration(made: ReadyMade, fitted: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """Store `fitted` for `made` (replacing an earlier zstag calibration, never another file)."""
    path = calibration_file(made, cache_dir)
    if path.exists() and _calibration_record(path) is None:
        raise UsageError(f"{path} exists and is not a calibration zstag wrote: move it away first")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": _CALIBRATION_FORMAT, "model": made.key, "identity": made.identity(), "calibration": fitted}
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def _calibration_record(path: Path) -> dict[str, Any] | None:
    """The stored record if it is what `write_calibration` writes (a calibration `check_calibration`
    accepts, as in a model's config), else None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != _CALIBRATION_FORMAT:
        return None
    if not isinstance(record.get("identity"), dict):
        return None
    try:
        check_calibration(record.get("calibration"))
    except ValueError:
        return None
    return record


def ready_made(ref: str, cache_dir: str | Path | None = None) -> ReadyMade | None:
    """The ready-made model `ref` names, None when `ref` is anything else (an existing path wins)."""
    if Path(ref).exists():
        return None
    if ref in CLIP_MODELS:
        return ReadyMade(ref, "clip-zeroshot", ref, ref, {})
    backbone = ref[len(IMAGENET) + 1 :] if ref.startswith(IMAGENET + "-") else None
    if ref == IMAGENET:
        backbone = next((b for b in IMAGENET_BACKBONES if _fetched_weights(b, cache_dir)), IMAGENET_BACKBONES[0])
    if backbone not in IMAGENET_BACKBONES:
        return None
    hp = {"single_label": True, "top_t": CONSE_T, "backbone_classifier": True}
    return ReadyMade(ref, "conse", backbone, "minilm", hp)


def _fetched_weights(name: str, cache_dir: str | Path | None) -> Path | None:
    try:
        return hub.cached(name, cache_dir=cache_dir)
    except ZstagError:  # a corrupt copy: not usable
        return None


def _ready_made_rows(cache_dir: str | Path | None) -> Iterator[ModelRow]:
    """A row for each ready-made model whose weights are fetched."""
    names = [IMAGENET, *(f"{IMAGENET}-{b}" for b in IMAGENET_BACKBONES), *CLIP_MODELS]
    for name in names:
        made = ready_made(name, cache_dir)
        folder = _fetched_weights(made.weights, cache_dir) if made is not None else None
        if made is None or folder is None:
            continue
        yield ModelRow(
            name=name,
            where="fetched",
            method=made.method,
            backbone=made.backbone,
            semantics=made.semantics,
            seen=IMAGENET_CLASSES if made.method == "conse" else None,
            image_size=made.image_size,
            size=_folder_size(folder),
            path=str(folder),
        )


def describe(folder: Path, name: str, where: str) -> ModelRow:
    """The row of one model directory; every problem ends up in `error` (and no half-filled row)."""
    row = ModelRow(name=name, where=where, path=str(folder), size=_folder_size(folder))
    try:
        config = read_config(folder)
        weight_names(folder)
        training = config.get("training") or {}
        unseen = config.get("unseen_labels")
        return replace(
            row,
            method=config["method"],
            backbone=config["backbone"],
            semantics=config.get("semantics"),
            seen=len(config["seen_labels"]),
            unseen=len(unseen) if isinstance(unseen, list) else None,
            image_size=int(config["image_size"]),
            best_val_mAP=training.get("best_val_mAP"),
            epochs=epochs_run(config),
        )
    except ZstagError as exc:
        row.error = str(exc)
    except (AttributeError, TypeError, ValueError) as exc:  # a config with values of the wrong type
        row.error = f"{folder / CONFIG}: unreadable model config ({exc})"
    return row


def _folder_size(folder: Path) -> int | None:
    try:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    except OSError:
        return None


def _bundled() -> Iterator[tuple[str, Path]]:
    """`weights/default` as `default`; any other model folder under weights/ by its path."""
    for folder in sorted(WEIGHTS_DIR.iterdir()) if WEIGHTS_DIR.is_dir() else ():
        if folder.is_dir() and looks_like_model(folder):
            yield (DEFAULT if folder.name == DEFAULT else str(folder)), folder


def _fetched(cache_dir: str | Path | None) -> Iterator[tuple[str, Path]]:
    """Cached zstag models; a reference in both caches is listed once, where `--model` finds it."""
    listed: set[str] = set()
    for reference, folder in hub.snapshots(cache_dir):
        if reference not in listed and looks_like_model(folder):
            listed.add(reference)
            yield reference, folder


def _search(root: Path) -> Iterator[Path]:
    """Model folders under `root` (not inside one another, hidden folders skipped, links not followed)."""
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if looks_like_model(Path(here)):
            dirs[:] = []
            yield Path(here)


def _local(paths: Iterable[Path], search: Iterable[Path]) -> Iterator[tuple[Path, bool]]:
    """(folder, named explicitly) for each PATH argument and each folder found under a search root.

    A PATH with a config.json is a model directory, listed whatever state it is in; any other
    folder is searched like `--path`.
    """
    for path in paths:
        if not path.is_dir():
            raise UsageError(f"{path}: not a directory (give model directories or folders to search)")
        if (path / CONFIG).is_file():
            yield path, True
        else:
            yield from ((found, False) for found in _search(path))
    for root in search:
        if not root.is_dir():
            raise UsageError(f"--path {root}: not a directory")
        yield from ((found, False) for found in _search(root))


def list_models(
    paths: Iterable[Path] = (), search: Iterable[Path] = (), cache_dir: str | Path | None = None
) -> tuple[list[ModelRow], list[ModelRow]]:
    """(all rows, the rows of explicitly named directories that are broken).

    Bundled first, then fetched, then local; a folder reached twice (a PATH inside the cache)
    is listed once, under the first name found for it.
    """
    rows: dict[Path | str, ModelRow] = {}
    broken: list[ModelRow] = []

    def add(folder: Path, name: str, where: str) -> ModelRow:
        key = folder.resolve()
        if key not in rows:
            rows[key] = describe(folder, name, where)
        return rows[key]

    for name, folder in _bundled():
        add(folder, name, "bundled")
    for reference, folder in _fetched(cache_dir):
        add(folder, reference, "fetched")
    for made in _ready_made_rows(cache_dir):
        rows[made.name] = made  # keyed by name: they share their weights' folders
    for folder, named in _local(paths, search):
        row = add(folder, str(folder), "local")
        if named and row.error and row not in broken:
            broken.append(row)
    return list(rows.values()), broken


# --- rendering -----------------------------------------------------------------------------------


def as_dict(row: ModelRow) -> dict[str, Any]:
    """The row for `--json` (one JSON object a line; unknown values are null)."""
    return asdict(row)


def tsv_lines(rows: Iterable[ModelRow]) -> Iterator[str]:
    """A header line, then one tab-separated line per row (unknown values empty; no tabs inside)."""
    yield "\t".join(COLUMNS)
    for row in rows:
        yield "\t".join(_cell(getattr(row, c)) for c in COLUMNS)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def table(rows: list[ModelRow]) -> Any:
    """A Rich renderable for a terminal: sizes in MB, mAP in percent, errors spelled out below."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=None, header_style="bold", pad_edge=False, collapse_padding=True)
    grid.add_column("model", overflow="fold", min_width=min(12, max((len(r.name) for r in rows), default=5)))
    for title in ("where", "method", "backbone"):
        grid.add_column(title, no_wrap=True)
    for title in ("seen", "unseen", "px", "size", "mAP", "epochs"):
        grid.add_column(title, justify="right", no_wrap=True)
    for row in rows:
        cells = [
            row.where,
            row.method,
            row.backbone,
            row.seen,
            row.unseen,
            row.image_size,
            None if row.size is None else f"{row.size / 1e6:.1f} MB",
            None if row.best_val_mAP is None else f"{100 * row.best_val_mAP:.1f}%",
            row.epochs,
        ]
        texts = [Text("" if c is None else str(c)) for c in cells]  # Text: never read as markup
        if row.error:
            texts[1] = Text("broken", style="red")
        grid.add_row(Text(row.name), *texts)
    errors = [Text(row.error, style="red") for row in rows if row.error]  # each names its folder
    return Group(grid, *errors) if errors else grid
