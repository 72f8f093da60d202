"""Model directories: `config.json` + `model.safetensors`, never a pickle.

A model is rebuilt from its config (method, backbone, semantics, hyperparameters, training labels)
and its tensors loaded strictly. A ready-made model (`--model imagenet`, `--model clip-vit-b32`,
`store.catalog.ReadyMade`) has no directory: it is assembled from fetched weights alone.
A frozen, pretrained backbone is not copied into every model: its
tensors stay in the fetch cache or `weights/`, and the config says so (`backbone_in_weights`).
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zstag import __version__
from zstag.backbones import CLIP_MODELS, SCRATCH_BACKBONES, build_backbone
from zstag.backbones.base import Backbone
from zstag.core import console
from zstag.core.atomic import atomic_write
from zstag.core.errors import ModelError, UsageError, ZstagError
from zstag.core.paths import WEIGHTS_DIR
from zstag.data.labels import LabelSet
from zstag.methods import method_class
from zstag.methods.base import Method
from zstag.semantics import PICKLES, embed_labels, get_semantics
from zstag.semantics.base import Semantics
from zstag.store import CONFIG, WEIGHTS
from zstag.store.catalog import ReadyMade, read_calibration, ready_made
from zstag.store.config import read_config, semantics_source, weight_header


@dataclass
class Model:
    """A ready-to-use tagger: the method module with what it was trained with."""

    method: Method
    config: dict[str, Any]
    semantics: Semantics
    path: Path | None = None
    seen: LabelSet | None = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    def embed(self, labels: list[str]) -> LabelSet:
        return embed_labels(self.semantics, labels)


@dataclass
class TensorCheck:
    """A weights file's tensor names and shapes (from its header), held against a model's."""

    path: Path
    method: str
    shapes: dict[str, tuple[int, ...]]
    with_backbone: bool  # whether the file holds the backbone's tensors too

    def check(self, own: dict[str, tuple[int, ...]]) -> None:
        """ModelError unless the file has exactly the model's tensors (the backbone's only when
        `with_backbone`), each of the model's shape."""
        expected = {k for k in own if self.with_backbone or not k.startswith("backbone.")}
        missing, unexpected = sorted(expected - self.shapes.keys()), sorted(self.shapes.keys() - own.keys())
        if missing or unexpected:
            raise ModelError(
                f"{self.path}: tensors do not match the {self.method} model "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        for name, shape in self.shapes.items():
            if own[name] != shape:
                raise ModelError(f"{self.path}: tensor {name} has shape {shape}, expected {own[name]}")


def build_model(
    method: str,
    backbone: str,
    semantics: str,
    seen_labels: list[str],
    hp: dict[str, Any],
    image_size: int,
    pretrained: bool = True,
    weights: TensorCheck | None = None,
) -> Model:
    """A fresh (or to-be-loaded) model; `hp` holds the overrides of the method's defaults (a saved
    model's whole `hp` object). They are validated before anything is loaded or allocated, and with
    `weights` (a weights file's header) the head's tensor shapes are checked against it before they
    are allocated (`_assemble`).

    A CLIP backbone is frozen unless `hp` says otherwise, whatever the method's recipe: SGMA's and
    (ML)^2P's recipes fine-tune the ImageNet CNNs of their papers, while CLIP's value is the
    image-text alignment that fine-tuning on a small tagged set would erode (and a frozen tower
    stays in the fetch cache instead of being copied into every model).
    """
    if backbone in CLIP_MODELS and "finetune_backbone" not in hp:
        hp = {**hp, "finetune_backbone": False}
    return _assemble(method_class(method), backbone, semantics, seen_labels, hp, image_size, pretrained, weights)


def _backbone(name: str, pretrained: bool, weights: TensorCheck | None) -> Backbone:
    """Backbone `name`; when the weights file holds its tensors, built without the random
    initialisation the file then replaces: VGG19's (a 140M-parameter classifier included) took
    1.2 s of a 2.2 s model load on a CPU core, before the first image. Its memory is left
    uninitialised (`to_empty`), which is safe because `TensorCheck.check` makes sure the file
    has every tensor of the state dict; a backbone with a buffer outside the state dict (a
    non-persistent one, which no file fills) is built the ordinary way."""
    if weights is None or not weights.with_backbone:
        return build_backbone(name, pretrained=pretrained)
    with torch.device("meta"):
        net = build_backbone(name, pretrained=False)
    saved = net.state_dict().keys()
    if any(buffer not in saved for buffer, _ in net.named_buffers()):
        return build_backbone(name, pretrained=False)
    return net.to_empty(device="cpu")


def _assemble(
    cls: type[Method],
    backbone: str,
    semantics: str,
    seen_labels: list[str],
    hp: dict[str, Any],
    image_size: int,
    pretrained: bool,
    weights: TensorCheck | None = None,
) -> Model:
    settings = cls.hyperparameters(hp)
    sem = get_semantics(semantics)
    net = _backbone(backbone, pretrained, weights)
    seen = embed_labels(sem, seen_labels)

    def embed(names: list[str]) -> LabelSet:
        return embed_labels(sem, names)

    if weights is not None:
        # Settings within their bounds can still ask for gigabytes (64 ensemble members of
        # 8192-wide heads): build the head on the meta device first, which allocates nothing,
        # and hold its shapes against the file's. A constructor that computes from data (which
        # meta tensors do not hold) is skipped here and checked after the real build.
        try:
            with torch.device("meta"):
                dry = cls(net, seen, settings, embed)
        except Exception:  # noqa: BLE001 - any failure only means the early check cannot run
            dry = None
        if dry is not None:
            weights.check({k: tuple(v.shape) for k, v in dry.state_dict().items()})
    module = cls(net, seen, settings, embed)
    config = {
        "format": 1,
        "zstag_version": __version__,
        "method": cls.name,
        "backbone": backbone,
        "semantics": semantics,
        "semantic_dim": seen.dim,
        "image_size": image_size,
        "hp": settings.flat(),
        "seen_labels": list(seen_labels),
    }
    return Model(module, config, sem, seen=seen)


def save_model(model: Model, out_dir: Path) -> None:
    """Write the model directory atomically (each file through a rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keep_backbone = model.method.trains_backbone or model.config["backbone"] in SCRATCH_BACKBONES
    model.config["backbone_in_weights"] = keep_backbone
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in model.method.state_dict().items()
        if keep_backbone or not k.startswith("backbone.")
    }
    atomic_write(out_dir / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    bundle_semantics(model, out_dir)
    write_config(out_dir, model.config)


def bundle_semantics(model: Model, out_dir: Path) -> None:
    """Copy local semantics (a vector file or sentence-transformers folder) into the model directory.

    A model's config may name only a registry source or a path inside its own directory
    (`store/config.py`), so a model trained on `--semantics PATH` carries its copy, named
    `semantics/` (a folder) or `semantics.txt` (a file, keeping its suffix), and stays usable when PATH
    moves; `zstag push` publishes a file copy with the model. Pickles are not copied.
    """
    source = model.semantics.source
    if source is None:
        return
    target = out_dir / ("semantics" + (source.suffix or ".txt" if source.is_file() else ""))  # a file has a suffix
    if source.is_file() and not _same_file_copy(source, target):
        atomic_write(target, lambda tmp: shutil.copy2(source, tmp))  # copy2 keeps mtime: saves after the first skip
    elif source.is_dir() and source.resolve() != target.resolve():
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*(f"*{s}" for s in PICKLES)))
    model.config["semantics"] = target.name


def _same_file_copy(source: Path, target: Path) -> bool:
    """Whether `target` is `source` or already a copy of it (same size and mtime), e.g. at a later epoch's save."""
    if not target.is_file():
        return False
    a, b = source.stat(), target.stat()
    return source.resolve() == target.resolve() or (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


def write_config(model_dir: Path, config: dict[str, Any]) -> None:
    """Replace a model directory's config.json atomically (e.g. after `zstag calibrate`)."""
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(model_dir) / CONFIG, lambda tmp: Path(tmp).write_text(text))


def build_ready_made(made: ReadyMade, semantics: str | None = None) -> Model:
    """A ready-made model from its fetched weights (a MissingWeightsError naming `zstag fetch` if absent),
    with the calibration `zstag calibrate NAME` stored for it, if any (raw scores otherwise)."""
    cls: type[Method]
    if made.method == "conse":
        from zstag.backbones.torchvision_nets import imagenet_classes
        from zstag.methods.conse import ConSE

        cls, seen = ConSE, imagenet_classes()
    else:
        from zstag.methods.zeroshot import ClipZeroShot

        cls, seen = ClipZeroShot, []
    model = _assemble(cls, made.backbone, semantics or made.semantics, seen, made.hp, made.image_size, True)
    model.method.eval()
    model.config["ready_made"] = made.name
    calibration = read_calibration(made) if semantics in (None, made.semantics) else None
    if calibration is not None:
        model.config["calibration"] = calibration
    return model


def resolve_model_dir(ref: str | Path) -> Path:
    """`default` -> the bundled model; a folder; or a fetched name / hf:// URL from the cache."""
    ref = str(ref)
    if ref == "default":
        return WEIGHTS_DIR / "default"
    made = ready_made(ref)
    if made is not None:
        raise UsageError(
            f"{ref} is a ready-made model assembled from `zstag fetch {made.weights}`, with no model "
            "directory (`zstag calibrate` keeps its calibration in zstag's cache, see docs/usage.md)"
        )
    path = Path(ref)
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(f"--model must be a model directory (config.json + model.safetensors), got a file: {ref}")
    from zstag.store import hub

    try:
        cached = hub.cached(ref)
    except ZstagError:  # not a registry name or hf:// URL either
        cached = None
    if cached is None:
        raise UsageError(f"model not found: {ref} (a model directory, 'default', or a name fetched with `zstag fetch`)")
    return Path(cached)


def load_model(ref: str | Path, semantics: str | None = None) -> Model:
    """Rebuild a model directory (or assemble a ready-made one); every problem is a one-line error."""
    made = ready_made(str(ref))
    if made is not None:
        return build_ready_made(made, semantics)
    folder = resolve_model_dir(ref)
    weights_path = folder / WEIGHTS
    config = read_config(folder)
    method, backbone = config["method"], config["backbone"]
    seen_labels, hp, image_size = config["seen_labels"], config["hp"], int(config["image_size"])
    in_weights = bool(config.get("backbone_in_weights", True))
    try:
        method_class(method).hyperparameters(hp)  # checked before any backbone or text model loads
    except UsageError as exc:
        raise ModelError(f"{folder / CONFIG}: {exc}") from None
    header = TensorCheck(
        weights_path, method, {k: shape for k, (_, shape) in weight_header(folder).items()}, in_weights
    )
    model = build_model(
        method,
        backbone,
        semantics or semantics_source(config, folder),
        seen_labels,
        hp,
        image_size,
        pretrained=not in_weights,
        weights=header,
    )
    if model.seen is not None and model.seen.dim != config.get("semantic_dim", model.seen.dim):
        raise ModelError(
            f"{folder}: trained with {config['semantic_dim']}-d semantics, but "
            f"{model.config['semantics']} gives {model.seen.dim}-d vectors"
        )
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    header.check({k: tuple(v.shape) for k, v in model.method.state_dict().items()})
    model.method.load_state_dict(state, strict=False)
    model.method.eval()
    model.config = {**model.config, **config}
    model.path = folder
    use_score_norm(model, config.get("score_norm", "none"))
    return model


def use_score_norm(model: Model, norm: str) -> None:
    """Score `model`'s images raw (`none`) or standardised against its seen labels (`seen`,
    `Method.standardised`), from now on; the config is left as it is."""
    if norm == "none":
        model.method.cohort = None
        return
    if model.seen is None or len(model.seen) < 2:
        count = 0 if model.seen is None else len(model.seen)
        raise UsageError(
            f"score norm {norm} standardises against the model's seen labels: it has {count}, not 2 or more"
        )
    model.method.cohort = model.seen


def assemble_ensemble(refs: list[str], out: Path) -> Model:
    """An ensemble model directory at `out` from trained models (`zstag.methods.ensemble`).

    The members must share a frozen backbone (their directories do not hold it), the semantics, the
    image size and the seen labels; ready-made models and ensembles are not members. `out` must be
    new or empty: nothing zstag did not write is overwritten. The ensemble has no calibration yet
    (`zstag calibrate`).
    """
    from zstag.methods.ensemble import MAX_MEMBERS, Ensemble

    if not 2 <= len(refs) <= MAX_MEMBERS:
        raise UsageError(f"an ensemble needs two models or more, at most {MAX_MEMBERS}")
    check_new_folder(out)
    folders: dict[str, str] = {}
    for ref in refs:
        try:
            real = os.path.realpath(resolve_model_dir(ref))
        except ZstagError:
            continue  # load_model names what is wrong with it
        if real in folders:
            raise UsageError(f"{ref} is the same model as {folders[real]}: give each member once")
        folders[real] = str(ref)
    members = [load_model(ref) for ref in refs]
    first = members[0]
    for ref, member in zip(refs, members, strict=True):
        if "ready_made" in member.config or member.config["method"] == "ensemble":
            raise UsageError(f"{ref}: a ready-made model or an ensemble cannot be a member; give trained models")
        if member.config.get("backbone_in_weights", True):
            raise UsageError(
                f"{ref}: its backbone was trained with it (it is in its weights), so it cannot share one "
                "backbone pass: an ensemble's members are trained with the backbone frozen"
            )
        for key in ("backbone", "image_size", "seen_labels"):
            if member.config[key] != first.config[key]:
                raise UsageError(f"{ref}: {key} differs from {refs[0]}'s; an ensemble's members share it")
        if not _same_semantics(member.semantics, first.semantics):
            raise UsageError(f"{ref}: semantics differ from {refs[0]}'s; an ensemble's members share them")
    source = first.semantics.source
    hp = {"members": [{"method": m.config["method"], "hp": m.config["hp"]} for m in members]}
    model = build_model(
        "ensemble",
        first.config["backbone"],
        first.config["semantics"] if source is None else str(source),
        first.config["seen_labels"],
        hp,
        first.image_size,
    )
    for index, member in enumerate(members):
        state = {k: v for k, v in member.method.state_dict().items() if not k.startswith("backbone.")}
        cast(Ensemble, model.method).heads[index].load_state_dict(state)
    unseen = {tuple(m.config.get("unseen_labels", [])) for m in members}
    if len(unseen) == 1:
        model.config["unseen_labels"] = list(unseen.pop())
    model.config["members"] = [str(ref) for ref in refs]
    try:
        save_model(model, out)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write the model there ({exc.strerror or exc})") from None
    if any(m.config.get("calibration") or m.config.get("score_norm", "none") != "none" for m in members):
        console.info(
            "the members' calibrations and score normalisation do not carry over to the ensemble: "
            f"zstag calibrate {out} --data TAGGED --score-norm seen"
        )
    return model


def _same_semantics(a: Semantics, b: Semantics) -> bool:
    """The same registry source, or local copies (each model directory holds its own) with the same bytes."""
    if a.source is None or b.source is None:
        return a.key == b.key
    if a.source.is_file() and b.source.is_file():
        return filecmp.cmp(a.source, b.source, shallow=False)
    if a.source.is_dir() and b.source.is_dir():
        files = sorted(str(f.relative_to(a.source)) for f in a.source.rglob("*") if f.is_file())
        others = sorted(str(f.relative_to(b.source)) for f in b.source.rglob("*") if f.is_file())
        _, differ, unreadable = filecmp.cmpfiles(a.source, b.source, files, shallow=False)
        return files == others and not differ and not unreadable
    return False


def check_new_folder(out: Path) -> None:
    """Refuse an output folder that is not new or empty, or cannot be made (a file or a dangling
    link on the way, no permission), before any work: nothing is written there."""
    if out.is_symlink() and not out.exists():
        raise UsageError(f"--out {out} is a link to nothing; choose another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder; choose another")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
        raise UsageError(f"--out {out}: cannot make a folder there ({existing} is not a writable folder)")
