"""What `zstag bench` takes (torch-free, like zstag/jobs/options.py, so the command line builds fast)."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

SECTIONS = ("end-to-end", "forward", "vocab-scale", "methods", "decode", "pipeline")


@dataclass
class BenchOptions:
    device: str = "auto"
    model: str = "default"
    backbone: str | None = None
    images: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    workers: int | None = None
    compile: bool | None = None
    repeats: int | None = None
    quick: bool = False
    only: list[str] | None = None
    json_path: Path | None = None
    command: str = field(default_factory=lambda: shlex.join(["zstag", *sys.argv[1:]]))
