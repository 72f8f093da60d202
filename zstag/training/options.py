"""What `zstag train` takes: the training job's options, with their types and defaults.

Like zstag/jobs/options.py this module imports no torch, so the command layer can build `zstag
train`'s parameters, answer `--help` and check every input (zstag/training/checks.py) before the
second of start-up that importing torch costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainOptions:
    data: Path
    method: str
    out: Path
    unseen: Path | None = None
    labels: Path | None = None
    backbone: str = "bundled"
    semantics: str = "minilm"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    image_size: int = 224
    device: str = "auto"
    seed: int = 0
    val_fraction: float = 0.1
    overrides: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    resume: bool = False
    force: bool = False  # replace a model already in `out` (checked by zstag/training/checks.py)

    def signature(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (epochs may grow, the device
        and the number of decoding workers may change)."""
        overrides = {k: v for k, v in self.overrides.items() if k != "epochs"}
        return {
            "data": str(Path(self.data).resolve()),
            "method": self.method,
            "unseen": str(Path(self.unseen).resolve()) if self.unseen else None,
            "labels": str(Path(self.labels).resolve()) if self.labels else None,
            "backbone": self.backbone,
            "semantics": self.semantics,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "image_size": self.image_size,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "overrides": overrides,
        }
