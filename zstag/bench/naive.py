"""The straightforward tagging loop that `zstag bench` measures the engine against.

    python -m zstag.bench.naive IMAGE... --labels VOCAB [--model default] [--device cpu]
        [--top-k 10] [--output FILE] [--workers 0] [--batch-size 32]

What one writes from the torchvision tutorials: open each file with Pillow, Resize + ToTensor +
Normalize, forward batches of 32 through the model, take the top k, write JSON lines. One process,
no workers, no pinned memory, no mixed precision, no vocabulary chunks. With `--workers N` it is
the GPU version of the same loop: a DataLoader with N Pillow workers and pinned memory, as the
tutorials write for a GPU (`zstag bench` uses one worker per core, at most 16). It loads the same model
with zstag's own loader, so both sides pay the same start-up for weights and label vectors; the
difference `zstag bench` reports is the engine's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TextIO

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from zstag.data.vocab import read_vocabulary
from zstag.store.model import load_model

BATCH = 32


class Photos(Dataset):
    """The tutorials' dataset: one Pillow image through the transforms per item."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def tag_loop(
    paths: Sequence[Path],
    vocabulary: Path,
    model_ref: str,
    device: str,
    top_k: int,
    out: TextIO,
    workers: int = 0,
    batch: int = BATCH,
) -> int:
    """Tag `paths` the straightforward way, one JSON line per image on `out`; returns the count.
    With `workers`, a DataLoader with that many processes and pinned memory feeds the model."""
    model = load_model(model_ref)
    labels = model.embed(read_vocabulary(vocabulary)).to(device)
    method = model.method.to(device).eval()
    size, backbone = model.image_size, method.backbone
    transform = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(backbone.mean, backbone.std)]
    )
    photos = Photos(paths, transform)
    batches: Iterable[torch.Tensor]
    if workers:
        batches = DataLoader(photos, batch_size=batch, num_workers=workers, pin_memory=device.startswith("cuda"))
    else:
        batches = (
            torch.stack([photos[i] for i in range(start, min(start + batch, len(paths)))])
            for start in range(0, len(paths), batch)
        )
    k = min(top_k, len(labels))
    done = 0
    with torch.no_grad():
        for images in batches:
            chunk = paths[done : done + len(images)]
            done += len(images)
            values, index = method(images.to(device, non_blocking=True), labels).topk(k, dim=1)
            for path, vals, idx in zip(chunk, values.tolist(), index.tolist()):
                tags = [{"label": labels.names[i], "score": v} for v, i in zip(vals, idx)]
                out.write(json.dumps({"image": str(path), "tags": tags}) + "\n")
    return len(paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zstag.bench.naive", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--labels", required=True, type=Path)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--output", default="-")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=BATCH)
    args = parser.parse_args(argv)
    loop = (args.images, args.labels, args.model, args.device, args.top_k)
    if args.output == "-":
        tag_loop(*loop, sys.stdout, workers=args.workers, batch=args.batch_size)
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            tag_loop(*loop, out, workers=args.workers, batch=args.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
