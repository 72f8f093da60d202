"""`zstag tag`: score images against a vocabulary and write the chosen tags."""

from __future__ import annotations

from typing import Optional

import typer

from zstag.commands import params
from zstag.commands.build import Flag, choice, from_options, hint_terminal_stdin, split_list
from zstag.core.errors import UsageError
from zstag.jobs.options import TagOptions
from zstag.outputs import FORMATS, SIDECAR_MODES, STREAM_FORMATS

NAME = "tag"


def _extensions(text: str | None) -> list[str] | None:
    if text is None:
        return None
    exts = [e.lower() if e.startswith(".") else "." + e.lower() for e in split_list(text)]
    if not exts:
        raise typer.BadParameter("expects comma-separated extensions, e.g. jpg,png", param_hint="--extensions")
    return exts


FLAGS = {
    "inputs": typer.Argument(metavar="IMAGE", help="Image files, folders, quoted globs, or '-' for paths on stdin."),
    "labels": typer.Option("--labels", "-l", help="Vocabulary file: one label per line, any labels you like."),
    "model": params.model(),
    "top_k": typer.Option("--top-k", "-k", min=0, help="Tags per image (0 = every label)."),
    "threshold": typer.Option(
        "--threshold",
        help="Keep only tags scoring at least this: a probability in [0, 1], or any raw score with --raw-scores.",
    ),
    "thresholds": typer.Option(
        "--thresholds", help="Per-label thresholds: 'label<TAB>threshold' per line (others use --threshold)."
    ),
    "raw_scores": typer.Option(
        "--raw-scores",
        help="Write the scores before calibration instead of probabilities (standardised per image if the "
        "model's config says score_norm: seen).",
    ),
    "fmt": typer.Option(
        "--format", "-f", help="jsonl, csv, tsv, txt (x.txt sidecars) or xmp (x.jpg.xmp sidecars).", **choice(*FORMATS)
    ),
    "output": typer.Option("--output", "-o", help="Output file, or '-' for stdout."),
    "recursive": typer.Option("--recursive/--no-recursive", help="Descend into sub-folders."),
    "batch_size": params.batch_size(),
    "device": params.device(),
    "workers": params.workers(),
    "compile": params.compile_flag(),
    "resume": typer.Option("--resume", help="Continue an interrupted run into the same --output."),
    "extensions": Flag(
        typer.Option("--extensions", help="Comma-separated extensions that count as images in folders."),
        Optional[str],
        _extensions,
    ),
    "errors": typer.Option("--errors", help="Append unreadable inputs to this file as JSON lines."),
    "sidecar_mode": typer.Option(
        "--sidecar-mode",
        help="For txt/xmp, what an existing sidecar gets. safe: zstag's own "
        "are replaced (XMP: merged, keeping your metadata), any other x.txt is left alone and "
        "its image named; overwrite: replace any x.txt; append: add the new tags; skip: leave "
        "every existing sidecar alone.",
        **choice(*SIDECAR_MODES),
    ),
    "force": typer.Option(
        "--force",
        help=(
            "Replace an existing --output file even if it is not a zstag output, or start over where an"
            " interrupted run left OUTPUT.partial."
        ),
    ),
    "shard": typer.Option(
        "--shard",
        help="Tag only block I of N of the inputs (0 <= I < N), e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT.",
    ),
}


def run(opts: TagOptions) -> int:
    """Tag images with the labels of a vocabulary (any labels, seen in training or not).

    The default model is small and trained on a CPU on about 3,000 clip-art drawings and icons
    (sixteen LESA heads on a small ResNet; on OpenClipart's test split, mAP 10.5 for labels it
    never trained on, 36.0 over all labels): it works offline everywhere, but on photos its tags are
    rough. For photos, fetch a ready-made model (zstag fetch clip-vit-b32, then --model
    clip-vit-b32) or train on your own tagged images (zstag train --backbone resnet101 or
    clip-vit-b32).

    Examples:\n
      zstag tag ./photos --labels vocab.txt > tags.jsonl\n
      find . -name '*.jpg' | zstag tag - --labels vocab.txt --top-k 5 --format csv -o tags.csv\n
      zstag tag ./photos --labels vocab.txt --model models/lesa --format xmp\n
      zstag tag ./photos --labels vocab.txt --top-k 0 --threshold 0.5 --thresholds strict.tsv\n
      zstag tag /data --labels vocab.txt --shard 3/16 -o tags.3.jsonl   (one task of a job array)\n
      torchrun --nproc-per-node 8 -m zstag tag /data --labels vocab.txt -o tags.jsonl
    """
    if opts.threshold is not None and not opts.raw_scores and not 0 <= opts.threshold <= 1:
        raise typer.BadParameter(
            f"{opts.threshold} is not a probability in [0, 1] (add --raw-scores to threshold the method's raw scores)",
            param_hint="'--threshold'",
        )
    if opts.output != "-" and opts.fmt not in STREAM_FORMATS:
        raise UsageError(
            f"--output does not apply to --format {opts.fmt}: each image gets its own sidecar file beside it"
        )
    if opts.resume and opts.output == "-" and opts.fmt in STREAM_FORMATS:
        raise UsageError("--resume needs --output FILE (it reads what the file already holds)")
    hint_terminal_stdin(opts.inputs)
    from zstag.jobs.tag import tag

    return tag(opts)


command = from_options(TagOptions, FLAGS, run)
