"""The engine's use of a CPU: streams of whole batches by default, decoding workers only when asked
for and only for more than one batch, and torch's threads on the cores those leave free
(docs/performance.md has the measurements)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import synth
import torch

from zstag.data.labels import LabelSet
from zstag.engine import engine as engine_module
from zstag.engine.engine import Engine, ImageFiles, cpu_streams, default_workers, threads_beside
from zstag.methods.fast0tag import Fast0Tag

SIZE = 32


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


def test_no_decoding_process_by_default_on_a_cpu():
    assert default_workers(torch.device("cpu")) == 0
    assert Engine("cpu").workers == 0


@pytest.mark.parametrize(
    "threads, batches, expected",
    [
        (2, 8, (2, 1)),  # the development machine: a stream per core, one thread each
        (16, 100, (4, 4)),  # at most MAX_STREAMS, the threads shared among them
        (8, 1, (1, 8)),  # a lone batch gets every thread
        (8, 3, (3, 2)),
        (1, 5, (1, 1)),  # OMP_NUM_THREADS=1, as torchrun sets: one stream
    ],
)
def test_cpu_streams_layout(threads, batches, expected):
    assert engine_module.MAX_STREAMS == 4
    assert cpu_streams(threads, batches) == expected


@pytest.fixture(scope="module")
def method() -> Fast0Tag:
    return synth.tiny_fast0tag(8)


@pytest.fixture(scope="module")
def labels() -> LabelSet:
    return LabelSet([f"label{i}" for i in range(6)], synth.random_label_vectors(6, 8, seed=2))


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> list[Path]:
    """Eleven inputs, the fourth and the ninth unreadable."""
    return synth.noise_pngs(tmp_path_factory.mktemp("stream-images"), 11, (40, 48), unreadable=(3, 8))


def test_streams_score_in_input_order_on_their_share_of_threads(method, labels, paths, monkeypatch):
    """Two streams (MAX_STREAMS) on torch's 4 threads, batches of two: every image scored once, by a
    stream thread computing with its share of the threads, yielded in input order with the failures
    where they were, and the scores those of one batch of everything."""
    monkeypatch.setattr(engine_module, "MAX_STREAMS", 2)
    seen: list[tuple[str, int]] = []
    encode = type(method).encode
    monkeypatch.setattr(
        type(method),
        "encode",
        lambda self, images: (
            seen.append((threading.current_thread().name, torch.get_num_threads())) or encode(self, images)
        ),
    )
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        batches = list(Engine("cpu", batch_size=2, workers=0).run(method, paths, labels, SIZE))
        assert torch.get_num_threads() == 4  # restored
    finally:
        torch.set_num_threads(before)
    assert len(seen) == 6 and all(name.startswith("zstag-stream") and threads == 2 for name, threads in seen)
    assert len({name for name, _ in seen}) > 1
    assert [b.indices for b in batches] == [[0, 1], [2], [4, 5], [6, 7], [9], [10]]
    assert [[i for i, _ in b.failures] for b in batches] == [[], [3], [], [], [8], []]
    monkeypatch.setattr(type(method), "encode", encode)
    whole = list(Engine("cpu", batch_size=len(paths), workers=0).run(method, paths, labels, SIZE))
    assert len(whole) == 1 and whole[0].indices == [0, 1, 2, 4, 5, 6, 7, 9, 10]
    torch.testing.assert_close(torch.cat([b.scores for b in batches]), whole[0].scores, rtol=1e-5, atol=1e-5)


def test_a_closed_run_leaves_no_stream_working(method, labels, paths, monkeypatch):
    """A caller that stops early (Ctrl-C, a broken pipe) closes the run: the batches not started
    are cancelled, and no stream thread outlives it."""
    calls = []
    encode = type(method).encode
    monkeypatch.setattr(type(method), "encode", lambda self, images: calls.append(1) or encode(self, images))
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # two streams
    try:
        run = Engine("cpu", batch_size=1, workers=0).run(method, paths, labels, SIZE)
        next(run)
        run.close()
    finally:
        torch.set_num_threads(before)
    assert len(calls) <= 4  # the first batch, those under way in 2 streams, and one queued
    assert not [t for t in threading.enumerate() if t.name.startswith("zstag-stream")]
