"""Decode any image file a user points us at into an RGB picture, or say in a few words why not.

Tagging runs over folders of real photos and drawings, dirt included (zero-byte files, HTML saved
as .jpg, half-downloaded JPEGs, a 623-megapixel clip-art PNG). One bad file must never stop a run:
`decode_image` turns every failure into `zstag.core.errors.ImageError(reason)`, which the engine reports
per input (exit code 3, GUIDE §1) while every readable input still gets its tags.

Choices made here, and why (docs/reliability.md lists the tests that pin each one):
- Pillow's decompression-bomb guard stays on. Pillow warns above `Image.MAX_IMAGE_PIXELS` and
  refuses above twice that; we keep exactly its policy and turn the refusal into a reason.
- Truncated files are reported ("truncated JPEG"), not tagged from what decodes. Pillow's switch
  for partial decoding, `ImageFile.LOAD_TRUNCATED_IMAGES`, is a process-wide global: flipping it
  around one decode would race with decodes in other threads. And a half-grey picture gives
  confident tags for content that is not there; an error tells the user to fetch the file again.
- Transparent pixels are composited on white: clip art and logos are drawn to be seen on white
  paper, and black (what dropping the alpha channel gives) turns line art into a black square.
- 16-bit samples are scaled (65535 -> 255), never clipped; colour profiles are not applied
  (CMYK goes through Pillow's plain conversion, as torchvision and timm loaders do).
- When the caller says which square size it will resize to, we decode less: JPEG's DCT scaling
  (`Image.draft`) and, for any format, an integer box reduction (`Image.reduce`) once the picture
  is more than 4x the needed size, keeping at least twice that size (the reducing gap Pillow's
  `thumbnail` uses) so the final antialiased resize still has detail to average.
- EXIF orientation is applied after shrinking, where a transpose is cheap; the table is the
  EXIF Orientation tag's, the same one `ImageOps.exif_transpose` uses. A malformed EXIF block
  is ignored (the pixels are fine) rather than rejecting the image.
- Memory per image is bounded by what the file decodes to, not by what converting it costs:
  palette, 1-bit and 16-bit pictures (whose samples cannot be box-averaged) are converted to RGB
  and reduced strip by strip, never whole at full size (a 169 Mpx 16-bit PNG peaked at about a
  gigabyte before). The decoded pixels of all pictures being decoded at once in this process share
  a budget (`DECODE_BUDGET`): a large picture waits for others to finish rather than add to them,
  and one picture larger than the whole budget still decodes, alone.
- A PNG whose image data ends early (a header claiming 169 Mpx over one row of data) is reported
  as truncated, not tagged from the black rows Pillow fills in: when the file is implausibly small
  for its header, its data stream is inflated once, counting bytes, to check it is complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import struct
import threading
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from zstag.core.errors import ImageError

# Common still-image extensions, kept to those the installed Pillow can actually open (AVIF, for
# one, needs Pillow >= 11.2), so that a folder walk never selects files it cannot read.
_COMMON_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".mpo",
    ".png",
    ".apng",
    ".webp",
    ".bmp",
    ".dib",
    ".gif",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tga",
    ".ico",
    ".jp2",
    ".j2k",
    ".jpx",
    ".avif",
)
IMAGE_EXTENSIONS: frozenset[str] = frozenset(ext for ext in _COMMON_EXTENSIONS if ext in Image.registered_extensions())

WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
# Modes whose samples may be box-averaged: palette indices and 1-bit pixels may not, and Pillow's
# reduce has no 16-bit kernel, so those are flattened to RGB before shrinking.
_AVERAGEABLE_MODES = frozenset({"L", "LA", "I", "F", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr"})
# Bytes per pixel of what Pillow decodes into, per mode (other modes: 4).
_PIXEL_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "PA": 2,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
}
# Pixels converted at once when a picture must be flattened before it is reduced.
_STRIP_PIXELS = 4_000_000
# A PNG whose header promises more than this many times its own size is inflated once to check its data.
_PNG_PLAUSIBLE_RATIO = 64
# EXIF Orientation tag (0x0112) value -> the transpose that shows the picture upright.
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class DecodeBudget:
    """Decoded bytes allowed at once across the threads of this process.

    Tagging on a CPU decodes one batch per stream thread; four pictures of 169 Mpx at once would
    need gigabytes. A picture reserves what its pixels decode to before decoding and waits while
    others hold the budget; with nothing else held, any picture may start, so nothing deadlocks.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self.held == 0 or self.held + nbytes <= self.limit)
            self.held += nbytes
        try:
            yield
        finally:
            with self._changed:
                self.held -= nbytes
                self._changed.notify_all()


DECODE_BUDGET = DecodeBudget(1 << 30)


def decode_image(path: str | os.PathLike[str], size: int | None = None) -> Image.Image:
    """Read `path` as an upright RGB image; raise only `ImageError` with a short reason.

    `size` is the square side the caller will resize to; it lets large pictures be decoded
    at a reduced scale (never below `size` on either side). The exact resize is `to_tensor`'s job.
    """
    _check_path(path)
    try:
        with open(path, "rb") as fh:
            return _decode(fh, size)
    except ImageError:
        raise
    except Exception as exc:  # a decoder fed hostile bytes can raise anything: keep the run going
        raise ImageError(_describe(exc)) from exc


def to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """uint8 tensor (3, size, size): the RGB image squashed to a square, bilinear with antialias.

    The methods' papers feed fixed squares; squashing keeps every object in view where a centre
    crop could cut a tagged one out. Normalisation happens on the device, in the engine.
    """
    if image.mode != "RGB":
        raise ValueError(f"to_tensor expects an RGB image (decode_image's output), got {image.mode}")
    # Pillow's bilinear filter widens its support when shrinking, which is the antialiasing.
    square = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    pixels = np.array(square, dtype=np.uint8)  # a writable copy, so torch may own it
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _check_path(path: str | os.PathLike[str]) -> None:
    """Name the problems a path has before any byte is read (and never block on a FIFO)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError("broken symlink" if os.path.islink(path) else "no such file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:
        reason = "symlink loop" if exc.errno == errno.ELOOP else f"cannot read ({exc.strerror})"
        raise ImageError(reason) from None
    except ValueError:  # a NUL character, which no file name can hold (a path read from stdin)
        raise ImageError("the path holds a NUL character") from None
    if stat.S_ISDIR(info.st_mode):
        readable = os.access(path, os.R_OK | os.X_OK)
        raise ImageError("is a directory" if readable else "unreadable directory (permission denied)")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError("not a regular file")
    if info.st_size == 0:
        raise ImageError("empty file")


def _decode(fh: BinaryIO, size: int | None) -> Image.Image:
    """Open, decode (at a reduced scale when allowed), flatten to RGB and turn upright."""
    try:
        picture: Image.Image = Image.open(fh)
    except UnidentifiedImageError:
        raise ImageError("not an image (cannot identify)") from None
    kind = picture.format or "image"
    if size is not None:
        picture.draft("RGB", (size, size))  # JPEG: DCT scaling; other formats: a no-op
    if kind == "PNG" and _png_data_ends_early(fh):
        raise ImageError("truncated PNG (its image data ends before the picture does)")
    with DECODE_BUDGET.hold(picture.width * picture.height * _PIXEL_BYTES.get(picture.mode, 4)):
        try:
            picture.load()  # the first frame of an animation
        except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError... on bad data
            truncated = isinstance(exc, OSError) and "truncated" in str(exc).lower()
            raise ImageError(f"truncated {kind}" if truncated else _describe(exc, kind)) from exc
        orientation = _orientation(picture)
        # Shrink while the samples are still few bytes each; samples that cannot be averaged are
        # converted first, a strip at a time.
        if picture.mode not in _AVERAGEABLE_MODES or "transparency" in picture.info:
            picture = _flatten_and_shrink(picture, size)
        else:
            picture = _to_rgb(_shrink(picture, size) if size is not None else picture)
    return picture.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else picture


def _flatten_and_shrink(picture: Image.Image, size: int | None) -> Image.Image:
    """`_to_rgb` then `_shrink`, computed strip by strip so that no full-size RGB copy exists.

    Strips are whole multiples of the reduction factor, so box-averaging each strip gives exactly
    the pixels that reducing the whole picture would.
    """
    factor = _reduction(picture, size) if size is not None else 1
    if factor < 2 or picture.width * picture.height <= _STRIP_PIXELS:
        return _shrink(_to_rgb(picture), size) if size is not None else _to_rgb(picture)
    rows = max(1, _STRIP_PIXELS // (picture.width * factor)) * factor
    out = Image.new("RGB", (-(-picture.width // factor), -(-picture.height // factor)))  # reduce rounds up
    for top in range(0, picture.height, rows):
        strip = picture.crop((0, top, picture.width, min(top + rows, picture.height)))
        out.paste(_to_rgb(strip).reduce(factor), (0, top // factor))
    return out


def _png_data_ends_early(fh: BinaryIO) -> bool:
    """Whether a non-interlaced PNG's image data inflates to fewer bytes than its header promises.

    Checked only when the file is implausibly small for its header (over `_PNG_PLAUSIBLE_RATIO`
    times smaller than its raw rows), which real photos and drawings never are; then the stream
    is inflated once in bounded pieces, only counting. Interlaced files are left to Pillow.
    """
    start = fh.tell()
    try:
        fh.seek(8)
        length, kind = struct.unpack(">I4s", fh.read(8))
        if kind != b"IHDR" or length != 13:
            return False
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", fh.read(13))
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
        if channels is None or interlace:
            return False
        expected = height * (1 + (width * channels * depth + 7) // 8)
        file_size = os.fstat(fh.fileno()).st_size
        if expected <= _PNG_PLAUSIBLE_RATIO * file_size:
            return False
        fh.seek(8 + 8 + 13 + 4)
        inflate, produced = zlib.decompressobj(), 0
        while produced < expected:
            header = fh.read(8)
            if len(header) < 8:
                break
            length, kind = struct.unpack(">I4s", header)
            data = fh.read(length)
            fh.seek(4, os.SEEK_CUR)  # the chunk's CRC
            if kind == b"IEND":
                break
            if kind != b"IDAT":
                continue
            while data and produced < expected:
                produced += len(inflate.decompress(data, 1 << 20))
                data = inflate.unconsumed_tail
        return produced < expected
    except (OSError, struct.error, zlib.error):
        return False  # Pillow's own decoding reports what is wrong
    finally:
        fh.seek(start)


def _orientation(picture: Image.Image) -> int:
    """EXIF orientation (1 = upright). Read while the file is open: TIFF keeps its tags there."""
    try:
        return int(picture.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF: the pixels are still good, show them as stored
        return 1


def _reduction(picture: Image.Image, size: int) -> int:
    """The box-reduction factor for `size`: each side stays >= 2 * size, so the final bilinear
    resize still averages real detail; below 2, no reduction."""
    return min(picture.width // size, picture.height // size) // 2


def _shrink(picture: Image.Image, size: int) -> Image.Image:
    """Box-average by an integer factor when the picture is over 4x `size` on both sides."""
    factor = _reduction(picture, size)
    return picture.reduce(factor) if factor >= 2 else picture


def _to_rgb(picture: Image.Image) -> Image.Image:
    """A new RGB image from any mode: 16/32-bit scaled to 8 bits, transparency over white."""
    if picture.mode.startswith("I;16"):
        picture = _sixteen_to_gray8(np.asarray(picture))
    elif picture.mode == "I":
        # Older Pillow versions open 16-bit greyscale PNGs as mode I, so I is read as 16-bit
        # samples; values outside 0..65535 (a true 32-bit image) are stretched over their range.
        samples = np.asarray(picture)
        if samples.size and samples.min() >= 0 and samples.max() <= 65535:
            picture = _sixteen_to_gray8(samples)
        else:
            picture = _gray8(_stretch(samples.astype(np.float64)))
    elif picture.mode == "F":
        samples = np.nan_to_num(np.asarray(picture).astype(np.float64))
        unit = samples.size and samples.min() >= 0 and samples.max() <= 1
        picture = _gray8(samples if unit else _stretch(samples))
    if picture.mode in _ALPHA_MODES or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))  # straight alpha: a*colour + (1-a)*white
        return canvas
    return picture.convert("RGB")  # a copy even when already RGB: nothing tied to the file


def _stretch(samples: np.ndarray) -> np.ndarray:
    """Map the samples' own range onto 0..1 (a constant image becomes black)."""
    low, high = (float(samples.min()), float(samples.max())) if samples.size else (0.0, 0.0)
    return (samples - low) / (high - low) if high > low else np.zeros_like(samples)


def _sixteen_to_gray8(samples: np.ndarray) -> Image.Image:
    """v * 255 / 65535, rounded, in integers (exact, and a quarter of float64's memory)."""
    return Image.fromarray(((samples.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))


def _gray8(unit: np.ndarray) -> Image.Image:
    """An L image from samples in 0..1, rounded to the nearest 8-bit level."""
    return Image.fromarray(np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8))


def _describe(exc: BaseException, kind: str | None = None) -> str:
    """A short reason for an exception that escaped the specific checks above.

    `kind` is the format Pillow recognised, when it got that far ("JPEG", "PNG").
    """
    if isinstance(exc, Image.DecompressionBombError):
        numbers = [int(n) for n in re.findall(r"\d+", str(exc))]
        if len(numbers) >= 2:
            return (
                f"decompression bomb: {_megapixels(numbers[0])} Mpx exceeds the limit ({_megapixels(numbers[1])} Mpx)"
            )
        return "decompression bomb: exceeds Pillow's pixel limit"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot read ({exc.strerror})"
    detail = str(exc).strip()[:120] or type(exc).__name__
    return f"corrupt {kind} ({detail})" if kind else f"cannot decode ({type(exc).__name__}: {detail})"


def _megapixels(pixels: int) -> str:
    """623 for 623,000,000 pixels; two significant digits below ten megapixels."""
    return f"{pixels / 1e6:.0f}" if pixels >= 10_000_000 else f"{pixels / 1e6:.2g}"
