"""`zstag bench`: what tagging costs on this machine, measured in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from zstag.bench.options import SECTIONS, BenchOptions
from zstag.commands import params
from zstag.commands.build import Flag, from_options, split_list
from zstag.core.errors import UsageError

NAME = "bench"


def _sections(text: str | None) -> list[str] | None:
    if text is None:
        return None
    chosen = split_list(text)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise typer.BadParameter(
            f"unknown section(s) {', '.join(unknown) or repr(text)}: use {', '.join(SECTIONS)}", param_hint="--only"
        )
    return chosen


FLAGS = {
    "device": params.device(),
    "model": params.model(),
    "backbone": typer.Option(
        "--backbone",
        help="Measure the model's method on this backbone instead (vgg19, resnet101, ...).",
        autocompletion=params.complete_backbones,
    ),
    "images": typer.Option(
        "--images", min=1, help="Synthetic photos to tag and decode (default 256 on CPU, 16384 on GPU)."
    ),
    "image_size": typer.Option("--image-size", min=16, max=4096, help="Square input size (default: the model's)."),
    "batch_size": params.batch_size("Images per batch (default 32 on CPU, 256 on GPU)."),
    "workers": params.workers(" For end-to-end runs."),
    "compile": typer.Option(
        "--compile/--no-compile",
        help="forward: also measure the compiled model (default: on a GPU); end-to-end: as `zstag tag --compile`.",
        show_default=False,
    ),
    "repeats": typer.Option(
        "--repeats", min=1, help="Timed rounds per measurement, best counts (default 3; 1 with --quick)."
    ),
    "quick": typer.Option("--quick", help="Small sizes: a check that everything runs, not numbers to quote."),
    "only": Flag(
        typer.Option("--only", help="Comma-separated sections: " + ", ".join(SECTIONS) + "."), Optional[str], _sections
    ),
    "json_path": typer.Option("--json", help="Write the measurements as JSON to this file ('-' for stdout)."),
}


def run(opts: BenchOptions) -> None:
    """Measure tagging speed on this machine: end to end against a plain loop, model, vocabulary size, methods,
    decoding, and where a tagging run's time goes (pipeline).

    Tables go to stderr; numbers are measured, never looked up.

    Examples:\n
      zstag bench --device cpu --json bench.json\n
      zstag bench --device cuda --backbone vgg19 --image-size 224\n
      zstag bench --quick --only forward,vocab-scale
      zstag bench --device cuda --only pipeline --images 4096
    """
    if opts.json_path is not None and str(opts.json_path) != "-":
        check_report_file(opts.json_path)
    from zstag.bench.run import run as run_bench

    report = run_bench(opts)
    if opts.json_path is not None and str(opts.json_path) == "-":
        print(json.dumps(report, indent=2))


def check_report_file(path: Path) -> None:
    """Refuse, before measuring, a --json file that could not be written or that is someone else's:
    only a report an earlier `zstag bench` wrote (an object with "zstag" and "sections") is replaced."""
    if path.is_dir():
        raise UsageError(f"--json {path} is a folder; name a file")
    if not path.parent.is_dir():
        raise UsageError(f"the folder of --json {path} does not exist")
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            old = None
        if not (isinstance(old, dict) and {"zstag", "sections"} <= old.keys()):
            raise UsageError(f"--json {path} exists and is not a zstag bench report; choose another file")


command = from_options(BenchOptions, FLAGS, run)
