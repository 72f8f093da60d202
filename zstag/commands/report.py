"""`zstag report`: a static HTML page for reviewing predictions, with thumbnails beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from zstag.commands.build import plain

NAME = "report"


def _report(
    predictions: Annotated[Path, typer.Argument(metavar="PRED.jsonl", help="Predictions from `zstag tag` (jsonl).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The HTML file to write; thumbnails go to NAME_files/ beside it.")
    ] = Path("report.html"),
    truth: Annotated[
        Optional[Path],
        typer.Option("--truth", help="Ground truth: marks tags correct / wrong / missed, adds AP and PR curves."),
    ] = None,
    labels: Annotated[
        Optional[Path], typer.Option("--labels", help="Only these labels (a vocabulary file), in its order.")
    ] = None,
    unseen: Annotated[
        Optional[Path], typer.Option("--unseen", help="Unseen labels: marked, and the ZS curve with --truth.")
    ] = None,
    thumbnails: Annotated[
        bool,
        typer.Option(
            "--thumbnails/--no-thumbnails",
            help="Make small WebP copies (else the page shows the originals by relative path).",
        ),
    ] = True,
    workers: Annotated[
        Optional[int],
        typer.Option("--workers", min=1, help="Threads making thumbnails (default: one per core, at most 8)."),
    ] = None,
) -> None:
    """Write an offline HTML page to review predictions: a grid of images with their tags, a label filter and a
    score slider.

    Examples:\n
      zstag tag photos/ --labels vocab.txt -o p.jsonl && zstag report p.jsonl -o report.html\n
      zstag report p.jsonl --truth test.jsonl --unseen unseen.txt -o report.html
    """
    from zstag.core import console
    from zstag.report.page import ReportOptions, build_report

    unreadable = build_report(ReportOptions(predictions, out, truth, labels, unseen, thumbnails, workers))
    console.info(f"wrote {out}")
    if unreadable:
        raise typer.Exit(3)


command = plain(_report)
