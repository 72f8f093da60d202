"""Scale-out: which share of the work this process does, under torchrun or a job array.

torchrun (one node or several) sets RANK, WORLD_SIZE and LOCAL_RANK; `--shard i/n` says the same
by hand for job arrays (Slurm, Kubernetes indexed jobs) whose tasks never talk to each other.
Inputs are split into contiguous blocks in their deterministic input order, so concatenating the
blocks in rank order gives back the single-process order. The process group (gloo: it only
carries barriers and a few integers, and works with or without GPUs) is opened only under
torchrun and only when needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from zstag.core.errors import UsageError


@dataclass(frozen=True)
class Share:
    index: int  # this process's share, 0-based
    count: int  # number of shares
    torchrun: bool  # ranks can talk to each other (barriers, merging)

    def block(self, n: int) -> slice:
        """This share's contiguous block of n ordered items (sizes differ by at most one)."""
        return slice(n * self.index // self.count, n * (self.index + 1) // self.count)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (i from 0 to n-1) -> (i, n)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard expects I/N with 0 <= I < N, e.g. 0/4, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard expects I/N with 0 <= I < N, e.g. 0/4, got {text!r}")
    return index, count


def current_share(shard: str | None = None) -> Share | None:
    """The share of this process, from torchrun's environment or `--shard`; None for a whole run."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        if shard:
            raise UsageError("--shard and torchrun both split the inputs: use one of them")
        return Share(int(os.environ["RANK"]), world, torchrun=True)
    if shard:
        index, count = parse_shard(shard)
        return Share(index, count, torchrun=False) if count > 1 else None
    return None


def local_rank() -> int | None:
    """The GPU index torchrun assigns this process (LOCAL_RANK), if any."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value not in (None, "") and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None


def _group(backend: str = "gloo"):
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend)
    return dist


def start(backend: str) -> None:
    """Join torchrun's process group: nccl for GPU training's gradients, gloo otherwise."""
    _group(backend)


def barrier() -> None:
    _group().barrier()


def total(value: int) -> int:
    """The sum of `value` over all ranks."""
    import torch

    tensor = torch.tensor([value], dtype=torch.int64)
    _group().all_reduce(tensor)
    return int(tensor.item())


def close() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
