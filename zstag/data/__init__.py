"""Data: manifests and sidecar folders, vocabularies, splits, robust image decoding."""
