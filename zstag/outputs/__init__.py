"""Where `zstag tag` writes its results: stream formats (`streams`) or sidecar files beside each
image (`sidecars`, `xmp`). The names every writer shares live here, so no writer imports another."""

from pathlib import Path

Tags = list[tuple[str, float]]  # one image's (label, score) pairs, best first
STREAM_FORMATS = ("jsonl", "csv", "tsv")
SIDECAR_FORMATS = ("txt", "xmp")
FORMATS = STREAM_FORMATS + SIDECAR_FORMATS
SIDECAR_MODES = ("safe", "overwrite", "append", "skip")  # what to do with an existing sidecar: sidecars.py
# What a format writes between one image's tags (streams.py, sidecars.py); xmp and jsonl keep each
# label whole.
TAG_SEPARATORS = {"csv": "|", "tsv": "|", "txt": ","}


def labels_holding_separator(labels: list[str], fmt: str) -> list[str]:
    """The labels that `fmt` could not split back out of its tag lists (they hold its separator)."""
    separator = TAG_SEPARATORS.get(fmt)
    return [label for label in labels if separator is not None and separator in label]


def sidecar_path(image_path: Path, fmt: str) -> Path:
    """`x.txt` for txt (the captioning tools' convention, and what `zstag train` reads), `x.jpg.xmp`
    for XMP (darktable's and digiKam's default name, which never clashes between `x.jpg` and `x.png`)."""
    return image_path.with_suffix(".txt") if fmt == "txt" else image_path.with_name(image_path.name + ".xmp")
