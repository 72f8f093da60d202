"""A small synthetic multi-label set the tests make themselves: coloured shapes on a noisy canvas.

Each label is a phrase "<colour> <shape>" ("red circle"); an image holds one to three such
objects at random places. Phrases share words, so a semantic model can relate unseen labels
("purple square") to seen ones ("purple circle", "red square").
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 170),
    "orange": (250, 140, 0),
}
SHAPES = ("square", "circle", "triangle")
LABELS = [f"{c} {s}" for c in COLOURS for s in SHAPES]
UNSEEN = ["purple square", "orange circle", "green triangle", "yellow square"]


def draw_image(labels: list[str], size: int, rng: random.Random) -> Image.Image:
    """One RGB image showing each of `labels` once."""
    base = np.full((size, size, 3), 200, dtype=np.uint8)
    np_rng = np.random.default_rng(rng.getrandbits(32))
    base = np.clip(base.astype(int) + np_rng.integers(-25, 26, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    for label in labels:
        colour, shape = label.split(" ")
        r = rng.randint(size // 8, size // 5)
        x, y = rng.randint(r, size - r), rng.randint(r, size - r)
        box = (x - r, y - r, x + r, y + r)
        fill = COLOURS[colour]
        if shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "circle":
            draw.ellipse(box, fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return image


def sample_tags(rng: random.Random, labels: list[str] = LABELS) -> list[str]:
    return rng.sample(labels, rng.randint(1, 3))


def make_tensors(
    n: int, size: int = 64, seed: int = 0, labels: list[str] = LABELS
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images as a float tensor (n, 3, size, size) in [0, 1] and multi-hot targets (n, len(labels))."""
    rng = random.Random(seed)
    images, targets = [], torch.zeros(n, len(labels))
    for i in range(n):
        tags = sample_tags(rng, labels)
        images.append(torch.from_numpy(np.array(draw_image(tags, size, rng))).permute(2, 0, 1).float() / 255)
        for t in tags:
            targets[i, labels.index(t)] = 1
    return torch.stack(images), targets


def random_label_vectors(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Random unit vectors standing in for semantic vectors in unit tests."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dim, generator=g)
    return v / v.norm(dim=1, keepdim=True)


def make_dataset(
    root: Path, n: int = 120, size: int = 64, seed: int = 0, single_label: bool = False
) -> dict[str, Path]:
    """Write PNGs, a JSONL manifest, the vocabulary and the unseen list under `root`.

    Returns the paths: manifest, vocab, unseen, images (the folder).
    """
    rng = random.Random(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        tags = [rng.choice(LABELS)] if single_label else sample_tags(rng)
        name = f"img{i:04d}.png"
        draw_image(tags, size, rng).save(images / name)
        rows.append({"image": f"images/{name}", "tags": tags})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    vocab = root / "vocab.txt"
    vocab.write_text("# synthetic labels\n" + "\n".join(LABELS) + "\n")
    unseen = root / "unseen.txt"
    unseen.write_text("\n".join(UNSEEN) + "\n")
    return {"manifest": manifest, "vocab": vocab, "unseen": unseen, "images": images}


def mean_ap(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Plain mean over labels (with a positive) of non-interpolated AP: a test yardstick."""
    aps = []
    for j in range(targets.shape[1]):
        t = targets[:, j]
        if t.sum() == 0:
            continue
        order = torch.argsort(scores[:, j], descending=True)
        hits = t[order]
        precision = torch.cumsum(hits, 0) / torch.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return sum(aps) / len(aps)


def fit(
    model: torch.nn.Module,
    seen,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float = 1e-3,
    batch: int = 32,
    frozen_backbone: bool = False,
) -> None:
    """Train a method for `steps` Adam steps on random batches (seeded): the methods' learning tests
    share this loop so that each test only states its data, its model and its bar."""
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        model.train()
        if frozen_backbone:
            model.backbone.eval()  # as the trainer keeps a frozen backbone (finetune_backbone=False)
        idx = torch.randint(0, len(x), (batch,), generator=g)
        total, _ = model.loss(x[idx], y[idx], seen)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    model.eval()


def noise_pngs(
    folder: Path, count: int, shape: tuple[int, int], unreadable: tuple[int, ...] = (), seed: int = 0
) -> list[Path]:
    """`count` PNGs of random pixels (height, width) named 00.png, 01.png, ...; those at the
    `unreadable` positions hold bytes that are no image."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:02d}.png"
        if i in unreadable:
            path.write_bytes(b"this is not a PNG")
        else:
            Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def tiny_fast0tag(dim: int = 8):
    """A Fast0Tag on a randomly initialised small backbone over four seen labels: a cheap, real
    method for engine tests (scores depend on the pixels through every layer)."""
    from zstag.backbones.small import SmallBackbone
    from zstag.data.labels import LabelSet
    from zstag.methods.fast0tag import Fast0Tag

    torch.manual_seed(0)
    seen = LabelSet([f"l{i}" for i in range(4)], random_label_vectors(4, dim, seed=1))
    return Fast0Tag(SmallBackbone(), seen, Fast0Tag.hyperparameters({"hidden": 16}), embed=lambda names: None).eval()


# Command-line flags that keep a test run on the CPU with no decoding processes (repeatable results, quick start).
ON_CPU = ("--device", "cpu", "--workers", "0")
