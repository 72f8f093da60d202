"""Where zstag keeps things: one cache root for fetched weights, label embeddings and graphs."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import platformdirs

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _weights_dir() -> Path:
    """The shipped weights: `zstag/weights` (package data) in an installed wheel, found through
    importlib.resources; the repository's top-level `weights/` in a source checkout or an editable
    install (setup.py copies it into the wheel, never into the source tree)."""
    packaged = resources.files("zstag") / "weights"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    if (PACKAGE_ROOT.parent / "pyproject.toml").is_file():
        return PACKAGE_ROOT.parent / "weights"
    # Not found (a broken install): name the place a wheel keeps them, for the error messages.
    return PACKAGE_ROOT / "weights"


# The bundled backbone (bundled/), the default model (default/) and the registry (registry.json).
WEIGHTS_DIR = _weights_dir()


def cache_root(override: str | Path | None = None) -> Path:
    """`--cache-dir`, else $ZSTAG_CACHE, else the platform's user cache folder."""
    if override:
        return Path(override)
    env = os.environ.get("ZSTAG_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("zstag"))
