"""Training checkpoints for `zstag train --resume`: one safetensors file, never a pickle.

A checkpoint holds what the next epoch needs and the model directory does not: the current
(not the best) weights, the best weights so far, the optimiser's state, every random generator
the loop draws from, and the loop's own counters. Tensors go into the safetensors body; the rest
(counters, history, optimiser hyperparameters, the options the run was started with) into its
JSON metadata. The file is written to a temporary name and renamed, so a run killed at any
moment leaves either the previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from zstag.core.atomic import atomic_write
from zstag.core.errors import ModelError

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class TrainState:
    """The epoch loop's counters, saved with every checkpoint so `--resume` continues them."""

    lr: float
    epoch: int = 0  # the last finished epoch
    best: float = -math.inf  # the best validation score so far (mAP, or -loss without a validation split)
    best_epoch: int = 0
    stale: int = 0  # epochs since the best one
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: lr, val_mAP and every loss term
    seconds: float = 0.0  # training time so far, across resumed runs

    @classmethod
    def from_progress(cls, progress: dict[str, Any]) -> TrainState:
        """The state a checkpoint's progress record holds (`load_checkpoint`)."""
        return cls(**{f.name: progress[f.name] for f in dataclasses.fields(cls)})


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every generator the training loop draws from: Python, NumPy, torch (CPU, CUDA) and the
    loop's own shuffling generator."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors = {
        "rng/torch": torch.get_rng_state(),
        "rng/loader": generator.get_state(),
        "rng/numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    meta = {"python": random.getstate(), "numpy": [kind, pos, has_gauss, gauss]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    generator.set_state(tensors["rng/loader"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def save_checkpoint(
    path: Path,
    current: dict[str, torch.Tensor],
    best: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: TrainState,
    options: dict[str, Any],
) -> None:
    """Write the checkpoint atomically (a temporary file renamed over the old one); `options` are
    what a resumed run must repeat."""
    progress = {**dataclasses.asdict(state), "options": options}
    optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
    rng_tensors, rng_meta = rng_state(generator)
    tensors = {
        **{f"current/{k}": v for k, v in current.items()},
        **{f"best/{k}": v for k, v in best.items()},
        **optim_tensors,
        **rng_tensors,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {
        "format": "pt",
        "zstag_checkpoint": json.dumps({"progress": progress, "optimizer": optim_meta, "rng": rng_meta}),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """{'current', 'best', 'optimizer', 'rng_tensors', 'rng', 'progress'} from a checkpoint file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["zstag_checkpoint"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as exc:
        raise ModelError(f"{path}: not a readable zstag checkpoint ({exc})") from exc

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    optim = {k: v for k, v in tensors.items() if k.startswith("optim/")}
    return {
        "current": part("current/"),
        "best": part("best/"),
        "optimizer": _unflatten_optimizer(optim, meta["optimizer"]),
        "rng_tensors": {k: v for k, v in tensors.items() if k.startswith("rng/")},
        "rng": meta["rng"],
        "progress": meta["progress"],
    }
