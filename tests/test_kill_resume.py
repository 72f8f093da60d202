"""A `zstag tag` run killed with SIGKILL mid-way loses nothing: `--resume` finishes the same
output with every image exactly once and no torn line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from zstag.model_io import build_model, save_model


def test_kill_9_then_resume(dataset, word_vectors, tmp_path):
    model = build_model("fast0tag", "small", str(word_vectors), ["red circle", "blue square"], {}, image_size=224)
    model.config["training"] = {}
    save_model(model, tmp_path / "model")
    out = tmp_path / "tags.jsonl"
    images = [str(p) for p in sorted(dataset["images"].iterdir())]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "zstag", "-q", "tag", "-", "--labels", str(dataset["vocab"]), "--model",
            str(tmp_path / "model"), "--batch-size", "2", "--device", "cpu", "--workers", "0", "-o", str(out)]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    # 224-px inputs keep each batch of 2 at tens of milliseconds: the kill lands mid-way.
    partial = Path(f"{out}.partial")
    proc.stdin.write("\n".join(images).encode())
    proc.stdin.close()
    deadline = time.time() + 120
    while time.time() < deadline and (not partial.exists() or partial.read_text().count("\n") < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed plain run must not leave output under the final name"
    kept = partial.read_text().count("\n")
    assert 4 <= kept < len(images)

    resumed = subprocess.run(args + ["--resume"], input="\n".join(images), capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # every line whole JSON
    assert sorted(r["image"] for r in rows) == sorted(images)
    assert len(rows) == len(images)
    assert not partial.exists()
