"""Vocabulary files: UTF-8 text, one label per line; blank lines and `#` comments ignored."""

from __future__ import annotations

import math
import unicodedata
import warnings
from pathlib import Path

from zstag.core.errors import UsageError


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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} is a directory, not a file: {path}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    lines = ((n, line.strip()) for n, line in enumerate(text.lstrip("\ufeff").splitlines(), start=1))
    return [(n, line) for n, line in lines if line and not line.startswith("#")]


def read_vocabulary(path: str | Path, allow_empty: bool = False) -> list[str]:
    """Labels of a vocabulary file, normalised and de-duplicated; an empty file is a usage error."""
    path = Path(path)
    labels = unique_labels([line for _, line in _read_lines(path, "vocabulary")], str(path))
    if not labels and not allow_empty:
        raise UsageError(f"vocabulary {path} has no labels (one label per line; '#' starts a comment)")
    return labels


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
        warnings.warn(f"{path}: {len(repeated)} label(s) listed twice, the last value kept: "
                      + ", ".join(repr(r) for r in repeated[:5]), stacklevel=2)
    if not thresholds:
        raise UsageError(f"thresholds file {path} is empty (one 'label<TAB>threshold' per line)")
    return thresholds
