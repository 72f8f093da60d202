"""`zstag explain`: a picture per image of where the model looked for its top tags.

What each method shows is what it has (`Method.explain`): LESA the attention map of the module
that produced each tag's score, (ML)^2P the spatial response of the group that produced it, SGMA
the boxes of its two parts; methods with no spatial output (Fast0Tag, ConSE, RGCN-PosVAE) get a
gradient-free occlusion map: how much each tag's score drops when a patch of the image is greyed
out. Images are decoded, batched and normalised by the engine (`Engine.images`), as for tagging.

The picture says only what the model has to say: when its maps are the same for every tag (LESA
with one attention module, an occlusion map that every score follows alike) it shows one map and a
note instead of identical panels that would look like per-tag evidence. Scores are in `tag`'s
units (calibrated probabilities when the model has a calibration), and images keep their aspect
ratio: the model's square input is stretched back to the picture's shape, maps and boxes with it.

Each PNG is named after its input's file name, extension included (`b.jpg` and `b.png` give
`b.jpg.explain.png` and `b.png.explain.png`); a name met again (`x.jpg` in two folders) gets a
number (`x.jpg.2.explain.png`). zstag marks its PNGs, and never overwrites a file it did not write.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from zstag.core import console
from zstag.core.atomic import make_output_folder
from zstag.core.errors import UsageError
from zstag.data.images import decode_image
from zstag.data.vocab import read_vocabulary
from zstag.engine.engine import Engine
from zstag.eval.calibration import apply as apply_calibration
from zstag.jobs.options import ExplainOptions
from zstag.outputs.pictures import KEY, save_marked, written_by
from zstag.outputs.streams import escape_name
from zstag.store.model import load_model

TILE = 224  # side of each panel's picture
LINE = 18  # height of a line of text
CHARS_PER_TILE = 36  # characters of the default font that fit a panel's width
MARK = (KEY, "zstag explain")  # PNG text chunk telling zstag's pictures from others
SAME_MAPS = "the model's map is the same for every tag: it shows where the model looked, not where each tag is"
PART_COLOURS = ("red", "blue", "green", "orange")


def letterbox(image: Image.Image, side: int = TILE) -> Image.Image:
    """`image` scaled to fit a `side` square, aspect ratio kept, centred on white."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    shown = image.resize(size, Image.Resampling.BILINEAR)
    square = Image.new("RGB", (side, side), "white")
    square.paste(shown, ((side - shown.width) // 2, (side - shown.height) // 2))
    return square


def overlay(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """The image dimmed where the map is low and tinted red where it is high; the map (of the
    model's square input) is stretched to the image's own shape."""
    heat_img = Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    h = np.asarray(heat_img, dtype=np.float32)[..., None] / 255
    base = np.asarray(image, dtype=np.float32)
    red = np.array([255, 40, 40], dtype=np.float32)
    mixed = base * (0.35 + 0.65 * h) * (1 - 0.45 * h) + red * 0.45 * h
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8))


def with_boxes(image: Image.Image, boxes: np.ndarray) -> Image.Image:
    """The image with part boxes ((x0, y0, x1, y1) fractions) drawn on it, one colour per part."""
    drawn = image.copy()
    draw = ImageDraw.Draw(drawn)
    width = max(2, round(max(image.size) / 100))
    for colour, (x0, y0, x1, y1) in zip(PART_COLOURS, boxes, strict=False):
        draw.rectangle(
            [x0 * image.width, y0 * image.height, x1 * image.width, y1 * image.height], outline=colour, width=width
        )
    return drawn


def same_maps(maps: list[np.ndarray]) -> bool:
    """Whether the maps of several tags are, to the eye, one map."""
    return len(maps) > 1 and all(np.allclose(m, maps[0], atol=0.02) for m in maps[1:])


def render(
    image: Image.Image, tags: list[tuple[str, str]], maps: list[np.ndarray] | None, boxes: np.ndarray | None
) -> Image.Image:
    """The picture: a title (the tags and their scores, and a note when the maps do not differ per
    tag) above a row of panels, each captioned above its letterboxed picture: the image (with the
    part boxes when given), then the map of each tag, or one map when they are all the same."""
    panels = [
        (
            "parts: " + ", ".join(PART_COLOURS[: len(boxes)]) if boxes is not None else "image",
            with_boxes(image, boxes) if boxes is not None else image,
        )
    ]
    note = None
    if maps is not None:
        if same_maps(maps):
            note = SAME_MAPS
            panels.append(("every tag", overlay(image, maps[0])))
        else:
            panels += [
                (f"{label} {score}", overlay(image, heat)) for (label, score), heat in zip(tags, maps, strict=True)
            ]
    side = TILE if len(panels) > 1 else 2 * TILE  # a lone picture (SGMA's parts) is drawn larger
    width = side * len(panels)
    title = textwrap.wrap("tags: " + ", ".join(f"{label} {score}" for label, score in tags), width // 6)
    title += textwrap.wrap(f"note: {note}", width // 6) if note else []
    if boxes is not None:
        title += textwrap.wrap("every tag is scored from these parts", width // 6)
    top = LINE * len(title)
    picture = Image.new("RGB", (width, top + LINE + side), "white")
    draw = ImageDraw.Draw(picture)
    for n, line in enumerate(title):
        draw.text((4, n * LINE + 3), line, fill="black")
    for n, (caption, shown) in enumerate(panels):
        draw.text((n * side + 4, top + 3), caption[:CHARS_PER_TILE], fill="black")
        picture.paste(letterbox(shown, side), (n * side, top + LINE))
    return picture


def score_text(scores: torch.Tensor, calibrated: bool) -> list[str]:
    """Scores as `tag` reports them: probabilities with two decimals, or raw values marked so."""
    return [f"{v:.2f}" if calibrated else f"{v:.3g} (raw)" for v in scores.tolist()]


def output_names(displays: list[str]) -> list[str]:
    """A PNG name per input: its file name with extension, numbered when met again."""
    names, used = [], set()
    for display in displays:
        base = Path(display).name or "stdin"
        name, n = f"{base}.explain.png", 1
        while name in used:
            n += 1
            name = f"{base}.{n}.explain.png"
        used.add(name)
        names.append(name)
    return names


def explain(opts: ExplainOptions) -> int:
    from zstag.data.inputs import iter_inputs

    vocab = read_vocabulary(opts.labels)
    items = list(iter_inputs(opts.inputs))
    if not items:
        raise UsageError("no input images found")
    targets = [opts.out / name for name in output_names([display for display, _ in items])]
    foreign = [str(t) for t in targets if t.exists() and not written_by(t, MARK[1])]
    if foreign:
        raise UsageError(
            f"{len(foreign)} file(s) in {opts.out} that zstag did not write would be overwritten "
            f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); choose another --out"
        )
    model = load_model(opts.model)
    engine = Engine(opts.device)
    method = engine.prepare(model.method)
    labels = model.embed(vocab).to(engine.device)
    calibration = model.config.get("calibration")
    make_output_folder(opts.out, "--out")
    failures, noted = 0, False
    paths = [path for _, path in items]
    with console.progress("explaining", len(items)) as bar:
        for indices, images, failed in engine.images(method.backbone, paths, model.image_size):
            for i, reason in failed:
                console.warn(f"cannot read {items[i][0]}: {reason}")
            failures += len(failed)
            bar.update(len(failed))
            if images is None:
                continue
            with torch.inference_mode():
                scores = method(images, labels).float()
                for row, i in enumerate(indices):
                    top = scores[row].topk(min(opts.top_k, len(labels)))
                    shown_scores = apply_calibration(top.values, calibration)
                    tags = list(
                        zip(
                            [labels.names[t] for t in top.indices.tolist()],
                            score_text(shown_scores, bool(calibration)),
                            strict=True,
                        )
                    )
                    shown = method.explain(images[row : row + 1], labels.subset(top.indices.tolist()))
                    maps = None
                    if shown.maps is not None:
                        small = F.interpolate(
                            shown.maps[:1].float(), size=(56, 56), mode="bilinear", align_corners=False
                        )[0]
                        maps = [m.clamp(0, 1).cpu().numpy() for m in small]
                    boxes = None if shown.boxes is None else shown.boxes[0].float().cpu().numpy()
                    # The panels show the picture at its decoded resolution and shape, not the model's square.
                    picture = render(decode_image(paths[i], model.image_size), tags, maps, boxes)
                    if not noted and maps is not None and same_maps(maps):
                        console.info(f"note: {SAME_MAPS}")
                        noted = True
                    save_marked(picture, targets[i], MARK[1])
                    print(escape_name(str(targets[i])).replace("\n", "\\n").replace("\r", "\\r"))
                    bar.update(1)
    return 3 if failures else 0
