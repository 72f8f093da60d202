"""Inference cost of each method on one backbone, measured in one run on this machine.

    python -m zstag.bench.heads [--backbone vgg19] [--image-size 224] [--labels 1000]
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
from torch.utils.flop_counter import FlopCounterMode

from zstag.backbones import Backbone, build_backbone
from zstag.engine.engine import Engine
from zstag.data.labels import LabelSet
from zstag.methods import METHODS, method_class
from zstag.methods.base import Method


def scoring_flops(method: Method, images: torch.Tensor, labels: LabelSet) -> tuple[int, int]:
    """(all, backbone's) FLOPs of scoring `images`, the backbone's counted where the method calls
    it: a method that stops at the region map (`Backbone.regions`) is not charged for the stages
    after it, and the rest is the head's."""
    backbone, outer, inside = method.backbone, FlopCounterMode(display=False), []
    entry_points = ("regions", "stages", "class_logits")  # how methods reach their backbone

    def counted(call):
        def run(*args):
            counter = FlopCounterMode(display=False)  # one per call: entering a counter resets it
            with counter:
                result = call(*args)
            inside.append(counter.get_total_flops())
            return result
        return run

    for name in entry_points:
        setattr(backbone, name, counted(getattr(backbone, name)))  # instance attributes shadow the methods
    try:
        with outer:
            method.score(method.encode(images), labels)
    finally:
        for name in entry_points:
            delattr(backbone, name)
    return outer.get_total_flops(), sum(inside)


def random_labels(n: int, dim: int, seed: int = 0, names: list[str] | None = None) -> LabelSet:
    """`n` labels with random unit vectors: a method's cost does not depend on what its labels mean,
    so benchmarks need no text model."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    return LabelSet(names if names is not None else [f"l{i}" for i in range(n)], vectors)


def build_head(method_name: str, backbone: Backbone, seen: LabelSet) -> Method:
    """`method_name` on `backbone` with its recipe's defaults and random label semantics.

    RGCN-PosVAE falls back to its variant without external nodes when the backbone has no
    pretraining classifier to supply them.
    """
    cls = method_class(method_name)
    hp = cls.hyperparameters({"variant": "rgcn"} if method_name == "rgcn-posvae" and backbone.classifier is None else {})
    return cls(backbone, seen, hp, lambda names: random_labels(len(names), seen.dim, seed=1, names=names))


def measure(method_name: str, backbone_name: str, size: int, n_labels: int, batch: int, engine: Engine, dim: int = 384) -> dict:
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
    return {"method": method_name, "backbone_MFLOP": backbone_flops / batch / 1e6,
            "head_MFLOP": (total_flops - backbone_flops) / batch / 1e6, "ms_per_image": 1e3 * statistics.median(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zstag.bench.heads", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vgg19")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    engine = Engine(args.device)
    rows = [measure(m, args.backbone, args.image_size, args.labels, args.batch, engine) for m in args.methods.split(",")]
    where = torch.cuda.get_device_name() if engine.device.type == "cuda" else f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{args.backbone} at {args.image_size} px, {args.labels} labels, batch {args.batch}, {where}, torch {torch.__version__}")
    print("| method | backbone MFLOP/img | head MFLOP/img | ms/img (backbone + head) |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['backbone_MFLOP']:.0f} | {r['head_MFLOP']:.1f} | {r['ms_per_image']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": where, "args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
