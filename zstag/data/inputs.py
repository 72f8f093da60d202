"""Turn `zstag tag INPUT...` into a deterministic stream of (display path, Path) pairs.

The display path is what the user wrote, joined: `photos/` gives `photos/a.jpg`, and that is the
string the prediction rows carry (GUIDE §1), so it must be stable and unsurprising. Rules:

- A named file is always taken, whatever its extension: the user chose it.
- A path named on the command line that does not exist (nor matches as a glob) is a usage error
  (exit code 2) naming it: a typo must not read as "tagged 0 images; 1 unreadable". A named path
  that exists but cannot be read (a FIFO, a file without permission) is yielded, and the engine
  names it (exit code 3), as are files found inside folders or read from stdin.
- A directory is walked in name order, depth first, recursively unless `recursive=False`. Only
  files with an image extension (`IMAGE_EXTENSIONS`, or `extensions`) are taken. Hidden entries
  (names starting with ".") are skipped: `.thumbnails`, `.git` and macOS `._IMG.jpg` resource
  forks hold no user pictures (the forks even carry image extensions). Symlinked sub-directories
  are not followed, which also rules out loops; symlinked files are taken. A link that cannot be
  followed (a loop, `a.jpg -> b.jpg -> a.jpg`) is taken like a file, and `decode_image` names it
  ("symlink loop"): one bad link must not abort the walk. A sub-directory that cannot be listed is
  yielded, so the engine reports it rather than silently skipping its files.
- A path that does not exist but holds `*`, `?` or `[` is a glob pattern (`**` spans
  directories). Its matches are treated as if the shell had expanded it: files are taken
  whatever their extension, directories are walked. A pattern that matches nothing is a usage
  error naming it, as in a shell with `failglob`.
- `-` reads one path per line from standard input (blank lines skipped, a trailing CR dropped).
  Those paths are literal, never globbed (file names may hold `*` or `[`); directories are walked.
  A missing one, or one holding a NUL character, is an unreadable input (exit code 3), not an
  abort: the list may come from `find` over a changing tree.
- Each file is yielded once, at its first mention: `photos 'photos/**/*.jpg'` must not tag an
  image twice, which would also give eval two rows for one picture.
- Non-UTF-8 names never crash: paths stay `str` with surrogate escapes (`os.fsdecode`), which
  `open` and `os.fsencode` map back to the original bytes. Writers should encode them with
  `errors="surrogateescape"` (or escape them, as JSON does).
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from zstag.core.errors import UsageError
from zstag.data.images import IMAGE_EXTENSIONS

_GLOB_CHARACTERS = frozenset("*?[")


def iter_inputs(
    inputs: list[str],
    recursive: bool = True,
    extensions: Iterable[str] | None = None,
    stdin: IO[str] | None = None,
) -> Iterator[tuple[str, Path]]:
    """Yield (display path, Path) for every image named, found or matched by `inputs`.

    `extensions` (".jpg" or "jpg", any case) filters the files found in directories; it defaults
    to `IMAGE_EXTENSIONS`. `stdin` defaults to `sys.stdin` as it is when iteration starts (test
    runners and `CliRunner` swap it after import, so it is not bound at definition time).
    """
    wanted = _normalise_extensions(IMAGE_EXTENSIONS if extensions is None else extensions)
    seen: set[str] = set()
    for display in _expand_all(inputs, recursive, wanted, stdin):
        key = os.path.normpath(os.path.abspath(display))
        if key not in seen:
            seen.add(key)
            yield display, Path(display)


def _expand_all(inputs: list[str], recursive: bool, wanted: frozenset[str], stdin: IO[str] | None) -> Iterator[str]:
    """Every input expanded in command-line order (duplicates are removed by the caller)."""
    for raw in inputs:
        if raw == "-":
            for line in _stdin_lines(sys.stdin if stdin is None else stdin):
                yield from _expand_path(line, recursive, wanted)
        elif os.path.lexists(raw):
            yield from _expand_path(raw, recursive, wanted)
        elif _GLOB_CHARACTERS.intersection(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                raise UsageError(f"no file matches {raw!r}")
            for match in matches:
                yield from _expand_path(match, recursive, wanted)
        else:
            raise UsageError(f"no such file or folder: {raw!r}")


def _expand_path(path: str, recursive: bool, wanted: frozenset[str]) -> Iterator[str]:
    """A directory's images, or the path itself (a file, or something decode_image will name)."""
    if os.path.isdir(path):
        yield from _walk(path, recursive, wanted)
    else:
        yield path


def _walk(root: str, recursive: bool, wanted: frozenset[str]) -> Iterator[str]:
    """Depth-first, each directory's entries in name order, with an explicit stack.

    An explicit stack, not recursion: a deep tree must not hit Python's recursion limit.
    """
    listing = _listing(root)
    if listing is None:
        yield root
        return
    stack = [iter(listing)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.name.startswith("."):
            continue
        elif _is_dir(entry, follow_symlinks=False):
            if recursive:
                sub = _listing(entry.path)
                if sub is None:
                    yield entry.path
                else:
                    stack.append(iter(sub))
        elif _is_dir(entry, follow_symlinks=True):
            continue  # a symlink to a directory: not followed
        elif os.path.splitext(entry.name)[1].lower() in wanted:
            yield entry.path


def _is_dir(entry: os.DirEntry[str], follow_symlinks: bool) -> bool:
    """`entry.is_dir`, False for a link that cannot be followed (ELOOP and the like): the link is
    then taken as a file, and reading it names the problem."""
    try:
        return entry.is_dir(follow_symlinks=follow_symlinks)
    except OSError:
        return False


def _listing(directory: str) -> list[os.DirEntry[str]] | None:
    """The directory's entries sorted by name, or None when it cannot be listed."""
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError:
        return None


def _stdin_lines(stream: IO[str]) -> Iterator[str]:
    """Non-blank lines without their line ending; raw bytes when available, so that names
    that are not valid UTF-8 come through as the file system's own bytes."""
    binary = getattr(stream, "buffer", None)
    lines = (os.fsdecode(line) for line in binary) if binary is not None else stream
    for line in lines:
        path = line.rstrip("\r\n")
        if path.strip():
            yield path


def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    """'JPG', 'jpg' and '.jpg' all mean '.jpg'."""
    return frozenset("." + ext.lower().lstrip(".") for ext in extensions)
