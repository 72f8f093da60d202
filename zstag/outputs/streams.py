"""Stream writers for `zstag tag` results: jsonl (default), csv and tsv, to stdout or a file.

A stream writer writes whole lines and flushes once per batch, so a killed run leaves at most one
partial last line (dropped by `--resume`). Torchrun's shards are joined here too.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import IO

from zstag.core.atomic import atomic_write
from zstag.outputs import Tags


def format_row(fmt: str, image: str, tags: Tags) -> str:
    """One image's result as text for a stream format (a whole line, newline included)."""
    if fmt == "jsonl":
        # Six significant digits, not six decimals: calibrated probabilities of rare tags are small,
        # and rounding them to 0.000000 would turn their order into ties.
        row = {"image": image, "tags": [{"label": label, "score": float(f"{score:.6g}")} for label, score in tags]}
        return json.dumps(row, ensure_ascii=False) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
    writer.writerow([image, "|".join(label for label, _ in tags), "|".join(f"{s:.6g}" for _, s in tags)])
    return buffer.getvalue()


def header(fmt: str) -> str:
    return {"csv": "image,tags,scores\n", "tsv": "image\ttags\tscores\n"}.get(fmt, "")


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


def read_done_images(path: Path, fmt: str) -> set[str]:
    """Images already in an output file, for --resume; a torn last line is cut off the file."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with path.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    done = set()
    lines = data.decode("utf-8", errors="surrogateescape").splitlines()
    if fmt == "jsonl":
        for line in lines:
            try:
                done.add(json.loads(line)["image"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    else:
        delimiter = "," if fmt == "csv" else "\t"
        for row in csv.reader(lines[1:], delimiter=delimiter):
            if row:
                done.add(row[0])
    return done


class StreamOutput:
    """A jsonl/csv/tsv destination: stdout, a new file (via a temporary name), or a resumed file."""

    def __init__(self, target: str, fmt: str, resume: bool) -> None:
        self.fmt, self.target = fmt, target
        self.done: set[str] = set()
        self._tmp: str | None = None
        if target == "-":
            import sys

            self.file: IO[str] = sys.stdout
            self.file.write(header(fmt))
            return
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(f"{target}.partial")
        if resume and not path.exists() and partial.exists():
            os.replace(partial, path)  # continue what an interrupted plain run kept
        if resume and path.exists():
            self.done = read_done_images(path, fmt)
            self.file = path.open("a", encoding="utf-8", newline="")
            if path.stat().st_size == 0:
                self.file.write(header(fmt))
        elif resume:
            self.file = path.open("w", encoding="utf-8", newline="")
            self.file.write(header(fmt))
        else:
            # A fixed name, so that even a run killed with -9 leaves rows that --resume finds.
            self._tmp = str(partial)
            self.file = partial.open("w", encoding="utf-8", newline="")
            self.file.write(header(fmt))

    def write(self, image: str, tags: Tags) -> None:
        self.file.write(format_row(self.fmt, image, tags))

    def flush(self) -> None:
        self.file.flush()
        if self.target != "-":
            os.fsync(self.file.fileno())

    def close(self, complete: bool) -> None:
        """Finish. A plain run's output gets its final name only when complete; an interrupted one
        keeps its rows as `TARGET.partial`, which `--resume` continues."""
        self.flush()
        if self.target == "-":
            return
        self.file.close()
        if self._tmp is not None:
            if complete:
                os.replace(self._tmp, self.target)
