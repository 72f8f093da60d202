"""The straightforward tagging loop that `zstag bench` measures the engine against.

    python -m zstag.bench.naive IMAGE... --labels VOCAB [--model default] [--device cpu]
        [--top-k 10] [--output FILE]

What one writes from the torchvision tutorials: open each file with Pillow, Resize + ToTensor +
Normalize, forward batches of 32 through the model, take the top k, write JSON lines. One process,
no workers, no pinned memory, no mixed precision, no vocabulary chunks. It loads the same model
with zstag's own loader, so both sides pay the same start-up for weights and label vectors; the
difference `zstag bench` reports is the engine's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import torch
from PIL import Image
from torchvision import transforms

from zstag.data.vocab import read_vocabulary
from zstag.store.model import load_model

BATCH = 32


def tag_loop(paths: Sequence[Path], vocabulary: Path, model_ref: str, device: str, top_k: int, out: TextIO) -> int:
    """Tag `paths` the straightforward way, one JSON line per image on `out`; returns the count."""
    model = load_model(model_ref)
    labels = model.embed(read_vocabulary(vocabulary)).to(device)
    method = model.method.to(device).eval()
    size, backbone = model.image_size, method.backbone
    transform = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(backbone.mean, backbone.std)]
    )
    k = min(top_k, len(labels))
    with torch.no_grad():
        for start in range(0, len(paths), BATCH):
            chunk = paths[start : start + BATCH]
            images = torch.stack([transform(Image.open(p).convert("RGB")) for p in chunk]).to(device)
            values, index = method(images, labels).topk(k, dim=1)
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
    args = parser.parse_args(argv)
    if args.output == "-":
        tag_loop(args.images, args.labels, args.model, args.device, args.top_k, sys.stdout)
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            tag_loop(args.images, args.labels, args.model, args.device, args.top_k, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
