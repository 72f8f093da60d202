"""Sidecar files beside each image: `x.txt` with comma-separated tags, or `x.xmp` (zstag.outputs.xmp).
Each is written atomically, one small file per image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from zstag.core.atomic import atomic_write_text
from zstag.outputs import Tags


def write_txt_sidecar(image_path: Path, tags: Tags, mode: str = "overwrite") -> None:
    """x.txt beside x.jpg with comma-separated tags (the Stable Diffusion tooling convention)."""
    sidecar = image_path.with_suffix(".txt")
    labels = [label for label, _ in tags]
    if sidecar.exists():
        if mode == "skip":
            return
        if mode == "append":
            old = [t.strip() for t in sidecar.read_text(encoding="utf-8", errors="replace").split(",") if t.strip()]
            labels = old + [label for label in labels if label not in old]
    atomic_write_text(sidecar, ", ".join(labels) + "\n")


def sidecar_writer(fmt: str, mode: str) -> Callable[[Path, Tags], None]:
    if fmt == "txt":
        return lambda path, tags: write_txt_sidecar(path, tags, mode)
    from zstag.outputs.xmp import write_xmp_sidecar

    return lambda path, tags: write_xmp_sidecar(path, tags, mode)
