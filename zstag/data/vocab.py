"""Vocabulary files: UTF-8 text, one label per line; blank lines and `#` comments ignored.

A comment is a line whose first non-blank character is `#`, or the rest of a line from a `#` that
follows whitespace: `boat  # the sea kind` is the label "boat". A `#` inside a word stays part of
the label ("C#", "no.#5"). Labels that differ only in case ("Horse", "horse") are kept apart, with a
warning, since both may be meant. A label holding a control character is a usage error naming its
line (no tagger was trained on one, and XMP cannot hold most of them). Files over `MAX_BYTES` are
refused before they are read whole: `--labels /dev/zero` must not exhaust memory.
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from pathlib import Path

from zstag.core.errors import UsageError

MAX_BYTES = 64 << 20  # a million labels of 60 bytes; far beyond any vocabulary a model can score
_INLINE_COMMENT = re.compile(r"\s#.*")


def normalise_label(label: str) -> str:
    """The canonical form of a label: NFC, surrounding and repeated whitespace collapsed.

    Case is kept: "Apple" the company and "apple" the fruit may both be wanted.
    """
    return " ".join(unicodedata.normalize("NFC", label).split())


def unique_labels(labels: list[str], source: str) -> list[str]:
    """`labels` normalised, in first-seen order, with duplicates merged (and a warning naming them)."""
    seen: dict[str, None] = {}
    duplicates = []
    for raw in labels:
        label = normalise_label(raw)
        if not label:
            continue
        if label in seen:
            duplicates.append(label)
        seen[label] = None
    if duplicates:
        shown = ", ".join(repr(d) for d in duplicates[:5]) + (" ..." if len(duplicates) > 5 else "")
        warnings.warn(f"{source}: {len(duplicates)} duplicate label(s) merged: {shown}", stacklevel=2)
    return list(seen)


def _read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, stripped line) of a UTF-8 text file, without blank lines and `#` comments."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise UsageError(f"{what} {path} is larger than {MAX_BYTES >> 20} MiB; is it the right file?")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} is a directory, not a file: {path}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    lines = (
        (n, _INLINE_COMMENT.sub("", line).strip()) for n, line in enumerate(text.lstrip("\ufeff").split("\n"), start=1)
    )
    return [(n, line) for n, line in lines if line and not line.startswith("#")]


def read_vocabulary(path: str | Path, allow_empty: bool = False) -> list[str]:
    """Labels of a vocabulary file, normalised and de-duplicated; an empty file is a usage error."""
    path = Path(path)
    lines = _read_lines(path, "vocabulary")
    for number, line in lines:
        if any(unicodedata.category(c) == "Cc" for c in normalise_label(line)):
            raise UsageError(f"{path}:{number}: the label {line!r} holds a control character")
    labels = unique_labels([line for _, line in lines], str(path))
    _warn_case_duplicates(labels, str(path))
    if not labels and not allow_empty:
        raise UsageError(f"vocabulary {path} has no labels (one label per line; '#' starts a comment)")
    return labels


def _warn_case_duplicates(labels: list[str], source: str) -> None:
    """One warning naming the labels that differ only in case: kept apart, but likely a slip."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(label.casefold(), []).append(label)
    clashes = [" / ".join(map(repr, group)) for group in groups.values() if len(group) > 1]
    if clashes:
        warnings.warn(
            f"{source}: {len(clashes)} label(s) differ only in case and are kept apart: "
            + ", ".join(clashes[:5])
            + (" ..." if len(clashes) > 5 else ""),
            stacklevel=3,
        )


def read_thresholds(path: str | Path) -> dict[str, float]:
    """Per-label thresholds: `label<TAB>threshold` per line (labels normalised as in vocabularies).

    A label listed twice keeps its last value, with a warning; a malformed line is a usage error
    naming its line number.
    """
    path = Path(path)
    thresholds: dict[str, float] = {}
    repeated = []
    for number, line in _read_lines(path, "thresholds"):
        label, sep, value = line.rpartition("\t")
        try:
            threshold = float(value)
        except ValueError:
            threshold = math.nan
        label = normalise_label(label)
        if not sep or not label or not math.isfinite(threshold):
            raise UsageError(f"{path}:{number}: expected 'label<TAB>threshold' with a finite number, got {line!r}")
        if label in thresholds:
            repeated.append(label)
        thresholds[label] = threshold
    if repeated:
        warnings.warn(
            f"{path}: {len(repeated)} label(s) listed twice, the last value kept: "
            + ", ".join(repr(r) for r in repeated[:5]),
            stacklevel=2,
        )
    if not thresholds:
        raise UsageError(f"thresholds file {path} is empty (one 'label<TAB>threshold' per line)")
    return thresholds
