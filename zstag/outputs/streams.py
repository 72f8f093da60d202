"""Stream writers for `zstag tag` results: jsonl (default), csv and tsv, to stdout or a file.

A stream writer writes whole lines and flushes once per batch, so a killed run leaves at most one
partial last line (dropped by `--resume`). Torchrun's shards are joined here too.

File names that are not valid UTF-8 reach zstag as `str` with lone surrogates (`os.fsdecode`: byte
0xFF becomes U+DCFF). Output stays valid UTF-8 all the same: such a character is written as the
six characters `\\udcff`, which in jsonl is JSON's own escape (any JSON parser reads it back as
U+DCFF, and `os.fsencode` turns that into the original byte), and in csv/tsv the same text, which
`--resume` and `eval` decode again (`unescape_name`). A name that really holds the text `\\udcff`
cannot be told apart in csv/tsv; jsonl has no such limit.

A file target is written under a lock (`fcntl.flock`), so a second run writing the same file stops
with a usage error instead of interleaving rows, and an existing file is replaced only when it is
a zstag output (recognised by its first line) or `force` says so.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from zstag.core.atomic import atomic_write
from zstag.core.errors import OutputClosed, UsageError
from zstag.outputs import STREAM_FORMATS, TAG_SEPARATORS, Tags

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; outputs are then not locked
    fcntl = None  # type: ignore[assignment]

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u(d[89a-f][0-9a-f]{2})")
_FIRST_LINE_LIMIT = 1 << 24  # a top-k 0 row over a large vocabulary is long; a photo has a '\n' soon


def escape_name(text: str) -> str:
    """`text` with each lone surrogate written as `\\udcXX`: valid UTF-8, and in JSON the escape itself."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def unescape_name(text: str) -> str:
    """The inverse of `escape_name` for csv/tsv fields (JSON parsers undo the escape themselves)."""
    return _ESCAPED_SURROGATE.sub(lambda m: chr(int(m.group(1), 16)), text)


def format_row(fmt: str, image: str, tags: Tags) -> str:
    """One image's result as text for a stream format (a whole line, newline included).

    A score that is not a finite number is a ValueError: `NaN` is not JSON, and the tag job names
    such images as failures before they get here.
    """
    if not all(math.isfinite(score) for _, score in tags):
        raise ValueError(f"{image}: scores must be finite numbers")
    if fmt == "jsonl":
        # Six significant digits, not six decimals: calibrated probabilities of rare tags are small,
        # and rounding them to 0.000000 would turn their order into ties.
        row = {"image": image, "tags": [{"label": label, "score": float(f"{score:.6g}")} for label, score in tags]}
        return escape_name(json.dumps(row, ensure_ascii=False, allow_nan=False)) + "\n"
    buffer = io.StringIO()
    # "\r\n" as the terminator makes csv quote fields holding '\r' as well as '\n' (it quotes the
    # terminator's characters); the row then ends in '\n' like every other line zstag writes.
    writer = csv.writer(buffer, delimiter="," if fmt == "csv" else "\t", lineterminator="\r\n")
    bar = TAG_SEPARATORS[fmt]
    writer.writerow([escape_name(image), bar.join(label for label, _ in tags), bar.join(f"{s:.6g}" for _, s in tags)])
    return buffer.getvalue()[:-2] + "\n"


def header(fmt: str) -> str:
    return {"csv": "image,tags,scores\n", "tsv": "image\ttags\tscores\n"}.get(fmt, "")


def sniff_format(path: Path) -> str | None:
    """The stream format of the zstag output at `path` ("jsonl", "csv", "tsv"), "" for an empty
    file, None for a file that is not a zstag output (a photo, someone's notes, a folder)."""
    try:
        with path.open("rb") as f:
            first = f.readline(_FIRST_LINE_LIMIT)
    except IsADirectoryError:
        return None
    if not first:
        return ""
    for fmt in STREAM_FORMATS:
        if header(fmt) and first == header(fmt).encode():
            return fmt
    try:
        row = json.loads(first)
    except (ValueError, RecursionError):
        return None
    return "jsonl" if isinstance(row, dict) and isinstance(row.get("image"), str) and "tags" in row else None


@dataclass
class Done:
    """What an output file already holds, for --resume: its images and every label its rows use."""

    images: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)


def read_done(path: Path, fmt: str) -> Done:
    """Images and labels already in an output file, for --resume; a torn last line is cut off the file.

    Lines are split at '\\n' only: names may hold U+2028, NEL or '\\x1c', which `str.splitlines`
    would take for line breaks. A file of another format, or one that is not a zstag output, is a
    UsageError: appending to it would mix formats or damage it.
    """
    if not path.exists():
        return Done()
    found = sniff_format(path)
    if found is None:
        raise UsageError(f"{path} is not a zstag output: --resume would append rows to it")
    if found and found != fmt:
        raise UsageError(f"{path} holds {found} rows, not {fmt}: resume it with the same format, or write a new file")
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with path.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    text = data.decode("utf-8", errors="surrogateescape")
    done = Done()
    if fmt == "jsonl":
        for line in text.split("\n"):
            try:
                row = json.loads(line)
                done.images.add(row["image"])
                done.labels.update(tag["label"] for tag in row["tags"])
            except (ValueError, KeyError, TypeError):
                continue
    else:
        rows = csv.reader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t")
        next(rows, None)  # the header
        for row in rows:
            if row:
                done.images.add(unescape_name(row[0]))
                done.labels.update(
                    label for label in (row[1] if len(row) > 1 else "").split(TAG_SEPARATORS[fmt]) if label
                )
    return done


def read_done_images(path: Path, fmt: str) -> set[str]:
    """Images already in an output file (see `read_done`)."""
    return read_done(path, fmt).images


def check_target(path: Path, force: bool) -> None:
    """Refuse an output path that is a folder, or an existing file zstag did not write (unless `force`)."""
    if path.is_dir():
        raise UsageError(f"the output {path} is a folder; name a file in it")
    if path.exists() and not force and sniff_format(path) is None:
        raise UsageError(
            f"{path} exists and is not a zstag output; choose another output file (or force its replacement)"
        )


def join_shards(parts: list[Path], target: Path, fmt: str, append: bool) -> None:
    """Concatenate shard files, in order, into `target` with one header, then delete them.

    A fresh target is written through a rename; with `append` (a resumed run) the rows go after
    those the target already holds.
    """

    def copy_rows(out: IO[bytes]) -> None:
        for part in parts:
            with part.open("rb") as f:
                if header(fmt):
                    f.readline()
                shutil.copyfileobj(f, out, 1 << 20)

    if append and target.exists():
        with target.open("ab") as out:
            copy_rows(out)
            out.flush()
            os.fsync(out.fileno())
    else:

        def write(tmp: str) -> None:
            with open(tmp, "wb") as out:
                out.write(header(fmt).encode())
                copy_rows(out)

        atomic_write(target, write)
    for part in parts:
        part.unlink()


def _lock(fd: int, target: str) -> None:
    """An exclusive lock on an open file, or a UsageError: another run is writing `target`."""
    if fcntl is None:  # pragma: no cover
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(
            f"another zstag run is writing {target}; wait for it to finish or choose another output"
        ) from None


class StreamOutput:
    """A jsonl/csv/tsv destination: stdout, or a file written under a lock.

    A file's rows go to `TARGET.partial`, renamed to TARGET when the run completes: a run killed
    even with -9 leaves rows that `--resume` continues. `--resume` continues that `.partial` when
    there is one (it is newer than any TARGET: a completed run renames it away), else appends to
    TARGET itself. Both the file written and an existing TARGET are locked, so two runs can never
    write the same output.
    """

    def __init__(self, target: str, fmt: str, resume: bool, force: bool = False) -> None:
        self.fmt, self.target = fmt, target
        self.done = Done()
        self._partial: str | None = None
        self._fds: list[int] = []
        if target == "-":
            import sys

            self.file: IO[str] = sys.stdout
            self.file.write(header(fmt))
            return
        path, partial = Path(target), Path(f"{target}.partial")
        check_target(path, force)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            in_place = resume and path.exists() and not partial.exists()
            if path.exists() and not in_place:
                fd = os.open(path, os.O_RDONLY)
                _lock(fd, target)
                self._fds.append(fd)
            work = path if in_place else partial
            fd = os.open(work, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as exc:
            self._release()
            raise UsageError(f"cannot write --output {target}: {exc.strerror or exc}") from None
        _lock(fd, target)
        self._partial = None if in_place else str(partial)
        try:
            if not resume and not force and os.fstat(fd).st_size > len(header(fmt)):
                raise UsageError(
                    f"{partial} holds the rows of an interrupted run: add --resume to continue it, or --force to"
                    " start over"
                )
            if resume:
                self.done = read_done(work, fmt)
            else:
                os.ftruncate(fd, 0)
            self.file = os.fdopen(fd, "a", encoding="utf-8", newline="")
        except BaseException:
            os.close(fd)
            self._release()
            raise
        if os.fstat(fd).st_size == 0:
            self.file.write(header(fmt))

    def write(self, image: str, tags: Tags) -> None:
        try:
            self.file.write(format_row(self.fmt, image, tags))
        except BrokenPipeError:
            raise OutputClosed() from None

    def flush(self) -> None:
        try:
            self.file.flush()
        except BrokenPipeError:
            raise OutputClosed() from None
        if self.target != "-":
            os.fsync(self.file.fileno())

    def close(self, complete: bool) -> None:
        """Finish. The output gets its final name only when complete; an interrupted run keeps its
        rows as `TARGET.partial`, which `--resume` continues. The locks go last."""
        if self.target == "-":
            try:
                self.file.flush()
            except BrokenPipeError:
                pass  # the reader has gone: OutputClosed ends the run already
            return
        self.flush()
        if self._partial is not None and complete:
            os.replace(self._partial, self.target)
        self.file.close()
        self._release()

    def _release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
