"""`zstag tag` in a real shell pipeline: paths come from a pipe, and rows leave through a pipe
batch by batch, so a consumer such as `jq` sees results while the run goes on."""

from __future__ import annotations

import json
import subprocess
import sys

from synth import ON_CPU

from zstag.store.model import build_model, save_model


def test_rows_stream_through_a_pipe_before_the_run_ends(dataset, word_vectors, tmp_path):
    model = build_model("fast0tag", "small", str(word_vectors), ["red circle", "blue square"], {}, image_size=224)
    model.config["training"] = {}
    save_model(model, tmp_path / "model")
    images = [str(p) for p in sorted(dataset["images"].iterdir())]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zstag",
            "-q",
            "tag",
            "-",
            "--labels",
            str(dataset["vocab"]),
            "--model",
            str(tmp_path / "model"),
            "--batch-size",
            "2",
            *ON_CPU,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    proc.stdin.write("\n".join(images).encode())
    proc.stdin.close()
    first = json.loads(proc.stdout.readline())
    still_running = proc.poll() is None  # 120 images at 224 px in batches of 2 take seconds
    rest = [json.loads(line) for line in proc.stdout]
    assert proc.wait(timeout=300) == 0
    assert still_running, "the first row should arrive while later batches are still being tagged"
    assert [r["image"] for r in [first, *rest]] == images


def test_a_terminal_on_stdin_is_told_how_to_end_the_paths(tmp_path):
    """`zstag tag -` typed at a terminal waits for paths: it says so, and Ctrl-D at once ends the
    list (no images: exit 2)."""
    import os
    import pty
    import shutil

    zstag = shutil.which("zstag")
    assert zstag is not None, "the zstag console script is not installed"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red circle\n")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [zstag, "tag", "-", "--labels", str(vocab)], stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    os.close(follower)
    os.write(leader, b"\x04")  # Ctrl-D on an empty line: end of input
    _, err = proc.communicate(timeout=120)
    os.close(leader)
    assert proc.returncode == 2
    assert b"one per line; end with Ctrl-D" in err and b"no input images found" in err
