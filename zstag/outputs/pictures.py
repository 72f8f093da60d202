"""PNG pictures zstag writes (`explain`'s cards, `eval --plots`' charts) carry a text chunk naming
the command, so a rerun replaces its own pictures and refuses to replace anyone else's."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, PngImagePlugin

from zstag.core.atomic import atomic_write

KEY = "Software"


def written_by(path: Path, software: str) -> bool:
    """Whether `path` is a PNG carrying `software` in its text chunk (unreadable: no)."""
    try:
        with Image.open(path) as existing:
            return existing.format == "PNG" and existing.info.get(KEY) == software
    except Exception:  # unreadable or not an image: not ours
        return False


def save_marked(image: Image.Image, path: Path, software: str) -> None:
    """Write `image` as a PNG marked with `software`, whole or not at all."""
    info = PngImagePlugin.PngInfo()
    info.add_text(KEY, software)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
