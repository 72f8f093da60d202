"""Vocabulary files: UTF-8 text, one label per line; blank lines and `#` comments ignored."""

from __future__ import annotations

import unicodedata
import warnings
from pathlib import Path

from zstag.errors import UsageError


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


def read_vocabulary(path: str | Path, allow_empty: bool = False) -> list[str]:
    """Labels of a vocabulary file, normalised and de-duplicated; an empty file is a usage error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"vocabulary file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"vocabulary is a directory, not a file: {path}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"vocabulary {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read vocabulary {path}: {exc.strerror}") from None
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    labels = unique_labels([line for line in lines if line and not line.startswith("#")], str(path))
    if not labels and not allow_empty:
        raise UsageError(f"vocabulary {path} has no labels (one label per line; '#' starts a comment)")
    return labels
