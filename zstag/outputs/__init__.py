"""Where `zstag tag` writes its results: stream formats (`streams`) or sidecar files beside each
image (`sidecars`, `xmp`). The names every writer shares live here, so no writer imports another."""

Tags = list[tuple[str, float]]  # one image's (label, score) pairs, best first
STREAM_FORMATS = ("jsonl", "csv", "tsv")
SIDECAR_FORMATS = ("txt", "xmp")
FORMATS = STREAM_FORMATS + SIDECAR_FORMATS
