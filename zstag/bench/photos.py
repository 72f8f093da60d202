"""Synthetic photos for `zstag bench`: what a camera's JPEGs cost to decode, made offline in a moment."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

PHOTO_SIZE = (500, 375)
DISTINCT_PHOTOS = 256  # beyond this, photos are hard links to the first ones (generating costs ~30 ms each)


def write_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """`n` photo-like JPEGs (gradient sky, blurred shapes, sensor noise) of PHOTO_SIZE.

    Synthetic but with what makes photos cost what they cost to decode: smooth areas, edges and
    noise, at quality 90. Past DISTINCT_PHOTOS, files are hard links (or copies) of earlier ones.
    """
    from PIL import Image, ImageDraw, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = PHOTO_SIZE
    ramp = (np.arange(width)[None, :] + np.arange(height)[:, None]) / (width + height)
    paths = []
    for i in range(n):
        path = folder / f"photo{i:05d}.jpg"
        paths.append(path)
        if i >= DISTINCT_PHOTOS:
            source = paths[i % DISTINCT_PHOTOS]
            try:
                os.link(source, path)
            except OSError:
                shutil.copyfile(source, path)
            continue
        top, bottom = rng.uniform(0, 255, (2, 3))
        sky = top * (1 - ramp[..., None]) + bottom * ramp[..., None] + rng.normal(0, 12, (height, width, 3))
        picture = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(rng.integers(3, 9)):
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            w, h = (int(side) for side in rng.integers(20, 200, 2))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            red, green, blue = (int(c) for c in rng.integers(0, 256, 3))
            shape((x0, y0, x0 + w, y0 + h), fill=(red, green, blue))
        pixels = np.asarray(picture.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.int16)
        pixels = pixels + rng.normal(0, 6, pixels.shape).astype(np.int16)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return paths
