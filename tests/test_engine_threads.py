"""The engine's use of a CPU: decoding workers only when there is more than one batch, and torch's
threads on the cores those workers leave free (docs/performance.md has the measurements)."""

from __future__ import annotations

import torch

from zstag import engine as engine_module
from zstag.engine import Engine, ImageFiles, threads_beside


def test_threads_beside_workers_and_restored(monkeypatch):
    monkeypatch.setattr(engine_module, "available_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        with threads_beside(torch.device("cpu"), 1):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 4
        with threads_beside(torch.device("cpu"), 6):
            assert torch.get_num_threads() == 1  # never none
        with threads_beside(torch.device("cpu"), 0), threads_beside(torch.device("cuda"), 3):
            assert torch.get_num_threads() == 4  # no workers, or compute on a GPU: nothing to share
        torch.set_num_threads(2)
        with threads_beside(torch.device("cpu"), 1):
            assert torch.get_num_threads() == 2  # fewer threads asked for already: kept
    finally:
        torch.set_num_threads(before)


def test_workers_only_for_more_than_one_batch():
    engine = Engine("cpu", batch_size=4, workers=2)
    assert engine.loader(ImageFiles(["a.jpg"] * 4, 32)).num_workers == 0
    assert engine.loader(ImageFiles(["a.jpg"] * 5, 32)).num_workers == 2
