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
        help="Model directory to calibrate (its config.json is updated); not `default` "
        "or a fetched model, which are never rewritten: calibrate a copy.",
        autocompletion=params.complete_models,
    ),
    "truth": typer.Option("--data", help="Tagged images the model did not train on: a manifest or sidecar folder."),
    "labels": typer.Option("--labels", help="Labels to fit on (default: every tag in DATA)."),
    "batch_size": params.batch_size(),
    "device": params.device(),
    "workers": params.workers(),
}


def run(opts: EvalOptions) -> None:
    """Fit score calibration (Platt scaling) on tagged images, so thresholds are probabilities.

    Training already calibrates on its validation split; use this for older models or to
    calibrate on your own images. Prints the fitted scale and bias as JSON. The shipped `default`
    and fetched models (zstag's or the Hugging Face cache) are refused: copy the directory
    (`cp -rL`) and calibrate the copy.

    Example:\n
      zstag calibrate models/lesa --data data/val.jsonl
    """
    from zstag.jobs.evaluate import run_calibrate

    print(json.dumps(run_calibrate(opts)))


command = from_options(EvalOptions, FLAGS, run)
