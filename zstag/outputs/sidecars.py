"""Sidecar files beside each image: `x.txt` with comma-separated tags, or `x.jpg.xmp` (zstag.outputs.xmp).
Each is written atomically, one small file per image.

Sidecars never destroy what zstag did not write. What happens to an existing sidecar is the mode:

- `safe` (the default): a txt sidecar is replaced only when zstag wrote it and nobody changed it
  since; any other `x.txt` (a caption, a description, hand-made training labels) is left alone and
  its image named as not tagged. An XMP sidecar is merged: its other metadata and the user's own
  keywords stay, only the keywords zstag wrote earlier are replaced.
- `overwrite`: txt sidecars are replaced whoever wrote them; XMP is merged as in `safe`.
- `append`: the new tags are added to those the sidecar already holds.
- `skip`: an existing sidecar is left alone.

zstag recognises its own txt sidecars by an extended attribute (`user.zstag.sha256`, the SHA-256 of
the text it wrote); a txt file has no room for a marker that caption readers would not take for a
tag. Where the file system keeps no extended attributes, zstag cannot recognise its txt sidecars
and `safe` leaves them all alone: use `overwrite` to refresh them.

Two images of one folder with the same stem (`a.jpg`, `a.png`) would share `a.txt`: the second is
named as not tagged rather than overwriting the first's tags. XMP names never clash (`a.jpg.xmp`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from zstag.core.atomic import atomic_write_text
from zstag.core.errors import ImageError
from zstag.outputs import TAG_SEPARATORS, Tags, sidecar_path

_MARK = "user.zstag.sha256"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode()


def _mark(path: Path, text: str) -> None:
    """Remember that zstag wrote `text` to `path` (silently nothing where xattrs are unsupported)."""
    try:
        os.setxattr(path, _MARK, _digest(text))
    except (AttributeError, OSError):
        pass


def written_by_zstag(path: Path) -> bool:
    """Whether `path` holds exactly the text zstag last wrote there."""
    try:
        mark = os.getxattr(path, _MARK)
        return mark == _digest(path.read_text(encoding="utf-8"))
    except (AttributeError, OSError, UnicodeDecodeError):
        return False


def write_txt_sidecar(image_path: Path, tags: Tags, mode: str = "safe") -> None:
    """x.txt beside x.jpg with comma-separated tags (the Stable Diffusion tooling convention).

    Raises ImageError when `safe` leaves a txt file that zstag did not write alone.
    """
    sidecar = sidecar_path(image_path, "txt")
    labels = [label for label, _ in tags]
    if sidecar.exists():
        if mode == "skip":
            return
        if mode == "safe" and not written_by_zstag(sidecar):
            raise ImageError(
                f"{sidecar} exists and zstag did not write it: left alone "
                "(the sidecar modes overwrite and append change it)"
            )
        if mode == "append":
            old = [
                t.strip()
                for t in sidecar.read_text(encoding="utf-8", errors="replace").split(TAG_SEPARATORS["txt"])
                if t.strip()
            ]
            labels = old + [label for label in labels if label not in old]
    text = f"{TAG_SEPARATORS['txt']} ".join(labels) + "\n"
    atomic_write_text(sidecar, text)
    _mark(sidecar, text)


class SidecarWriter:
    """Writes one run's sidecars, and names an image whose sidecar another image of the run took,
    would be one of the run's input images (`pic.txt` is its own txt sidecar), or cannot be written:
    that image is not tagged, the others are."""

    def __init__(self, fmt: str, mode: str, inputs: list[str] | None = None) -> None:
        self.fmt, self.mode = fmt, mode
        self._owners: dict[Path, Path] = {}
        # Only inputs named like a sidecar can be one (an image named `pic.txt`): a short list, so
        # a run over a million photos resolves no path for this check.
        suffix = ".txt" if fmt == "txt" else ".xmp"
        self._inputs = {os.path.realpath(p) for p in inputs or () if p.lower().endswith(suffix)}

    def write(self, image_path: Path, tags: Tags) -> None:
        """Write `image_path`'s sidecar; ImageError says why it was not written."""
        sidecar = sidecar_path(image_path, self.fmt)
        if self._inputs and os.path.realpath(sidecar) in self._inputs:
            raise ImageError(f"its sidecar {sidecar} is an input image: not written (rename the image)")
        owner = self._owners.setdefault(sidecar, image_path)
        if owner != image_path:
            raise ImageError(f"{sidecar} already holds the tags of {owner} (same name, other extension)")
        try:
            if self.fmt == "txt":
                write_txt_sidecar(image_path, tags, self.mode)
            else:
                from zstag.outputs.xmp import write_xmp_sidecar

                write_xmp_sidecar(image_path, tags, self.mode)
        except OSError as exc:
            raise ImageError(f"cannot write {sidecar}: {exc.strerror or exc}") from None
