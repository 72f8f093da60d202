"""Shared fixtures: an isolated cache, a tiny word-vector file, the synthetic dataset, and a way to
run the command line in-process (fast: torch is imported once per test session)."""

from __future__ import annotations

import os
import sys

# Before torch loads OpenMP (here and in every zstag process the tests start, which inherit it):
# threads waiting at a barrier sleep instead of spinning. On a shared 2-core machine a spinning
# thread holds the core its partner needs: a training step took several times longer (0.2 s per
# step passive, up to 2 s spinning), and the suite's time swung by minutes with the machine's load.
# Only how idle threads wait changes: the thread counts, and so the engine's streams, stay the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import synth  # noqa: E402

from zstag.core import console  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Every test gets the session's private cache, offline hub settings, and default console state."""
    cache = tmp_path_factory.getbasetemp() / "zstag-cache"
    monkeypatch.setenv("ZSTAG_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    console.configure(quiet=False, verbose=False)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> dict[str, Path]:
    """The synthetic multi-label set (120 images at 64 px) with vocabulary and unseen list."""
    return synth.make_dataset(tmp_path_factory.mktemp("synth"), n=120)


@pytest.fixture(scope="session")
def word_vectors(tmp_path_factory) -> Path:
    """A GloVe-style text file covering the synthetic labels' words: colours and shapes get
    structured vectors (a colour part and a shape part), so phrases compose like real word vectors."""
    rng = np.random.default_rng(0)
    words = list(synth.COLOURS) + list(synth.SHAPES)
    dim = 16
    lines = [f"{w} " + " ".join(f"{x:.5f}" for x in rng.normal(size=dim)) for w in words]
    path = tmp_path_factory.mktemp("vectors") / "tiny-glove.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def calibrated_fast0tag(dataset, word_vectors, tmp_path_factory) -> Path:
    """A small fast0tag model trained in-process on `dataset`, calibrated on its validation split
    (`test_calibration.train_fast0tag` with --val-fraction 0.3). Shared: copy it before changing it."""
    from test_calibration import train_fast0tag

    return train_fast0tag(dataset, word_vectors, tmp_path_factory.mktemp("calibrated") / "m", val_fraction=0.3)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `zstag ARGS...` in-process; returns exit code, stdout and stderr."""
    from zstag.cli import main

    def run(*args: str, stdin: str | None = None) -> Result:
        import io

        monkeypatch.setattr(sys, "argv", ["zstag", *map(str, args)])
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run
