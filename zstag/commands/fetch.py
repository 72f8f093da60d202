"""`zstag fetch`: pretrained weights into the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from zstag.commands.build import plain
from zstag.core.errors import UsageError

NAME = "fetch"


def _complete_names(incomplete: str) -> list[str]:
    from zstag.store.hub import load_registry

    return [name for name in load_registry() if name.startswith(incomplete)]


@plain
def command(
    names: Annotated[
        Optional[list[str]],
        typer.Argument(
            help=(
                "Registry names (vgg19, resnet50, resnet101, clip-vit-b32, clip-vit-l14, minilm, glove-300; "
                "--list shows them all) or hf://OWNER/REPO[@REV]."
            ),
            autocompletion=_complete_names,
        ),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the registry and what is cached.")] = False,
    cache_dir: Annotated[
        Optional[Path], typer.Option("--cache-dir", help="Cache folder (default: $ZSTAG_CACHE or the user cache).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even when cached.")] = False,
) -> None:
    """Download pretrained weights into the cache (verified by sha256 where known).

    Examples:\n
      zstag fetch --list\n
      zstag fetch vgg19 minilm\n
      zstag fetch hf://someone/zstag-lesa-model@main
    """
    from zstag.store import hub

    if list_:
        print("name\tkind\tcached\trepo\tdescription")  # a header line, as `zstag models` prints one
        for entry in hub.list_registry(cache_dir=cache_dir):
            mark = {"missing": "-"}.get(
                entry["state"], entry["state"]
            )  # verified, unverified (no sha256 pinned), corrupt
            fields = (entry["name"], entry.get("kind", ""), mark, entry.get("repo", ""), entry.get("description", ""))
            print("\t".join(fields))
        return
    if not names:
        raise UsageError("name what to fetch (see `zstag fetch --list`)")
    for name in names:
        print(f"{name}\t{hub.fetch(name, cache_dir=cache_dir, force=force)}")
