"""decode_image / to_tensor: every bad file becomes an ImageError with its reason; every mode
becomes the RGB a viewer would show. Each case builds its own file in tmp_path."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from zstag.core.errors import ImageError
from zstag.data import images
from zstag.data.images import IMAGE_EXTENSIONS, decode_image, to_tensor

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _reason(path: Path | str, size: int | None = None) -> str:
    with pytest.raises(ImageError) as caught:
        decode_image(path, size)
    return str(caught.value)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _halves(width: int, height: int, left=RED, right=BLUE) -> Image.Image:
    """Left half one colour, right half another: shows where a rotation put things."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = left
    pixels[:, width // 2 :] = right
    return Image.fromarray(pixels)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _near(pixel, expected, tolerance: int = 8) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected))


# ---- files that are not images, or not readable ----------------------------------------------


def test_empty_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    assert _reason(tmp_path / "a.jpg") == "empty file"


def test_text_named_jpg(tmp_path):
    (tmp_path / "a.jpg").write_text("<html>404 Not Found</html>")
    assert _reason(tmp_path / "a.jpg") == "not an image (cannot identify)"


def test_missing_file(tmp_path):
    assert _reason(tmp_path / "nope.jpg") == "no such file"


def test_truncated_jpeg_and_png(tmp_path):
    jpeg = _encoded(_noise(64, 64), "JPEG")
    png = _encoded(_noise(64, 64), "PNG")
    (tmp_path / "a.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "a.png").write_bytes(png[: len(png) // 2])
    assert _reason(tmp_path / "a.jpg") == "truncated JPEG"
    assert _reason(tmp_path / "a.png") == "truncated PNG"
    # Reported, not decoded partially, and the process-wide switch is left alone.
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decompression_bomb_header_only(tmp_path):
    """A 57-byte PNG whose header claims 30000 x 30000 pixels: refused before any allocation."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(data)
    assert Image.MAX_IMAGE_PIXELS is not None  # the guard is on
    assert _reason(tmp_path / "bomb.png") == "decompression bomb: 900 Mpx exceeds the limit (179 Mpx)"


def test_decompression_policy_is_pillows(tmp_path, monkeypatch):
    """Pillow warns between the limit and twice it, and refuses above: we keep both sides."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    _noise(40, 40).save(tmp_path / "warned.png")  # 1600 px: over the limit, under twice it
    _noise(50, 50).save(tmp_path / "refused.png")  # 2500 px
    with pytest.warns(Image.DecompressionBombWarning):
        assert decode_image(tmp_path / "warned.png").size == (40, 40)
    assert _reason(tmp_path / "refused.png").startswith("decompression bomb: 0.0025 Mpx")


def test_broken_symlink(tmp_path):
    (tmp_path / "a.jpg").symlink_to(tmp_path / "gone.jpg")
    assert _reason(tmp_path / "a.jpg") == "broken symlink"


def test_symlink_loop(tmp_path):
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    assert _reason(tmp_path / "a.jpg") == "symlink loop"


def test_directory_named_like_an_image(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    assert _reason(tmp_path / "x.jpg") == "is a directory"


def test_fifo_is_not_opened(tmp_path):
    """Opening a FIFO would block the whole run until a writer appears."""
    os.mkfifo(tmp_path / "pipe.jpg")
    assert _reason(tmp_path / "pipe.jpg") == "not a regular file"


def test_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    _noise(8, 8).save(path)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the open itself fail as it would for a user

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(images, "open", refuse, raising=False)
    assert _reason(path) == "permission denied"


def test_non_utf8_file_name(tmp_path):
    name = os.fsencode(tmp_path) + b"/caf\xe9.png"
    with open(name, "wb") as fh:
        fh.write(_encoded(_halves(8, 8), "PNG"))
    display = os.fsdecode(name)
    assert "\udce9" in display  # the undecodable byte, escaped
    assert decode_image(display).getpixel((0, 0)) == RED


# ---- decoding less when a small size is wanted -------------------------------------------------


def test_large_jpeg_uses_draft(tmp_path):
    """1024x768 for a 64 px square: DCT scaling by 8 gives exactly 128x96 (a box reduction
    would give 171x128), still at least the wanted size on both sides."""
    _halves(1024, 768).save(tmp_path / "big.jpg", quality=95)
    image = decode_image(tmp_path / "big.jpg", size=64)
    assert image.size == (128, 96)
    assert _near(image.getpixel((10, 48)), RED, 12) and _near(image.getpixel((118, 48)), BLUE, 12)
    assert decode_image(tmp_path / "big.jpg").size == (1024, 768)  # no size: full scale


def test_large_png_is_reduced(tmp_path):
    """Over 4x the need: box-reduced, keeping >= 2x the wanted size (6x here -> 171x128)."""
    _halves(1024, 768).save(tmp_path / "big.png")
    image = decode_image(tmp_path / "big.png", size=64)
    assert image.size == (171, 128)
    assert image.getpixel((5, 5)) == RED and image.getpixel((165, 5)) == BLUE


def test_small_image_is_not_reduced(tmp_path):
    _noise(200, 100).save(tmp_path / "a.png")
    assert decode_image(tmp_path / "a.png", size=64).size == (200, 100)


def test_large_palette_image_reduced_after_flattening(tmp_path):
    """Averaging palette indices would invent colours; flattened first, the halves stay pure."""
    _halves(512, 512).quantize(2).save(tmp_path / "pal.png")
    image = decode_image(tmp_path / "pal.png", size=32)
    assert image.size == (64, 64)
    assert {tuple(p) for p in np.asarray(image).reshape(-1, 3).tolist()} == {RED, BLUE}


# ---- every mode to RGB --------------------------------------------------------------------


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    image = decode_image(tmp_path / "cmyk.jpg")
    assert image.mode == "RGB" and _near(image.getpixel((8, 8)), RED)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    samples = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(samples).save(tmp_path / "deep.png")
    image = decode_image(tmp_path / "deep.png")
    assert image.mode == "RGB"
    # v * 255 / 65535 rounded; clipping would give 255 for everything but 0.
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 4, 128, 255]


def test_32bit_integer_tiff(tmp_path):
    """Mode I within 0..65535 is read as 16-bit samples; beyond, stretched over its range."""
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32)).save(tmp_path / "i16.tif")
    Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32)).save(tmp_path / "wide.tif")
    sixteen = decode_image(tmp_path / "i16.tif")
    wide = decode_image(tmp_path / "wide.tif")
    assert [sixteen.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    assert [wide.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_tiff(tmp_path):
    """Mode F in 0..1 is scaled by 255; other ranges are stretched."""
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "unit.tif")
    Image.fromarray(np.array([[10.0, 15.0, 20.0]], dtype=np.float32)).save(tmp_path / "hdr.tif")
    assert [decode_image(tmp_path / "unit.tif").getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    assert [decode_image(tmp_path / "hdr.tif").getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_grayscale(tmp_path):
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8)).save(tmp_path / "g.png")
    image = decode_image(tmp_path / "g.png")
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]


def test_palette_transparency_becomes_white(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, *BLUE] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)  # index 0 (black) is transparent
    palette.save(tmp_path / "p.gif", transparency=0)
    for name in ("p.png", "p.gif"):
        image = decode_image(tmp_path / name)
        assert image.getpixel((0, 0)) == WHITE and image.getpixel((1, 0)) == BLUE, name


def test_alpha_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 0, 128)])
    rgba.save(tmp_path / "a.png")
    Image.new("LA", (1, 1), (0, 0)).save(tmp_path / "la.png")
    image = decode_image(tmp_path / "a.png")
    # a * colour + (1 - a) * white: half-transparent black is mid grey.
    assert image.getpixel((0, 0)) == RED and image.getpixel((1, 0)) == WHITE
    assert _near(image.getpixel((2, 0)), (127, 127, 127), 1)
    assert decode_image(tmp_path / "la.png").getpixel((0, 0)) == WHITE


def test_rgb_png_with_transparent_colour_key(tmp_path):
    _halves(4, 1, RED, BLUE).save(tmp_path / "key.png", transparency=BLUE)
    image = decode_image(tmp_path / "key.png")
    assert image.getpixel((0, 0)) == RED and image.getpixel((3, 0)) == WHITE


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert decode_image(tmp_path / "anim.gif").getpixel((4, 4)) == RED


def test_exif_orientation_6(tmp_path):
    """Orientation 6: stored sideways, shown rotated 90 degrees clockwise: the stored left
    half ends on top and width/height swap."""
    exif = Image.Exif()
    exif[0x0112] = 6
    _halves(40, 20).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    image = decode_image(tmp_path / "rot.jpg")
    assert image.size == (20, 40)
    assert _near(image.getpixel((10, 5)), RED, 12) and _near(image.getpixel((10, 35)), BLUE, 12)
    # With draft on (DCT scale 1/4 gives 10x5 stored), the turn still happens: 5x10.
    assert decode_image(tmp_path / "rot.jpg", size=4).size == (5, 10)


def test_malformed_exif_is_ignored(tmp_path):
    _halves(8, 8).save(tmp_path / "bad_exif.jpg", exif=b"Exif\x00\x00garbage-not-tiff", quality=95)
    assert _near(decode_image(tmp_path / "bad_exif.jpg").getpixel((0, 4)), RED, 12)


def test_webp(tmp_path):
    _halves(16, 8).save(tmp_path / "a.webp", lossless=True)
    image = decode_image(tmp_path / "a.webp")
    assert image.mode == "RGB" and image.getpixel((0, 0)) == RED and image.getpixel((15, 0)) == BLUE


def test_result_is_detached_from_the_file(tmp_path):
    """Decoded images outlive their file (the engine decodes ahead of the model)."""
    path = tmp_path / "a.png"
    _halves(8, 8).save(path)
    image = decode_image(path)
    path.unlink()
    assert image.copy().getpixel((7, 0)) == BLUE


def test_image_extensions():
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)
    assert ".txt" not in IMAGE_EXTENSIONS


# ---- to_tensor ----------------------------------------------------------------------------


def test_to_tensor_squashes_to_uint8_square():
    image = _halves(40, 20)
    tensor = to_tensor(image, 8)
    assert tensor.shape == (3, 8, 8) and tensor.dtype == torch.uint8
    assert tensor[:, :, 0].tolist() == [[255] * 8, [0] * 8, [0] * 8]  # left column red
    assert tensor[:, :, 7].tolist() == [[0] * 8, [0] * 8, [255] * 8]  # right column blue
    assert image.size == (40, 20)  # input untouched


def test_to_tensor_antialiases():
    """A one-pixel checkerboard shrunk 8x averages to grey; point sampling would keep 0/255."""
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    tensor = to_tensor(Image.fromarray(board).convert("RGB"), 8)
    assert tensor.min() >= 120 and tensor.max() <= 135


def test_to_tensor_rejects_non_rgb():
    with pytest.raises(ValueError):
        to_tensor(Image.new("L", (4, 4)), 4)


# ---- property: nothing but ImageError ever escapes --------------------------------------------

_MAGICS = [
    b"",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"P6\n",
    b"\x00\x00\x01\x00",
]
_VALID = {fmt: _encoded(_noise(24, 16, seed=1), fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP")}
_EXTENSIONS = [".jpg", ".png", ".gif", ".webp", ".bmp", ".tif"]


def _decodes_or_reports(path: Path, size: int | None) -> None:
    try:
        image = decode_image(path, size)
    except ImageError as error:
        assert str(error)
    else:
        assert image.mode == "RGB" and image.width > 0 and image.height > 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    magic=st.sampled_from(_MAGICS),
    body=st.binary(max_size=600),
    ext=st.sampled_from(_EXTENSIONS),
    size=st.sampled_from([None, 16]),
)
def test_random_bytes_never_raise_anything_else(tmp_path_factory, magic, body, ext, size):
    path = tmp_path_factory.getbasetemp() / f"fuzz{ext}"
    path.write_bytes(magic + body)
    _decodes_or_reports(path, size)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(_VALID)),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=3),
    size=st.sampled_from([None, 16]),
)
def test_damaged_valid_files_never_raise_anything_else(tmp_path_factory, fmt, cut, flips, size):
    data = bytearray(_VALID[fmt][: int(len(_VALID[fmt]) * cut)])
    for where, mask in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] ^= mask
    path = tmp_path_factory.getbasetemp() / f"damaged.{fmt.lower()}"
    path.write_bytes(bytes(data))
    _decodes_or_reports(path, size)


# -- bounded decode memory and PNGs whose data ends early (issue 17 item 11) ---------------------


def _png(path, width: int, height: int, rows: bytes, depth: int = 8, colour: int = 2) -> None:
    """A PNG with the given header and raw (filter byte + samples) rows, compressed as one IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def test_a_png_whose_data_ends_early_is_truncated_not_black(tmp_path):
    short = tmp_path / "short.png"
    _png(short, 3000, 3000, b"\x00" + b"\x80" * 9000)  # one row of data under a 9 Mpx header
    with pytest.raises(ImageError, match="truncated PNG"):
        decode_image(short, 224)
    whole = tmp_path / "flat.png"  # as compressible, but complete: decoded
    _png(whole, 3000, 3000, (b"\x00" + b"\x80" * 9000) * 3000)
    assert decode_image(whole, 224).getpixel((10, 10)) == (128, 128, 128)


def test_palette_and_16_bit_pictures_are_flattened_strip_by_strip_exactly(tmp_path, monkeypatch):
    from zstag.data import images

    rng = np.random.default_rng(0)
    palette = Image.fromarray(rng.integers(0, 255, (1203, 1601, 3), dtype=np.uint8)).quantize(64)
    palette.info["transparency"] = 5
    deep = Image.fromarray(rng.integers(0, 65535, (1203, 1601), dtype=np.uint16))
    for picture in (palette, deep):
        whole = images._shrink(images._to_rgb(picture), 100)
        monkeypatch.setattr(images, "_STRIP_PIXELS", 50_000)  # many strips, the last one partial
        assert np.array_equal(np.asarray(images._flatten_and_shrink(picture, 100)), np.asarray(whole))
        monkeypatch.undo()


def test_decoding_a_large_16_bit_png_adds_little_more_than_its_pixels(tmp_path):
    from zstag.bench.memory import PeakMemory

    path = tmp_path / "deep.png"
    _png(path, 6000, 6000, (b"\x00" + b"\x12\x34" * 6000) * 6000, depth=16, colour=0)  # 72 MB of samples
    with PeakMemory(torch.device("cpu")) as memory:
        picture = decode_image(path, 224)
    assert picture.size == (462, 462) and picture.getpixel((3, 3)) == (18, 18, 18)
    # Converting the whole picture first (uint32 copy, 8-bit copy, RGB copy) peaked near 400 MB.
    assert memory.mib < 160, memory.mib


def test_the_decode_budget_makes_a_large_picture_wait_but_never_deadlocks():
    import threading

    from zstag.data.images import DecodeBudget

    budget, order = DecodeBudget(100), []

    def second() -> None:
        with budget.hold(60):
            order.append(f"second, holding {budget.held}")

    with budget.hold(60):
        waiting = threading.Thread(target=second)
        waiting.start()
        waiting.join(0.2)
        assert waiting.is_alive() and budget.held == 60  # 60 + 60 > 100: it waits
        order.append("first done")
    waiting.join(5)
    assert order == ["first done", "second, holding 60"] and budget.held == 0
    lone = DecodeBudget(10)
    with lone.hold(1000):  # larger than the whole budget, with nothing else held: goes ahead
        assert lone.held == 1000
