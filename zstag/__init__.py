"""zstag: zero-shot image tagging with any vocabulary."""

__version__ = "0.1.0"
