"""Training and truth data: JSONL / CSV manifests and sidecar folders (GUIDE §1, "Data formats").

A manifest is UTF-8 text; everything wrong with one is a usage error naming its line: bytes that
are not UTF-8, malformed or too deeply nested JSON, CSV fields over the csv module's 128 KiB limit,
and image paths holding a NUL character (no file can have one). Image names that are not valid
UTF-8 are written as JSON `\\udcXX` escapes, as `zstag tag` writes them (zstag/outputs/streams.py).

Tags are a JSON list of strings in JSONL (`"tags": "dog"` is refused: a string there is more
likely a slip than a one-tag list) and a `|`-separated field in CSV, which every row must have.
A manifest's line problems are reported together, up to `SHOWN_PROBLEMS` lines, so that one
run shows what to fix instead of one line per attempt.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from zstag.core.errors import UsageError
from zstag.data.vocab import unique_labels

SHOWN_PROBLEMS = 10


@dataclass(frozen=True)
class Sample:
    """One image and its tags; `image` is absolute and resolved, so samples compare by file."""

    image: Path
    tags: list[str]


def _resolve(root: Path, raw: str, where: str) -> Path:
    """An image path from a manifest, relative to the manifest's folder.

    A relative path may not climb out of that folder ('../x.png'): such a manifest is more likely
    a mistake or a hostile file than intent. Absolute paths are allowed, being explicit.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise UsageError(f"{where}: 'image' must be a non-empty string")
    if "\0" in raw:
        raise UsageError(f"{where}: image path {raw!r} holds a NUL character")
    path = Path(raw)
    if path.is_absolute():
        return Path(os.path.abspath(path))
    full = Path(os.path.abspath(root / path))
    if not full.is_relative_to(root):
        raise UsageError(
            f"{where}: image path {raw!r} escapes the dataset folder {root} (use an absolute path if you mean it)"
        )
    return full


def _tags(value: object, where: str) -> list[str]:
    if isinstance(value, str):
        raise UsageError(
            f"{where}: 'tags' must be a list of strings, not the string {value!r} "
            f"(write {json.dumps(value.split('|'), ensure_ascii=False)})"
        )
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise UsageError(f"{where}: 'tags' must be a list of strings")
    return unique_labels(value, where)


class _Problems:
    """The line problems of one manifest, raised together at the end of reading."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, exc: UsageError) -> None:
        self.lines.append(str(exc))

    def raise_any(self) -> None:
        if self.lines:
            more = len(self.lines) - SHOWN_PROBLEMS
            raise UsageError(
                "\n".join(
                    self.lines[:SHOWN_PROBLEMS] + ([f"... and {more} more line(s) with problems"] if more > 0 else [])
                )
            )


def _read_text(path: Path) -> str:
    """The manifest as text, without the byte-order mark spreadsheets put first ("CSV UTF-8");
    bytes that are not UTF-8 are a usage error naming their line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _jsonl_sample(line: str, root: Path, where: str) -> Sample:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise UsageError(f"{where}: JSON nested too deeply") from None
    if not isinstance(row, dict) or "image" not in row or "tags" not in row:
        raise UsageError(f"{where}: each line must be an object with 'image' and 'tags'")
    return Sample(_resolve(root, row["image"], where), _tags(row["tags"], where))


def _read_jsonl(path: Path, root: Path) -> list[Sample]:
    samples, problems = [], _Problems()
    for n, line in enumerate(_read_text(path).split("\n"), 1):  # not splitlines: names may hold U+2028
        if line.strip():
            try:
                samples.append(_jsonl_sample(line, root, f"{path}:{n}"))
            except UsageError as exc:
                problems.add(exc)
    problems.raise_any()
    return samples


def _read_csv(path: Path, root: Path) -> list[Sample]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        header = reader.fieldnames or []
        if "image" not in header or "tags" not in header:
            raise UsageError(f"{path}: CSV manifest needs the header 'image,tags' (found {','.join(header) or 'none'})")
        extra = [h for h in header if h not in ("image", "tags")]
        if extra:
            warnings.warn(f"{path}: ignoring unknown column(s) {', '.join(extra)}", stacklevel=2)
        samples, problems = [], _Problems()
        for row in reader:
            where = f"{path}:{reader.line_num}"
            try:
                if row["tags"] is None:  # a short row: csv fills the missing columns with None
                    raise UsageError(
                        f"{where}: the row has no 'tags' column (write an empty field, 'image,', "
                        "for an image without tags)"
                    )
                tags = unique_labels(row["tags"].split("|"), where)
                samples.append(Sample(_resolve(root, row["image"] or "", where), tags))
            except UsageError as exc:
                problems.add(exc)
        problems.raise_any()
        return samples
    except csv.Error as exc:
        raise UsageError(f"{path}:{reader.reader.line_num}: malformed CSV ({exc})") from None


def _read_sidecars(folder: Path) -> list[Sample]:
    """A folder where each image x.jpg has x.txt beside it with comma-separated tags."""
    from zstag.data.images import IMAGE_EXTENSIONS

    samples = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()):
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            tags = sidecar.read_text(encoding="utf-8", errors="replace").replace("\n", ",").split(",")
            samples.append(Sample(Path(os.path.abspath(path)), unique_labels(tags, str(sidecar))))
    if not samples:
        raise UsageError(f"{folder}: no image with a .txt sidecar of tags found")
    return samples


def read_dataset(path: str | Path) -> list[Sample]:
    """Samples of a manifest (.jsonl / .csv) or a sidecar folder; images listed twice are merged."""
    path = Path(path)
    if path.is_dir():
        samples = _read_sidecars(path)
    elif not path.exists():
        raise UsageError(f"dataset not found: {path}")
    else:
        root = Path(os.path.abspath(path.parent))
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            samples = _read_jsonl(path, root)
        elif suffix == ".csv":
            samples = _read_csv(path, root)
        else:
            raise UsageError(
                f"{path}: a manifest must be .jsonl or .csv, or give a folder of images with .txt sidecars"
            )
    merged: dict[Path, list[str]] = {}
    for s in samples:
        merged[s.image] = list(dict.fromkeys(merged.get(s.image, []) + s.tags))
    if len(merged) < len(samples):
        warnings.warn(
            f"{path}: {len(samples) - len(merged)} image(s) listed more than once; their tags were merged", stacklevel=2
        )
    if not merged:
        raise UsageError(f"{path}: no images listed")
    return [Sample(image, tags) for image, tags in merged.items()]


def dataset_labels(samples: list[Sample]) -> list[str]:
    """Every tag of the samples, sorted."""
    return sorted({t for s in samples for t in s.tags})
