"""`zstag tag`: score images against a vocabulary and write the chosen tags.

Rows come out in input order, one per readable image; unreadable inputs are named on stderr
(and in `--errors FILE`) and make the exit code 3 without stopping the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from zstag import console
from zstag.data.vocab import read_vocabulary
from zstag.engine import Engine
from zstag.errors import UsageError
from zstag.model_io import load_model
from zstag.outputs import SIDECAR_FORMATS, StreamOutput, Tags, sidecar_writer


@dataclass
class TagOptions:
    inputs: list[str]
    labels: Path
    model: str = "default"
    top_k: int = 10
    threshold: float | None = None
    fmt: str = "jsonl"
    output: str = "-"
    recursive: bool = True
    batch_size: int = 64
    device: str = "auto"
    workers: int | None = None
    resume: bool = False
    extensions: list[str] | None = None
    errors: Path | None = None
    sidecar_mode: str = "overwrite"


def select(scores: torch.Tensor, names: list[str], top_k: int, threshold: float | None) -> list[Tags]:
    """Per image, (label, score) pairs by descending score: the top k (0 = all), then >= threshold."""
    k = scores.shape[1] if top_k <= 0 else min(top_k, scores.shape[1])
    values, index = scores.topk(k, dim=1)
    rows = []
    for vals, idx in zip(values.tolist(), index.tolist()):
        rows.append([(names[i], v) for v, i in zip(vals, idx) if threshold is None or v >= threshold])
    return rows


def tag(opts: TagOptions) -> int:
    """Run the tagging job; returns the exit code (0, or 3 when some inputs were unreadable)."""
    from zstag.data.inputs import iter_inputs

    vocab = read_vocabulary(opts.labels)
    items = list(iter_inputs(opts.inputs, recursive=opts.recursive, extensions=opts.extensions))
    if not items:
        raise UsageError("no input images found (give files, folders, quoted globs, or '-' to read paths from stdin)")
    sidecar = opts.fmt in SIDECAR_FORMATS
    stream = None if sidecar else StreamOutput(opts.output, opts.fmt, opts.resume)
    if stream is not None and stream.done:
        before = len(items)
        items = [item for item in items if item[0] not in stream.done]
        console.info(f"--resume: {before - len(items)} image(s) already in {opts.output}, {len(items)} to go")
    model = load_model(opts.model)
    labels = model.embed(vocab)
    engine = Engine(opts.device, batch_size=opts.batch_size, workers=opts.workers)
    write_sidecar = sidecar_writer(opts.fmt, opts.sidecar_mode) if sidecar else None
    console.debug(f"model {model.path} ({model.config['method']}), {len(vocab)} labels, device {engine.device}")
    failures: list[tuple[str, str]] = []
    done, complete = 0, False
    try:
        with console.progress("tagging", len(items)) as bar:
            for batch in engine.run(model.method, [p for _, p in items], labels, model.image_size):
                for index, reason in batch.failures:
                    failures.append((items[index][0], reason))
                    console.warn(f"cannot read {items[index][0]}: {reason}")
                for index, tags in zip(batch.indices, select(batch.scores, labels.names, opts.top_k, opts.threshold)):
                    display, path = items[index]
                    if write_sidecar is not None:
                        write_sidecar(path, tags)
                    else:
                        stream.write(display, tags)
                if stream is not None:
                    stream.flush()
                done += len(batch.indices)
                bar.update(len(batch.indices) + len(batch.failures))
        complete = True
    except KeyboardInterrupt:
        console.warn(f"interrupted after {done} image(s)" + ("" if stream is None or opts.output == "-" else
                     f"; rows so far kept, continue with --resume"))
        raise
    finally:
        if stream is not None:
            stream.close(complete)
        if opts.errors is not None and failures:
            with opts.errors.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps({"image": d, "error": r}, ensure_ascii=False) + "\n" for d, r in failures)
    console.info(f"tagged {done} image(s)" + (f"; {len(failures)} unreadable" if failures else ""))
    return 3 if failures else 0
