"""`zstag models`: the models usable as --model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from zstag.commands.build import plain
from zstag.core import console

NAME = "models"


@plain
def command(
    paths: Annotated[
        Optional[list[Path]], typer.Argument(help="Model directories, or folders to search for them (e.g. runs/).")
    ] = None,
    search: Annotated[
        Optional[list[Path]],
        typer.Option("--path", help="Also list the model directories under this folder (repeatable)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per model instead of tab-separated lines.")
    ] = False,
    cache_dir: Annotated[
        Optional[Path],
        typer.Option("--cache-dir", help="Fetch cache to list (default: $ZSTAG_CACHE or the user cache)."),
    ] = None,
) -> None:
    """List the models usable as --model: bundled, fetched and local, from their config.json only.

    On a terminal: a table. Otherwise (pipes, files): a header line and one tab-separated line
    per model, or JSON lines with --json. Columns: name (what --model takes), where, method,
    backbone, semantics, seen, unseen, image_size, size (bytes), best_val_mAP, epochs, path, error
    (set for a broken directory). Exit code 3 when a directory named on the command line is broken.

    Examples:\n
      zstag models\n
      zstag models runs/ --json | jq -r 'select(.error == null) | .name'\n
      zstag models --path ~/models | sort -t$'\\t' -k10 -g
    """
    from zstag.store import catalog

    rows, broken = catalog.list_models(paths or [], search or [], cache_dir=cache_dir)
    if as_json:
        for row in rows:
            print(json.dumps(catalog.as_dict(row)))
    elif sys.stdout.isatty():
        from rich.console import Console

        Console(highlight=False).print(catalog.table(rows))
    else:
        for line in catalog.tsv_lines(rows):
            print(line)
    for row in broken:
        console.warn(str(row.error))  # the message names the directory
    raise typer.Exit(3 if broken else 0)
