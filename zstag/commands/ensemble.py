"""`zstag ensemble`: one model from several trained ones that share a frozen backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zstag.commands import params
from zstag.commands.build import plain
from zstag.core import console

NAME = "ensemble"


@plain
def command(
    models: Annotated[
        list[str],
        typer.Argument(
            metavar="MODEL...", help="Trained model directories (two or more).", autocompletion=params.complete_models
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="New (or empty) folder for the ensemble model.")],
) -> None:
    """Assemble trained models into one: the backbone runs once per batch, each model's head scores,
    and the mean of their per-image standardised scores is the ensemble's score.

    The models must share a frozen backbone, semantics, image size and seen labels, e.g. one
    method trained with several seeds; an ensemble of a few seeds ranks images better than any one
    of them (docs/benchmarks.md). Calibrate the ensemble before using thresholds.

    Example:\n
      for s in 0 1 2 3; do zstag train data/train.jsonl --method lesa --seed $s --out runs/lesa-$s; done\n
      zstag ensemble runs/lesa-0 runs/lesa-1 runs/lesa-2 runs/lesa-3 --out models/lesa-x4\n
      zstag calibrate models/lesa-x4 --data data/val.jsonl --score-norm seen
    """
    from zstag.store.model import assemble_ensemble

    assemble_ensemble(models, out)
    console.info(f"saved {out} ({len(models)} members)")
