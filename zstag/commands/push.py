"""`zstag push`: publish a trained model on the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from zstag.commands.build import plain
from zstag.core import console

NAME = "push"


@plain
def command(
    model_dir: Annotated[Path, typer.Argument(help="Model directory to publish (config.json + model.safetensors).")],
    url: Annotated[str, typer.Argument(help="Destination: hf://OWNER/REPO (created when missing).")],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repository as private (an existing one keeps its visibility).")
    ] = False,
    revision: Annotated[
        Optional[str], typer.Option("--revision", help="Branch to commit to (created from main when missing).")
    ] = None,
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="Commit message.")] = None,
) -> None:
    """Publish a trained model on the Hugging Face Hub, in the layout `zstag fetch hf://...` pulls.

    Uploads config.json, model.safetensors and a generated model card (README.md), nothing else.
    Needs a token with write access: `hf auth login` or HF_TOKEN. Prints the reference to fetch,
    the commit and its URL, tab-separated.

    Examples:\n
      zstag push models/lesa hf://me/zstag-lesa-photos\n
      zstag push models/lesa hf://me/zstag-lesa-photos --revision v2 --private -m "more epochs"\n
      zstag fetch hf://me/zstag-lesa-photos && zstag tag photos/ --labels vocab.txt --model hf://me/zstag-lesa-photos
    """
    from zstag.store.publish import push

    result = push(model_dir, url, private=private, revision=revision, message=message)
    for warning in result.warnings:
        console.warn(warning)
    print(f"{result.reference}\t{result.commit}\t{result.url}")
