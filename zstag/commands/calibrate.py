"""`zstag calibrate`: fit a model's score calibration on tagged images."""

from __future__ import annotations

import json

import typer

from zstag.commands import params
from zstag.commands.build import from_options
from zstag.jobs.options import EvalOptions

NAME = "calibrate"

FLAGS = {
    "model": typer.Argument(
        help="Model directory to calibrate (its config.json is updated), or a ready-made model "
        "(`clip-vit-b32`, `imagenet`, ...: stored in zstag's cache); not `default` or a fetched "
        "model directory, which are never rewritten: calibrate a copy.",
        autocompletion=params.complete_models,
    ),
    "truth": typer.Option("--data", help="Tagged images the model did not train on: a manifest or sidecar folder."),
    "labels": typer.Option("--labels", help="Labels to fit on (default: every tag in DATA)."),
    "batch_size": params.batch_size(),
    "device": params.device(),
    "workers": params.workers(),
    "score_norm": params.score_norm(
        "Store with the fit how the model scores from now on: raw (none), or each image's scores "
        "standardised against its scores for the seen labels (seen; better ranking of images per "
        "label when some images score high for every label). Default: keep the model's setting."
    ),
}


def run(opts: EvalOptions) -> int:
    """Fit score calibration (Platt scaling) on tagged images, so thresholds are probabilities.

    Training already calibrates on its validation split; use this for older models, to
    calibrate on your own images, or for a ready-made model (`clip-vit-b32`, `imagenet`), whose
    calibration is kept in zstag's cache root (`calibrations/NAME.json`) and used by `tag` and
    `explain` from then on. Prints the fitted scale and bias as JSON. The shipped `default` and
    fetched model directories (zstag's or the Hugging Face cache) are refused: copy the directory
    (`cp -rL`) and calibrate the copy.

    Example:\n
      zstag calibrate models/lesa --data data/val.jsonl\n
      zstag calibrate models/lesa --data data/val.jsonl --score-norm seen\n
      zstag calibrate clip-vit-b32 --data my-tagged-photos/ --labels vocab.txt
    """
    from zstag.jobs.evaluate import run_calibrate

    fitted, unreadable = run_calibrate(opts)
    print(json.dumps(fitted))
    return 3 if unreadable else 0


command = from_options(EvalOptions, FLAGS, run)
