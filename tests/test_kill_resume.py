"""A `zstag tag` run killed with SIGKILL, or stopped with Ctrl-C, mid-way loses nothing: `--resume`
finishes the same output with every image exactly once and no torn line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from synth import ON_CPU

from zstag.store.model import build_model, save_model


def start_run(dataset, word_vectors, tmp_path) -> tuple[subprocess.Popen, list[str], list[str], Path]:
    """Start tagging 40 of the synthetic images from stdin; returns once at least 2 rows are written."""
    # 448-px inputs one at a time keep the run seconds long on any machine: the signal lands mid-way
    # (38 images after the second row; more would only lengthen the resumed run).
    model = build_model("fast0tag", "small", str(word_vectors), ["red circle", "blue square"], {}, image_size=448)
    model.config["training"] = {}
    save_model(model, tmp_path / "model")
    out = tmp_path / "tags.jsonl"
    images = [str(p) for p in sorted(dataset["images"].iterdir())][:40]
    args = [
        sys.executable,
        "-m",
        "zstag",
        "tag",
        "-",
        "--labels",
        str(dataset["vocab"]),
        "--model",
        str(tmp_path / "model"),
        "--batch-size",
        "1",
        *ON_CPU,
        "-o",
        str(out),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # SIGINT back to its default in the child: a shell starts background jobs (a CI step, `pytest &`)
    # with it ignored, the child would inherit that, and Ctrl-C could not be tested.
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    partial = Path(f"{out}.partial")
    proc.stdin.write("\n".join(images).encode())
    proc.stdin.close()
    deadline = time.time() + 120
    while time.time() < deadline and (not partial.exists() or partial.read_text().count("\n") < 2):
        time.sleep(0.05)
    return proc, args, images, out


def resume_and_check(args: list[str], images: list[str], out: Path) -> None:
    resumed = subprocess.run(args + ["--resume"], input="\n".join(images), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # every line whole JSON
    assert sorted(r["image"] for r in rows) == sorted(images)
    assert len(rows) == len(images)
    assert not Path(f"{out}.partial").exists()


def test_kill_9_then_resume(dataset, word_vectors, tmp_path):
    proc, args, images, out = start_run(dataset, word_vectors, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed plain run must not leave output under the final name"
    kept = Path(f"{out}.partial").read_text().count("\n")
    assert 2 <= kept < len(images)
    resume_and_check(args, images, out)


def test_ctrl_c_flushes_the_rows_so_far_and_says_how_to_continue(dataset, word_vectors, tmp_path):
    proc, args, images, out = start_run(dataset, word_vectors, tmp_path)
    assert proc.poll() is None, "the run ended before the signal could reach it"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    stderr = proc.stderr.read().decode()
    assert "interrupted after" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    text = Path(f"{out}.partial").read_text()
    assert text.endswith("\n") and len(text.splitlines()) >= 2  # whole rows, flushed
    resume_and_check(args, images, out)
