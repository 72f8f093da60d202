"""`zstag explain`: a picture per image of where the model looked for its top tags."""

from __future__ import annotations

import typer

from zstag.commands import params
from zstag.commands.build import from_options, hint_terminal_stdin
from zstag.jobs.options import ExplainOptions

NAME = "explain"

FLAGS = {
    "inputs": typer.Argument(metavar="IMAGE", help="Image files, folders, quoted globs, or '-' for paths on stdin."),
    "labels": typer.Option("--labels", "-l", help="Vocabulary file."),
    "out": typer.Option("--out", "-o", help="Folder for the PNGs: one per image, IMAGE.EXT.explain.png."),
    "model": params.model(),
    "top_k": typer.Option("--top-k", "-k", min=1, help="Tags to explain per image."),
    "device": params.device(),
}


def run(opts: ExplainOptions) -> int:
    """Draw where the model looked for each image's top tags (attention maps, part boxes, or occlusion maps).

    Examples:\n
      zstag explain photo.jpg --labels vocab.txt --out explained/\n
      zstag explain ./photos --labels vocab.txt --model models/sgma --top-k 5 -o explained/
    """
    hint_terminal_stdin(opts.inputs)
    from zstag.jobs.explain import explain

    return explain(opts)


command = from_options(ExplainOptions, FLAGS, run)
