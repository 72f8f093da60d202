"""`zstag eval`: predictions (or a model) against ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from zstag.commands import params
from zstag.commands.build import Extra, Flag, choice, from_options, split_list
from zstag.core import console
from zstag.core.errors import UsageError
from zstag.jobs.options import EvalOptions

NAME = "eval"


def _ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in split_list(text)]
    except ValueError:
        raise typer.BadParameter(f"expects comma-separated integers, got {text!r}", param_hint="--k") from None
    if not ks or min(ks) < 1:
        raise typer.BadParameter(f"expects positive integers, got {text!r}", param_hint="--k")
    return ks


FLAGS = {
    "inputs": Flag(
        typer.Argument(metavar="IMAGE", help="With --model: the images to tag (default: the truth's images)."),
        Optional[list[str]],
        lambda given: given or [],
        default=None,
    ),
    "truth": typer.Option("--truth", help="Ground truth: a manifest or sidecar folder."),
    "predictions": typer.Option("--predictions", "-p", help="Predictions from `zstag tag --format jsonl`."),
    "model": params.model("Tag the truth's images with this model instead of reading predictions."),
    "labels": typer.Option("--labels", help="Labels to evaluate (default: every label in truth and predictions)."),
    "unseen": typer.Option("--unseen", help="Unseen labels: adds the zero-shot (zs) section."),
    "ks": Flag(typer.Option("--k", help="Comma-separated K for P/R/F1@K."), str, _ks, default="3,5"),
    "protocol": typer.Option(
        "--protocol",
        help="zstag (labels without positives left out of mAP) or lesa (counted as AP 0).",
        **choice("zstag", "lesa"),
    ),
    "batch_size": params.batch_size("Images per batch (with --model)."),
    "device": params.device(),
    "workers": params.workers(" With --model."),
    "compile": params.compile_flag(),
    "score_norm": params.score_norm(
        "With --model: score raw (none) or standardise each image's scores against its scores for the "
        "model's seen labels (seen). Default: the model's own setting."
    ),
}
EXTRAS = {
    "as_json": Extra(typer.Option("--json", help="Print the report as one JSON object."), bool, False),
    "plots": Extra(
        typer.Option("--plots", help="Folder for PNG charts: the PR curves and AP per label."), Optional[Path], None
    ),
}


def run(opts: EvalOptions, as_json: bool, plots: Path | None) -> int:
    """Evaluate predictions (or a model) against ground truth: mAP, miAP, P/R/F1@K, ZS and GZS.

    Examples:\n
      zstag eval --predictions tags.jsonl --truth test.jsonl --unseen unseen.txt --json\n
      zstag eval --model models/lesa --truth test.jsonl --unseen unseen.txt\n
      zstag eval -p tags.jsonl --truth test.jsonl --plots plots/
    """
    if (opts.predictions is None) == (opts.model is None):
        raise UsageError("give exactly one of --predictions FILE or --model MODEL")
    if opts.predictions is not None and opts.score_norm is not None:
        raise UsageError("--score-norm needs --model: predictions from a file are scored already")
    from zstag.eval.report import label_curves
    from zstag.jobs.evaluate import eval_matrices, render_report, report_of

    if plots is not None:
        from zstag.eval.plots import check_plots_folder

        check_plots_folder(plots)

    m = eval_matrices(opts)
    report = report_of(m, opts)
    if plots is not None:
        from zstag.eval.plots import write_plots

        curves = label_curves(m.scores, m.truth, m.labels, m.unseen)
        for path in write_plots(plots, report, curves, m.labels, m.unseen):
            console.info(f"wrote {path}")
    print(json.dumps(report) if as_json else render_report(report))
    return 3 if m.unreadable else 0


command = from_options(EvalOptions, FLAGS, run, EXTRAS)
