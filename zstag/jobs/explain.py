"""`zstag explain`: a picture per image of where the model looked for its top tags.

What each method shows is what it has (`Method.explain`): LESA the attention map of the module
that produced each tag's score, (ML)^2P the spatial response of the group that produced it, SGMA
the boxes of its two parts; methods with no spatial output (Fast0Tag, ConSE, RGCN-PosVAE) get a
gradient-free occlusion map: how much each tag's score drops when a patch of the image is greyed
out. Images are decoded, batched and normalised by the engine (`Engine.images`), as for tagging.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from zstag.core import console
from zstag.data.images import decode_image
from zstag.data.vocab import read_vocabulary
from zstag.engine.engine import Engine
from zstag.core.errors import UsageError
from zstag.jobs.options import ExplainOptions
from zstag.store.model import load_model

TILE = 224  # side of each panel in the output picture


def _overlay(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """The image dimmed where the map is low and tinted red where it is high."""
    heat_img = Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    h = np.asarray(heat_img, dtype=np.float32)[..., None] / 255
    base = np.asarray(image, dtype=np.float32)
    red = np.array([255, 40, 40], dtype=np.float32)
    mixed = base * (0.35 + 0.65 * h) * (1 - 0.45 * h) + red * 0.45 * h
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8))


def _panel(image: Image.Image, caption: str) -> Image.Image:
    panel = Image.new("RGB", (TILE, TILE + 18), "white")
    panel.paste(image.resize((TILE, TILE)), (0, 18))
    ImageDraw.Draw(panel).text((4, 3), caption[:36], fill="black")
    return panel


def render(image: Image.Image, tags: list[tuple[str, float]], maps: list[np.ndarray] | None,
           boxes: np.ndarray | None) -> Image.Image:
    """One row: the image (with part boxes when given), then one panel per tag with its map."""
    shown = image.resize((TILE, TILE))
    first = shown.copy()
    if boxes is not None:
        draw = ImageDraw.Draw(first)
        for colour, (x0, y0, x1, y1) in zip(("red", "blue", "green", "orange"), boxes):
            draw.rectangle([x0 * TILE, y0 * TILE, x1 * TILE, y1 * TILE], outline=colour, width=3)
    panels = [_panel(first, ", ".join(label for label, _ in tags))]
    for n, (label, score) in enumerate(tags):
        if maps is not None:
            panels.append(_panel(_overlay(shown, maps[n]), f"{label} {score:.3g}"))
    out = Image.new("RGB", (TILE * len(panels), TILE + 18), "white")
    for i, p in enumerate(panels):
        out.paste(p, (i * TILE, 0))
    return out


def explain(opts: ExplainOptions) -> int:
    from zstag.data.inputs import iter_inputs

    vocab = read_vocabulary(opts.labels)
    items = list(iter_inputs(opts.inputs))
    if not items:
        raise UsageError("no input images found")
    model = load_model(opts.model)
    engine = Engine(opts.device)
    method = engine.prepare(model.method)
    labels = model.embed(vocab).to(engine.device)
    opts.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    paths = [path for _, path in items]
    for indices, images, failed in engine.images(method.backbone, paths, model.image_size):
        for i, reason in failed:
            console.warn(f"cannot read {items[i][0]}: {reason}")
        failures += len(failed)
        if images is None:
            continue
        with torch.inference_mode():
            scores = method(images, labels).float()
            for row, i in enumerate(indices):
                display, path = items[i]
                top = scores[row].topk(min(opts.top_k, len(labels)))
                tags = [(labels.names[t], float(v)) for v, t in zip(top.values.tolist(), top.indices.tolist())]
                shown = method.explain(images[row:row + 1], labels.subset(top.indices.tolist()))
                maps = None
                if shown.maps is not None:
                    small = F.interpolate(shown.maps[:1].float(), size=(56, 56), mode="bilinear", align_corners=False)[0]
                    maps = [m.clamp(0, 1).cpu().numpy() for m in small]
                boxes = None if shown.boxes is None else shown.boxes[0].float().cpu().numpy()
                # The panel shows the picture at its decoded resolution, not the model's input square.
                name = Path(display).name.rsplit(".", 1)[0] + ".explain.png"
                render(decode_image(path, model.image_size), tags, maps, boxes).save(opts.out / name)
                print(opts.out / name)
    return 3 if failures else 0
