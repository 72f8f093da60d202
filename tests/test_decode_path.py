"""Which files the engine decodes on the GPU (nvJPEG) and which stay on Pillow, and that the
device path gives the pixels and tags of the Pillow path.

The routing is pure (header bytes + a device object), so it is tested here on any machine; the
decoder itself is `torchvision.io.decode_jpeg`, whose CPU build runs the same engine code as on a
GPU. Only the last test needs CUDA.
"""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
import torch
from PIL import Image

from zstag.bench.photos import write_photos
from zstag.data.jpeg import exif_orientation, read_header, read_jpeg
from zstag.engine import engine as engine_module
from zstag.engine.engine import CPU, GPU_JPEG, Engine, ImageFiles, Undecoded, collate, decode_route

CUDA, CPU_DEVICE = torch.device("cuda"), torch.device("cpu")
# Calibrated scores (what `zstag tag` prints) may differ this much between the two decoders: they
# differ by DCT-domain downscaling (Pillow's draft mode) and IDCT rounding, never by content.
SCORE_TOLERANCE = 0.02


def picture(seed: int = 0, size: tuple[int, int] = (96, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size[0])[None, :, None] * np.ones((size[1], 1, 3))
    return Image.fromarray(np.clip(ramp + rng.normal(0, 20, ramp.shape), 0, 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def rotated_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One file of each kind the router must tell apart."""
    folder = tmp_path_factory.mktemp("routes")
    kinds = {
        "baseline": encoded(picture(), quality=90),
        "grey": encoded(picture().convert("L")),
        "upright-exif": encoded(picture(), exif=rotated_exif(1)),
        "png": encoded(picture(), "PNG"),
        "cmyk": encoded(picture().convert("CMYK")),
        "progressive": encoded(picture(), progressive=True),
        "rotated": encoded(picture(), exif=rotated_exif(6)),
        "truncated": encoded(picture(), quality=90)[:-200],
        "cut-in-header": encoded(picture())[:40],
    }
    paths = {}
    for name, data in kinds.items():
        paths[name] = folder / f"{name}.{'png' if name == 'png' else 'jpg'}"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize(
    "kind, route",
    [
        ("baseline", GPU_JPEG),
        ("grey", GPU_JPEG),
        ("upright-exif", GPU_JPEG),
        ("png", CPU),
        ("cmyk", CPU),
        ("progressive", CPU),
        ("rotated", CPU),
        ("truncated", CPU),
        ("cut-in-header", CPU),
    ],
)
def test_route_on_cuda(files, kind, route):
    data = files[kind].read_bytes()
    assert decode_route(data, CUDA) == route
    assert decode_route(data, torch.device("cuda", 1)) == route


@pytest.mark.parametrize("kind", ["baseline", "png", "cmyk", "rotated", "truncated"])
def test_route_on_cpu_is_always_pillow(files, kind):
    assert decode_route(files[kind].read_bytes(), CPU_DEVICE) == CPU


def test_route_respects_pillows_pixel_limit(files, monkeypatch):
    """A picture beyond Pillow's decompression-bomb limit keeps Pillow's warning or refusal."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 96 * 64 - 1)
    assert decode_route(files["baseline"].read_bytes(), CUDA) == CPU
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert decode_route(files["baseline"].read_bytes(), CUDA) == GPU_JPEG


def test_route_tolerates_zero_padding_after_eoi(files):
    assert decode_route(files["baseline"].read_bytes() + b"\x00" * 64, CUDA) == GPU_JPEG


def test_header_fields(files):
    header = read_header(files["baseline"].read_bytes())
    assert (header.process, header.precision, header.width, header.height, header.components) == (0xC0, 8, 96, 64, 3)
    assert header.orientation == 1 and header.complete and not header.multi_picture
    assert read_header(files["cmyk"].read_bytes()).components == 4
    assert read_header(files["progressive"].read_bytes()).process == 0xC2
    assert read_header(files["rotated"].read_bytes()).orientation == 6
    assert not read_header(files["truncated"].read_bytes()).complete
    assert read_header(files["cut-in-header"].read_bytes()) is None
    assert read_header(files["png"].read_bytes()) is None


def test_exif_orientation_both_byte_orders_and_garbage():
    big = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x08\x00\x00"
    little = b"II\x2a\x00\x08\x00\x00\x00" + b"\x01\x00" + b"\x12\x01\x03\x00\x01\x00\x00\x00\x03\x00\x00\x00"
    assert exif_orientation(big) == 8
    assert exif_orientation(little) == 3
    assert exif_orientation(b"II\x2a\x00\x08\x00\x00\x00\x00\x00") == 1  # no tags at all
    assert exif_orientation(b"XX garbage") == 0
    assert exif_orientation(big[:14]) == 0  # cut inside the entry


def test_read_jpeg_reads_only_regular_jpeg_files(files, tmp_path):
    assert read_jpeg(files["baseline"]) == files["baseline"].read_bytes()
    assert read_jpeg(files["png"]) is None
    assert read_jpeg(tmp_path / "missing.jpg") is None
    assert read_jpeg(tmp_path) is None
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert read_jpeg(fifo) is None  # and does not block


def test_dataset_leaves_gpu_jpegs_undecoded(files):
    """Workers hand GPU-bound JPEGs over as bytes (no CUDA needed: a device object only);
    everything else is decoded, or reported, exactly as on the CPU path."""
    names = ["baseline", "png", "truncated", "rotated"]
    paths = [files[n] for n in names]
    routed = ImageFiles(paths, 32, jpeg_device=CUDA)
    plain = ImageFiles(paths, 32)
    items = [routed[i] for i in range(len(paths))]
    assert items[0][1].ndim == 1 and bytes(items[0][1].numpy()) == files["baseline"].read_bytes()
    for i in (1, 3):
        assert torch.equal(items[i][1], plain[i][1])
    assert items[2][1] is None and items[2][2] == plain[2][2] == "truncated JPEG"
    indices, batch, failures, undecoded = collate(items)
    assert indices == [1, 3] and batch.shape == (2, 3, 32, 32)
    assert failures == [(2, "truncated JPEG")]
    assert undecoded.indices == [0] and len(undecoded) == 1
    assert bytes(undecoded.files()[0].numpy()) == files["baseline"].read_bytes()


def test_gpu_decode_switch(monkeypatch):
    """On by default on CUDA, off with ZSTAG_GPU_DECODE=0 or gpu_decode=False, never on a CPU."""
    assert not Engine("cpu", gpu_decode=True).gpu_decode
    monkeypatch.setattr(engine_module, "resolve_device", lambda spec: CUDA)  # no GPU is touched
    monkeypatch.delenv("ZSTAG_GPU_DECODE", raising=False)
    assert Engine("cuda").gpu_decode
    assert not Engine("cuda", gpu_decode=False).gpu_decode
    monkeypatch.setenv("ZSTAG_GPU_DECODE", "0")
    assert not Engine("cuda").gpu_decode
    assert Engine("cuda", gpu_decode=True).gpu_decode


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return write_photos(tmp_path_factory.mktemp("photos"), 6)


def test_device_decoder_matches_pillow(photos):
    """The engine's decode_jpeg + resize_square path (run here on the CPU build) gives Pillow's
    pixels: within one level where Pillow decodes at full scale, close where it uses DCT scaling."""
    engine = Engine("cpu")
    data = [torch.frombuffer(read_jpeg(p), dtype=torch.uint8) for p in photos]
    for size, mean_limit, max_limit in ((224, 0.5, 1), (128, 1.5, 255)):
        pillow = torch.stack([ImageFiles(photos, size).decode(i)[0] for i in range(len(photos))])
        device = engine.decode_jpegs(data, size)
        assert device.dtype == torch.uint8 and device.shape == pillow.shape
        difference = (device.int() - pillow.int()).abs()
        assert difference.float().mean() <= mean_limit and difference.max() <= max_limit


def test_pixels_merges_in_input_order_and_falls_back_to_pillow(photos, files, tmp_path, monkeypatch):
    engine = Engine("cpu")
    size = 48
    moved = tmp_path / "gone.jpg"
    moved.write_bytes(files["baseline"].read_bytes())
    paths = [photos[0], files["png"], photos[1], moved]
    dataset = ImageFiles(paths, size, jpeg_device=CUDA)
    indices, batch, failures, undecoded = collate([dataset[i] for i in range(len(paths))])
    assert indices == [1] and undecoded.indices == [0, 2, 3]

    first_two = Undecoded.pack(list(zip(undecoded.indices, undecoded.files()))[:2])
    order, pixels, failed, _ = engine.pixels(dataset, indices, batch, failures, first_two)
    assert order == [0, 1, 2] and failed == []
    assert torch.equal(pixels[1], batch[0])
    assert torch.equal(pixels[0], engine.decode_jpegs(undecoded.files()[:1], size)[0])

    def refuse(files, size):
        raise RuntimeError("nvjpeg refused the batch")

    monkeypatch.setattr(engine, "decode_jpegs", refuse)
    moved.unlink()  # Pillow, reading the file again, finds it gone and says so
    order, pixels, failed, _ = engine.pixels(dataset, indices, batch, failures, undecoded)
    assert order == [0, 1, 2] and failed == [(3, "no such file")]
    assert torch.equal(pixels[0], dataset.decode(0)[0]) and torch.equal(pixels[2], dataset.decode(2)[0])


def label_vectors_without_a_text_model(semantics, labels, cache=None):
    """Stands in for `embed_labels`: a fixed unit vector per label (seeded by its name), so the
    test needs no text model (the GPU machine has no MiniLM): decoding, not semantics, is tested."""
    import hashlib

    from zstag.data.labels import LabelSet

    seeds = [int(hashlib.sha256(label.encode()).hexdigest()[:8], 16) for label in labels]
    rows = [torch.randn(384, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
    vectors = torch.stack(rows) if rows else torch.zeros(0, 384)
    return LabelSet(list(labels), torch.nn.functional.normalize(vectors, dim=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: compares nvJPEG with Pillow end to end")
@pytest.mark.parametrize("workers", [0, 2])
def test_gpu_decoded_tags_match_cpu_decoded(tmp_path, monkeypatch, workers):
    """Several batches, so that the side stream decodes while the compute stream scores and
    batches stay in flight; with and without decoding processes."""
    from zstag.jobs.options import TagOptions
    from zstag.jobs.tag import tag
    from zstag.store import model as model_module

    monkeypatch.setattr(model_module, "embed_labels", label_vectors_without_a_text_model)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("dog\ncat\nbeach\nsky\ncar\ntree\nflower\nhouse\n")
    inputs = [str(p) for p in write_photos(tmp_path / "photos", 24)]  # 12 batches
    rows = {}
    for switch in ("1", "0"):
        monkeypatch.setenv("ZSTAG_GPU_DECODE", switch)
        out = tmp_path / f"tags-{switch}.jsonl"
        options = TagOptions(
            inputs=inputs, labels=vocab, top_k=0, output=str(out), device="cuda", workers=workers, batch_size=2
        )
        assert tag(options) == 0
        rows[switch] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows["1"]) == len(rows["0"]) == len(inputs)
    for gpu, cpu in zip(rows["1"], rows["0"]):
        assert gpu["image"] == cpu["image"]
        assert gpu["tags"][0]["label"] == cpu["tags"][0]["label"]
        cpu_scores = {t["label"]: t["score"] for t in cpu["tags"]}
        assert all(abs(t["score"] - cpu_scores[t["label"]]) <= SCORE_TOLERANCE for t in gpu["tags"])


def test_batches_in_flight_keep_order_scores_and_failures(photos, files):
    """On CUDA the engine hands batch i over only once CUDA_IN_FLIGHT later batches are queued; the
    same loop run on a CPU (a decoding worker, so that it is not the CPU's streams) gives exactly
    the batches of the plain loop and of the streams, in the same order."""
    import synth

    from zstag.backbones.small import SmallBackbone
    from zstag.data.labels import LabelSet
    from zstag.methods.fast0tag import Fast0Tag

    torch.manual_seed(0)
    seen = LabelSet(["a", "b", "c"], synth.random_label_vectors(3, 8, seed=1))
    method = Fast0Tag(SmallBackbone(), seen, Fast0Tag.hyperparameters({"hidden": 16}), embed=lambda names: None)
    paths = [files["truncated"], files["png"], *photos[:3], files["cut-in-header"], files["truncated"]]
    runs = []
    for workers, in_flight in ((0, 0), (1, 0), (1, 1), (1, engine_module.CUDA_IN_FLIGHT)):
        engine = Engine("cpu", batch_size=2, workers=workers)
        engine.in_flight = in_flight
        runs.append([(b.indices, b.scores, b.failures) for b in engine.run(method, paths, seen, 32)])
    assert [i for i, _, _ in runs[0]] == [[1], [2, 3], [4], []]
    for run in runs[1:]:
        assert [(i, f) for i, _, f in run] == [(i, f) for i, _, f in runs[0]]
        assert all(torch.allclose(a, b, atol=1e-6) for (_, a, _), (_, b, _) in zip(run, runs[0]))


class RecordingSide(engine_module.SideStream):
    """The CPU's side stream, noting what runs inside `work()` and what is handed over."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.log: list[tuple[str, object]] = []
        self.inside = False
        self.tokens = 0
        self.handed: list[tuple[object, str]] = []

    def work(self):
        import contextlib

        @contextlib.contextmanager
        def noted():
            self.log.append(("enter", None))
            self.inside = True
            try:
                yield
            finally:
                self.inside = False
                self.log.append(("exit", None))

        return noted()

    def done(self):
        """A token per call standing in for the event, naming the batch's first index and the thread."""
        self.log.append(("done", None))
        self.tokens += 1
        return (self.tokens, threading.current_thread().name)

    def hand_over(self, tensor: torch.Tensor, ready) -> torch.Tensor:
        self.log.append(("hand over", (tuple(tensor.shape), ready)))
        self.handed.append((ready, threading.current_thread().name))
        return tensor


def test_device_decoding_runs_on_the_side_stream_and_hands_over_the_merged_batch(photos, files, monkeypatch):
    """`Engine.pixels` decodes (and falls back to Pillow) inside the side stream's `work()` and
    hands the compute stream only the merged batch, once, after leaving it; on a CPU the real
    `SideStream` changes nothing."""
    engine = Engine("cpu")
    side = engine.side = RecordingSide(engine.device)
    decode_jpegs = engine.decode_jpegs

    def decode_inside(files, size):
        assert side.inside, "nvJPEG must run on the side stream"
        side.log.append(("decode", len(files)))
        return decode_jpegs(files, size)

    monkeypatch.setattr(engine, "decode_jpegs", decode_inside)
    dataset = ImageFiles([photos[0], files["png"], photos[1]], 40, jpeg_device=CUDA)
    indices, batch, failures, undecoded = collate([dataset[i] for i in range(3)])
    order, pixels, failed, ready = engine.pixels(dataset, indices, batch, failures, undecoded)
    assert order == [0, 1, 2] and failed == [] and pixels.shape == (3, 3, 40, 40)
    assert side.log == [("enter", None), ("decode", 2), ("exit", None), ("done", None)]
    assert ready == (1, threading.current_thread().name)

    plain = engine_module.SideStream(CPU_DEVICE)
    with plain.work():
        assert plain.stream is None
    assert plain.done() is None and plain.hand_over(pixels, None) is pixels


def test_workers_batches_are_decoded_ahead_in_a_thread_and_handed_over_where_they_are_used(photos, files):
    """With decoding workers, a thread of its own merges and decodes each batch (nvJPEG's host
    side on a GPU) while the calling thread receives the next and computes; each batch is handed
    over to the compute stream in the calling thread with the event made after its own decoding,
    and the batches are those of the in-line path."""
    paths = [photos[0], files["png"], photos[1], files["truncated"], photos[2]]
    here = threading.current_thread().name
    runs = {}
    for workers in (0, 1):
        engine = Engine("cpu", batch_size=2, workers=workers)
        side = engine.side = RecordingSide(engine.device)
        dataset = ImageFiles(paths, 40, jpeg_device=CUDA)
        runs[workers] = list(engine.decoded(dataset))
        decoder = "zstag-decode" if workers else here
        # Every batch holds a GPU-bound JPEG, so each was decoded once and handed over once, in order,
        # here, with the token its own decoding made, in the decoding thread.
        assert [token for token, _ in side.handed] == [(1, ANY), (2, ANY), (3, ANY)]
        assert all(thread == here and token[1].startswith(decoder) for token, thread in side.handed)
    assert (
        [(i, f) for i, _, f in runs[0]]
        == [(i, f) for i, _, f in runs[1]]
        == [
            ([0, 1], []),
            ([2], [(3, "truncated JPEG")]),
            ([4], []),
        ]
    )
    assert all(torch.equal(a, b) for (_, a, _), (_, b, _) in zip(runs[0], runs[1]))


def test_the_pinning_thread_pins_the_packed_bytes(files, monkeypatch):
    """The DataLoader's pinning thread (pin_memory=True on CUDA) pins a batch's undecoded files
    through `Undecoded.pin_memory`, one tensor, not file by file."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = []
    monkeypatch.setattr(Undecoded, "pin_memory", lambda self: pinned.append(list(self.indices)) or self)
    dataset = ImageFiles([files["baseline"], files["upright-exif"], files["png"]], 32, jpeg_device=CUDA)
    indices, batch, failures, undecoded = collate([dataset[i] for i in (0, 1)])  # both left for the GPU
    assert batch is None and undecoded.indices == [0, 1]
    assert pin_memory((indices, batch, failures, undecoded))[3] is undecoded and pinned == [[0, 1]]
