"""Small WebP copies of the tagged images, so the review page loads fast and moves with its folder.

Each image goes through `zstag.data.images.decode_image` (the decoder that survives hostile files
and applies EXIF orientation), reduced while decoding, in a pool of threads (Pillow releases the
GIL while it decodes and encodes). A thumbnail's name hashes the source's real path, size,
modification time and the thumbnail size, so a rerun reuses every thumbnail whose image has not
changed and makes a new one for an image that has; thumbnails no row asks for any more are removed.
Only files named like ours are ever removed, in a folder marked as ours.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from PIL import Image

from zstag.core import console
from zstag.core.atomic import atomic_write
from zstag.core.errors import ImageError, UsageError
from zstag.data.images import decode_image

SIZE = 160
MARKER = ".zstag-report"  # a folder holding this file was made by `zstag report`
_NAME = re.compile(r"^[0-9a-f]{20}\.webp$")


def _thumb_name(path: str) -> str:
    """The name a thumbnail of `path` has while `path` stays as it is; raises OSError if it is missing."""
    info = os.stat(path)
    key = f"{os.path.realpath(path)}\0{info.st_size}\0{info.st_mtime_ns}\0{SIZE}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".webp"


def claim_folder(folder: Path) -> None:
    """Create `folder` for thumbnails, or accept it if an earlier report made it; refuse anything else."""
    if folder.exists() and not (folder / MARKER).is_file():
        if not folder.is_dir() or any(folder.iterdir()):
            raise UsageError(f"{folder} exists and was not made by zstag report; move it or choose another -o")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("Thumbnails of a zstag report; rewritten by each rerun.\n", encoding="utf-8")


def _make(source: str, target: Path) -> None:
    picture = decode_image(source, SIZE)
    picture.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
    atomic_write(target, lambda tmp: picture.save(tmp, format="WEBP", quality=80, method=4))


def make_thumbnails(sources: Sequence[str], folder: Path, workers: int | None = None) -> list[str | None]:
    """The thumbnail's file name inside `folder` for each source, or None where it cannot be read
    (each such image named in a warning). Up-to-date thumbnails are reused, stale ones removed."""
    claim_folder(folder)
    names: list[str | None] = [None] * len(sources)
    todo: dict[int, Path] = {}
    for i, source in enumerate(sources):
        try:
            name = names[i] = _thumb_name(source)
        except OSError as err:
            console.warn(f"cannot read {source}: {err.strerror or err}")
            continue
        if not (folder / name).is_file():
            todo[i] = folder / name
    reused = len(sources) - len(todo) - names.count(None)
    failed = 0
    with (
        ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool,
        console.progress("thumbnails", len(todo)) as bar,
    ):
        futures = {pool.submit(_make, sources[i], target): i for i, target in todo.items()}
        for future in as_completed(futures):
            i = futures[future]
            try:
                future.result()
            except ImageError as err:
                console.warn(f"cannot read {sources[i]}: {err}")
                names[i] = None
                failed += 1
            bar.update(1)
    wanted = set(names)
    for old in folder.iterdir():
        if _NAME.match(old.name) and old.name not in wanted:
            old.unlink()
    console.info(f"thumbnails: {len(todo) - failed} made, {reused} reused, in {folder}")
    return names
