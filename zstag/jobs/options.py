"""What each job takes: one dataclass per job, with its types and defaults.

These are the options' one declaration: the command layer (zstag/commands) builds each command's
parameters from these fields and adds only how they are spelt on the command line. The module
imports no torch, so `zstag --help` and shell completion stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TagOptions:
    inputs: list[str]
    labels: Path
    model: str = "default"
    top_k: int = 10
    threshold: float | None = None
    fmt: str = "jsonl"
    output: str = "-"
    recursive: bool = True
    batch_size: int = 64
    device: str = "auto"
    workers: int | None = None
    compile: bool | None = None  # torch.compile the model (None: on CUDA for long runs; zstag.engine.engine)
    resume: bool = False
    extensions: list[str] | None = None
    errors: Path | None = None
    sidecar_mode: str = "safe"  # what an existing sidecar gets: zstag.outputs.sidecars
    force: bool = False  # replace an existing output file that is not a zstag output
    thresholds: Path | None = None
    raw_scores: bool = False
    shard: str | None = None  # "i/n": tag only the i-th of n contiguous blocks of the inputs


@dataclass
class EvalOptions:
    truth: Path
    predictions: Path | None = None
    model: str | None = None
    inputs: list[str] = field(default_factory=list)
    labels: Path | None = None
    unseen: Path | None = None
    ks: list[int] = field(default_factory=lambda: [3, 5])
    protocol: str = "zstag"
    batch_size: int = 64
    device: str = "auto"
    workers: int | None = None
    compile: bool | None = None  # as TagOptions.compile
    score_norm: str | None = None  # "none" or "seen" (`Method.standardised`); None: the model's own setting


@dataclass
class ExplainOptions:
    inputs: list[str]
    labels: Path
    out: Path
    model: str = "default"
    top_k: int = 3
    device: str = "auto"
