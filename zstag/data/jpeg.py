"""Just enough of a JPEG file's header to tell whether a GPU decoder will see what Pillow sees.

The engine decodes plain JPEGs with nvJPEG on CUDA and leaves every other file to Pillow
(`zstag.data.images.decode_image`), whose handling of odd files is what users rely on: CMYK
conversion, EXIF orientation, "truncated JPEG" reports, the decompression-bomb policy. Reading the
markers up to the first scan costs microseconds and needs no decoder, so the choice can be made in
a DataLoader worker, where CUDA must not be touched.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# Start-of-frame markers (all coding processes); C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SOS = 0xDA
# Markers with no length field: TEM and the restart markers (SOI is consumed before the loop).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class JpegHeader:
    """What the frame header and the application segments before the first scan say."""

    process: int  # the SOF marker: 0xC0 baseline, 0xC1 extended sequential, 0xC2 progressive...
    precision: int  # bits per sample
    width: int
    height: int
    components: int  # 1 grey, 3 YCbCr (or RGB), 4 CMYK / YCCK
    orientation: int  # EXIF orientation; 1 when absent, 0 when the EXIF block is unreadable
    adobe_transform: int | None  # APP14 "Adobe" colour transform flag, None without that segment
    multi_picture: bool  # an APP2 "MPF" segment: more pictures follow the first (MPO files)
    complete: bool  # the data ends with the EOI marker


def read_header(data: bytes | bytearray) -> JpegHeader | None:
    """Parse the markers of a whole JPEG file up to its first scan; None when it is not one we can read."""
    if not data.startswith(SOI):
        return None
    pos, frame, exif, adobe, mpf = 2, None, None, None, False
    while True:
        if pos + 2 > len(data) or data[pos] != 0xFF:
            return None
        while pos + 1 < len(data) and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos + 2 > len(data):
            return None
        marker = data[pos + 1]
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > len(data):
            return None
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2 or pos + 2 + length > len(data):
            return None
        if marker == _SOS:
            break
        segment = data[pos + 4 : pos + 2 + length]
        if marker in _SOF and frame is None:
            if len(segment) < 6:
                return None
            frame = (marker, segment[0], *struct.unpack_from(">HH", segment, 1), segment[5])
        elif marker == 0xE1 and exif is None and segment.startswith(b"Exif\x00\x00"):
            exif = segment[6:]  # the first EXIF block counts, as in Pillow
        elif marker == 0xE2 and segment.startswith(b"MPF\x00"):
            mpf = True
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe = segment[11]
        pos += 2 + length
    if frame is None:
        return None
    process, precision, height, width, components = frame
    orientation = 1 if exif is None else exif_orientation(exif)
    return JpegHeader(
        process,
        precision,
        width,
        height,
        components,
        orientation,
        adobe,
        mpf,
        complete=data.rstrip(b"\x00").endswith(EOI),
    )


def exif_orientation(tiff: bytes | bytearray) -> int:
    """The Orientation tag of IFD0 of a TIFF-structured EXIF block: 1 when absent, 0 when unreadable."""
    try:
        order = {b"II": "<", b"MM": ">"}[bytes(tiff[:2])]
        magic, ifd = struct.unpack_from(order + "HI", tiff, 2)
        if magic != 42:
            return 0
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind = struct.unpack_from(order + "HH", tiff, entry)
            if tag == _ORIENTATION_TAG:
                return struct.unpack_from(order + "H", tiff, entry + 8)[0] if kind == 3 else 0
    except (KeyError, struct.error):
        return 0
    return 1


def read_jpeg(path: str | os.PathLike[str]) -> bytearray | None:
    """The bytes of a regular file that starts like a JPEG; None for anything else or any read error.

    Never opens what is not a regular file (a FIFO would block), and reads only two bytes of
    files that are not JPEGs; the Pillow path then names whatever is wrong with them.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as fh:
            head = fh.read(2)
            return bytearray(head + fh.read()) if head == SOI else None
    except OSError:
        return None
