"""Memory probes for `zstag bench`: the peak a block adds, and the largest tensor it builds."""

from __future__ import annotations

import os
import sys
import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakMemory:
    """Peak memory a block adds, in MiB.

    On CUDA the allocator's high-water mark. On a CPU the resident set, sampled every 2 ms by a
    thread: the kernel's own mark (`resource`'s ru_maxrss) only ever rises, so it cannot see a
    block that peaks below something earlier in the run; it is the fallback where /proc is missing.
    """

    WHAT = {
        "cuda": "torch.cuda.max_memory_allocated above what was allocated before",
        "cpu": "resident set size above its value before, sampled every 2 ms",
    }

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._peak = resident_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, resident_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, resident_bytes())
        self.mib = max(0, peak - self._base) / 2**20


def resident_bytes() -> int:
    """The process's resident set now (Linux), else its high-water mark so far."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation builds inside the block.

    Operations whose result aliases an input (views such as a slice of the label vectors, and
    in-place updates) build nothing, as their schema says.
    """

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not any(r.alias_info is not None for r in func._schema.returns):
            self.numel = max([self.numel, *(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))])
        return out
