"""`zstag train --resume`: an interrupted run continues from its last epoch checkpoint and ends
with exactly the weights an uninterrupted run would have written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import synth
from synth import ON_CPU

from zstag.core.errors import ModelError, UsageError
from zstag.training import trainer as train_module
from zstag.training.checkpoint import CHECKPOINT, load_checkpoint
from zstag.training.trainer import TrainOptions, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return synth.make_dataset(tmp_path_factory.mktemp("tiny"), n=16, size=32, seed=5)


def options(tiny, word_vectors, out: Path, method: str = "fast0tag", **extra) -> TrainOptions:
    overrides = (
        {"hidden": 16, "crop_scale": 0.7} if method == "fast0tag" else {"finetune_backbone": False, "attentions": 2}
    )
    settings = dict(
        data=tiny["manifest"],
        method=method,
        out=out,
        unseen=tiny["unseen"],
        backbone="small",
        semantics=str(word_vectors),
        epochs=3,
        batch_size=4,
        image_size=32,
        device="cpu",
        seed=11,
        val_fraction=0.25,
        workers=0,
        overrides=overrides,
    )
    settings.update(extra)
    return TrainOptions(**settings)


def interrupt_after(monkeypatch, epochs: int) -> None:
    """Ctrl-C during the validation of epoch `epochs + 1` (after `epochs` checkpoints)."""
    real, calls = train_module.validate, []

    def validate(*args, **kwargs):
        calls.append(1)
        if len(calls) > epochs:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "validate", validate)


@pytest.mark.parametrize("method", ["fast0tag", "lesa"])  # images + augmentation; cached features
def test_resumed_run_ends_with_the_uninterrupted_weights(tiny, word_vectors, tmp_path, monkeypatch, method):
    train(options(tiny, word_vectors, tmp_path / "straight", method))
    assert not (tmp_path / "straight" / CHECKPOINT).exists(), "a finished run keeps no checkpoint"

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            train(options(tiny, word_vectors, out, method))
    checkpoint = load_checkpoint(out / CHECKPOINT)
    assert checkpoint["progress"]["epoch"] == 2 and len(checkpoint["progress"]["history"]) == 2
    assert checkpoint["optimizer"]["state"], "the optimiser's moments are kept"

    train(options(tiny, word_vectors, out, method, resume=True))
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()
    history = json.loads((out / "config.json").read_text())["training"]["history"]
    straight = json.loads((tmp_path / "straight" / "config.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history == straight
    assert not (out / CHECKPOINT).exists()


def test_resume_without_restoring_the_generators_would_differ(tiny, word_vectors, tmp_path, monkeypatch):
    """The equality above is not vacuous: a resumed run with fresh random generators diverges."""
    train(options(tiny, word_vectors, tmp_path / "straight"))
    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train(options(tiny, word_vectors, out))
    monkeypatch.setattr(train_module, "restore_rng", lambda *args: None)
    train(options(tiny, word_vectors, out, resume=True))
    # The losses of the epochs after the interruption (the saved weights may be the best epoch's,
    # from before it).
    history = json.loads((out / "config.json").read_text())["training"]["history"]
    straight = json.loads((tmp_path / "straight" / "config.json").read_text())["training"]["history"]
    assert history[0] == straight[0] and history[1:] != straight[1:]


def test_resume_may_add_epochs_but_not_change_the_run(tiny, word_vectors, tmp_path, monkeypatch):
    out = tmp_path / "m"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train(options(tiny, word_vectors, out))
    with pytest.raises(UsageError, match=r"lr: None then, 0\.5 now"):
        train(options(tiny, word_vectors, out, lr=0.5, resume=True))
    with pytest.raises(UsageError, match="seed"):
        train(options(tiny, word_vectors, out, seed=12, resume=True))
    model = train(options(tiny, word_vectors, out, epochs=4, resume=True))
    assert [h["epoch"] for h in model.config["training"]["history"]] == [1, 2, 3, 4]


def test_resume_with_nothing_to_resume_says_so(tiny, word_vectors, tmp_path):
    with pytest.raises(UsageError, match="nothing to resume"):
        train(options(tiny, word_vectors, tmp_path / "never", resume=True))
    train(options(tiny, word_vectors, tmp_path / "done", epochs=1))
    with pytest.raises(UsageError, match="finished"):
        train(options(tiny, word_vectors, tmp_path / "done", resume=True))


def test_a_damaged_checkpoint_is_a_clear_error(tiny, word_vectors, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / CHECKPOINT).write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a readable zstag checkpoint"):
        train(options(tiny, word_vectors, out, resume=True))


def test_kill_9_during_training_then_resume(tiny, word_vectors, tmp_path):
    """SIGKILL at an arbitrary moment after the first checkpoint: the file is whole (written through
    a rename) and the resumed run finishes every epoch."""
    out = tmp_path / "m"
    epochs = 12  # the kill lands about 0.3 s after the first checkpoint, well before the last epoch
    args = [
        sys.executable,
        "-m",
        "zstag",
        "-q",
        "train",
        str(tiny["manifest"]),
        "--method",
        "fast0tag",
        "--out",
        str(out),
        "--unseen",
        str(tiny["unseen"]),
        "--backbone",
        "small",
        "--semantics",
        str(word_vectors),
        "--epochs",
        str(epochs),
        "--batch-size",
        "4",
        "--image-size",
        "32",
        *ON_CPU,
        "--set",
        "hidden=16",
        "--set",
        "early_stopping=0",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / CHECKPOINT).exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(out / CHECKPOINT)["progress"]["epoch"]
    assert 1 <= done < epochs
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((out / "config.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert not (out / CHECKPOINT).exists()
