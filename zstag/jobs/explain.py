"""`zstag explain`: a picture per image of where the model looked for its top tags.

What each method shows is what it has: LESA the attention map of the module that produced each
tag's score, (ML)^2P the spatial response of the group that produced it, SGMA the boxes of its
two parts; methods with no spatial output (Fast0Tag, ConSE, RGCN-PosVAE) get a gradient-free
occlusion map: how much each tag's score drops when a patch of the image is greyed out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from zstag.core import console
from zstag.data.images import decode_image, to_tensor
from zstag.data.vocab import read_vocabulary
from zstag.engine.engine import Engine
from zstag.core.errors import ImageError, UsageError
from zstag.data.labels import LabelSet
from zstag.methods.base import Method
from zstag.store.model import load_model

TILE = 224  # side of each panel in the output picture


@dataclass
class ExplainOptions:
    inputs: list[str]
    labels: Path
    out: Path
    model: str = "default"
    top_k: int = 3
    device: str = "auto"


def occlusion_maps(method: Method, images: torch.Tensor, labels: LabelSet, grid: int = 7) -> torch.Tensor:
    """(B, L, grid, grid): the drop of each label's score when each cell is set to the mean (zero)."""
    base = method(images, labels)
    b, _, h, w = images.shape
    drops = torch.zeros(b, len(labels), grid, grid, device=images.device)
    ys = np.linspace(0, h, grid + 1).astype(int)
    xs = np.linspace(0, w, grid + 1).astype(int)
    for i in range(grid):
        for j in range(grid):
            masked = images.clone()
            masked[:, :, ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = 0  # 0 is the mean after normalisation
            drops[:, :, i, j] = (base - method(masked, labels)).clamp(min=0)
    peak = drops.flatten(2).amax(dim=2).clamp(min=1e-12)
    return drops / peak[:, :, None, None]


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
    engine = Engine(opts.device, batch_size=1, workers=0)
    method = engine.prepare(model.method)
    labels = model.embed(vocab).to(engine.device)
    backbone = method.backbone
    opts.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for display, path in items:
        try:
            image = decode_image(path, model.image_size)
        except ImageError as exc:
            console.warn(f"cannot read {display}: {exc}")
            failures += 1
            continue
        x = engine.normalise(to_tensor(image, model.image_size)[None], backbone.mean, backbone.std)
        with torch.inference_mode():
            scores = method(x, labels).float()[0]
            k = min(opts.top_k, len(labels))
            top = scores.topk(k)
            chosen = labels.subset(top.indices.tolist())
            tags = [(labels.names[i], float(v)) for v, i in zip(top.values.tolist(), top.indices.tolist())]
            maps = boxes = None
            if hasattr(method, "explain_boxes"):
                boxes = method.explain_boxes(x)[0].float().cpu().numpy()
            elif hasattr(method, "explain"):
                maps = method.explain(x, chosen)[0].float()
            else:
                maps = occlusion_maps(method, x, chosen)[0]
            if maps is not None:
                maps = F.interpolate(maps[None], size=(56, 56), mode="bilinear", align_corners=False)[0]
                maps = [m.clamp(0, 1).cpu().numpy() for m in maps]
        name = Path(display).name.rsplit(".", 1)[0] + ".explain.png"
        render(image, tags, maps, boxes).save(opts.out / name)
        print(opts.out / name)
    return 3 if failures else 0
