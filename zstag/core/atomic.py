"""Whole files or nothing: every file zstag writes for keeps goes through a rename.

A temporary file in the target's folder (so the rename stays on one file system) is written,
given the permissions a plain `open` would give, and renamed over the target; a run killed at
any moment leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from zstag.core.errors import UsageError


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call `write(tmp_path)` and rename the result to `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; models and caches are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def make_output_folder(folder: Path, option: str) -> None:
    """Create `folder` for an output option (`--out`, `--plots`), or raise one UsageError line
    naming the option when it cannot be a folder: a file, a link to nothing, no permission."""
    if folder.is_symlink() and not folder.exists():
        raise UsageError(f"{option} {folder} is a link to nothing; choose another folder")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {folder}: cannot make the folder ({exc.strerror or exc})") from None
