"""Where zstag keeps things: one cache root for fetched weights, label embeddings and graphs."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# weights/ ships beside the package in a source checkout and inside it in a wheel.
WEIGHTS_DIR = next((p for p in (PACKAGE_ROOT.parent / "weights", PACKAGE_ROOT / "weights") if p.is_dir()),
                   PACKAGE_ROOT.parent / "weights")


def cache_root(override: str | Path | None = None) -> Path:
    """`--cache-dir`, else $ZSTAG_CACHE, else the platform's user cache folder."""
    if override:
        return Path(override)
    env = os.environ.get("ZSTAG_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("zstag"))
