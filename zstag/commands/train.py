"""`zstag train`: a tagger from a folder or manifest of tagged images."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from zstag.backbones import CLIP_MODELS, SCRATCH_BACKBONES
from zstag.commands import params
from zstag.commands.build import Flag, from_options
from zstag.core import console
from zstag.store import SEMANTICS_NAMES
from zstag.training.checks import problems
from zstag.training.options import TrainOptions

NAME = "train"


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """`--set key=value` pairs; values are JSON where they parse (numbers, true/false, lists), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expects KEY=VALUE, got {pair!r}", param_hint="--set")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


FLAGS = {
    "data": typer.Argument(help="Training data: a .jsonl / .csv manifest or a folder of images with .txt sidecars."),
    "method": typer.Option(
        "--method",
        "-m",
        help="lesa, sgma, rgcn-posvae, ml2p, fast0tag or conse.",
        autocompletion=params.complete_methods,
    ),
    "out": typer.Option("--out", "-o", help="Model directory to write (config.json + model.safetensors)."),
    "unseen": typer.Option("--unseen", help="Labels held out of training (one per line)."),
    "labels": typer.Option("--labels", help="Train only on these labels (default: every tag in DATA)."),
    "backbone": typer.Option(
        "--backbone",
        help=(
            f"bundled (default: pretrained on clip art, shipped), {', '.join(SCRATCH_BACKBONES)} (trained from"
            f" scratch), vgg19, resnet50, resnet101 (ImageNet) or {', '.join(CLIP_MODELS)} (photos; these"
            " need `zstag fetch NAME` once)."
        ),
        autocompletion=params.complete_backbones,
    ),
    "semantics": typer.Option(
        "--semantics",
        help=(
            f"{', '.join(SEMANTICS_NAMES)} (CLIP's text tower, after `zstag fetch`), or a vector text file /"
            " sentence-transformers folder."
        ),
    ),
    "epochs": typer.Option("--epochs", min=1, help="Epochs (default: the method's recipe)."),
    "batch_size": params.batch_size("Batch size (default: the method's recipe)."),
    "lr": typer.Option("--lr", min=0.0, help="Learning rate (default: the method's recipe)."),
    "image_size": typer.Option("--image-size", min=16, max=4096, help="Square input size in pixels."),
    "device": params.device(),
    "seed": typer.Option("--seed", help="Seed for splits, initialisation and shuffling."),
    "val_fraction": typer.Option("--val-fraction", min=0.0, max=0.9, help="Share of images held out for validation."),
    "overrides": Flag(
        typer.Option("--set", help="Method hyperparameter KEY=VALUE (repeatable), e.g. --set attentions=1."),
        Optional[list[str]],
        parse_sets,
        default=None,
    ),
    "workers": params.workers(),
    "resume": typer.Option(
        "--resume",
        help="Continue an interrupted run from OUT's last epoch checkpoint (same options; --epochs may grow).",
    ),
    "force": typer.Option("--force", help="Replace the model (or interrupted run) already in --out."),
}


def run(opts: TrainOptions) -> int:
    """Train a tagger on a folder or manifest of tagged images.

    Examples:\n
      zstag train data/train.jsonl --method lesa --out models/lesa --unseen data/unseen.txt\n
      zstag train photos/ --method fast0tag --backbone small --epochs 5 --out models/f0t\n
      zstag train data.csv --method lesa --set attentions=1 --out models/lesa-m1\n
      zstag train data/train.jsonl --method lesa --out models/lesa --resume   (after an interruption)
    """
    # Every input is checked before torch is imported: mistakes are reported in one go, at once.
    found = problems(opts)
    for line in found:
        console.error(line)
    if found:
        return 2
    from zstag.training.trainer import train

    model = train(opts)
    # Under torchrun only rank 0 writes the model and its training record.
    return 3 if model.config.get("training", {}).get("unreadable_images") else 0


command = from_options(TrainOptions, FLAGS, run)
