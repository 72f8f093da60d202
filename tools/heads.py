"""Inference cost of each method on one backbone, measured in one run on this machine.

    python -m tools.heads [--backbone vgg19] [--image-size 224] [--labels 1000]
        [--batch 16] [--device auto] [--json FILE]

Counts FLOPs per image with torch's FlopCounterMode (the backbone as the method runs it, and the head) and times
encode + score per image (median of repeats, after a warm-up). Weights are random
(`pretrained=False`): cost does not depend on them. Ratios between rows are what to read; absolute
times depend on the machine and its load, which the output names.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from zstag.backbones import build_backbone
from zstag.bench.heads import build_head, random_labels, scoring_flops
from zstag.engine.engine import Engine
from zstag.methods import METHODS


def measure(
    method_name: str, backbone_name: str, size: int, n_labels: int, batch: int, engine: Engine, dim: int = 384
) -> dict:
    seen = random_labels(n_labels, dim)
    method = engine.prepare(build_head(method_name, build_backbone(backbone_name, pretrained=False), seen))
    images = torch.randn(batch, 3, size, size, device=engine.device)
    labels = seen.to(engine.device)
    with torch.inference_mode():
        total_flops, backbone_flops = scoring_flops(method, images, labels)
        times = []
        for repeat in range(6):
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with engine.autocast():
                method.score(method.encode(images), labels)
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            if repeat:  # the first run warms up
                times.append((time.perf_counter() - start) / batch)
    return {
        "method": method_name,
        "backbone_MFLOP": backbone_flops / batch / 1e6,
        "head_MFLOP": (total_flops - backbone_flops) / batch / 1e6,
        "ms_per_image": 1e3 * statistics.median(times),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.heads", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="vgg19")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    engine = Engine(args.device)
    rows = [
        measure(m, args.backbone, args.image_size, args.labels, args.batch, engine) for m in args.methods.split(",")
    ]
    where = (
        torch.cuda.get_device_name()
        if engine.device.type == "cuda"
        else f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"{args.backbone} at {args.image_size} px, {args.labels} labels, batch {args.batch}, {where}, "
        f"torch {torch.__version__}"
    )
    print("| method | backbone MFLOP/img | head MFLOP/img | ms/img (backbone + head) |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['backbone_MFLOP']:.0f} | {r['head_MFLOP']:.1f} | {r['ms_per_image']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": where, "args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
