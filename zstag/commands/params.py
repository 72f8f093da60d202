"""Options several commands share, spelt the same everywhere, with their shell completion."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer


def complete_devices(incomplete: str) -> list[str]:
    return [d for d in ("auto", "cpu", "cuda", "cuda:0", "cuda:1") if d.startswith(incomplete)]


def complete_methods(incomplete: str) -> list[str]:
    from zstag.methods import METHODS

    return [m for m in METHODS if m.startswith(incomplete)]


def complete_backbones(incomplete: str) -> list[str]:
    from zstag.backbones import BACKBONES

    return [b for b in BACKBONES if b.startswith(incomplete)]


def complete_models(incomplete: str) -> Iterator[str]:
    """Bundled and fetched model names, and model directories below the current folder."""
    from zstag.store.catalog import list_models

    rows, _ = list_models([], [])
    yield from (row.name for row in rows if row.name.startswith(incomplete) and row.error is None)


def device() -> Any:
    return typer.Option("--device", help="auto (CUDA when present), cpu, or cuda[:i].", autocompletion=complete_devices)


def model(
    help: str = "Model directory; 'default' (bundled, trained on clip art: weak on photos); a ready-made "
    "'clip-vit-b32' or 'imagenet' after `zstag fetch clip-vit-b32` / `zstag fetch resnet101` (photos, no "
    "training); or a fetched hf:// name.",
) -> Any:
    return typer.Option("--model", help=help, autocompletion=complete_models)


def workers(note: str = "") -> Any:
    return typer.Option(
        "--workers",
        min=0,
        help=(
            "Image decoding processes. Default: on a GPU one per core but one (at most 16); on a CPU none: threads of "
            "this process decode instead, which measured faster there." + note
        ),
    )


def compile_flag() -> Any:
    return typer.Option(
        "--compile/--no-compile",
        help=(
            "Compile the model with torch.compile: slower to start, faster per image. Default: on a GPU for runs of "
            "200,000 images or more, where it pays for itself; never on a CPU."
        ),
        show_default=False,
    )


def batch_size(help: str = "Images per batch.") -> Any:
    return typer.Option("--batch-size", min=1, help=help)


def score_norm(help: str) -> Any:
    """`--score-norm none|seen`: raw scores, or each image's scores standardised against its
    scores for the model's seen labels (`Method.standardised`)."""
    from zstag.commands.build import choice
    from zstag.store.config import SCORE_NORMS

    return typer.Option("--score-norm", help=help, **choice(*SCORE_NORMS))
