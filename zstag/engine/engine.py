"""The one inference engine: devices, precision, batching, decoding and vocabulary scoring.

`tag`, `eval --model` and `bench` go through `Engine`; `explain` and the trainer's feature cache take
its decoded, normalised batches (`Engine.images`), and the trainer reuses its device handling and
data path. Images are decoded and resized to uint8 tensors (Pillow, with JPEG draft decoding), moved
to the device with pinned, non-blocking copies, normalised there, and encoded once per image; the
label vectors of the vocabulary are embedded once per run and scored in chunks so that memory stays
bounded for any vocabulary size. For inference the method's batch norms are folded into the
convolutions before them.

Where images are decoded depends on the device. For a GPU, DataLoader worker processes decode while
the GPU computes. On a CPU the cores are the compute, so by default no process starts and the work
is split into streams (`Engine.streamed`): a few threads, each decoding whole batches (Pillow
releases the GIL while it decodes and resizes) and computing them with its share of torch's
threads, so every core is busy with one or the other and no core is fought over.

On CUDA, plain JPEGs skip Pillow: the workers only read their bytes, and the main process decodes
them in batches with nvJPEG (`torchvision.io.decode_jpeg`) and resizes them on the GPU, because
Pillow on 16 cores decodes about 1,800 photos/s where an H100 runs VGG19 at 7,000 to 11,500 and
nvJPEG decodes 13,000 (the engineering guide's measurements). Workers may not touch CUDA (they are
forked), hence the split. `decode_route` decides per file; every file it does not send to the GPU,
and every batch nvJPEG refuses, takes the Pillow path, so results and error reports for odd files
stay those of `zstag.data.images`. `ZSTAG_GPU_DECODE=0` turns it off. nvJPEG runs on a stream of
its own (`SideStream`), handed over to the compute stream by an event, so the GPU decodes batch
i+1 while it computes batch i, and in a thread of its own (`Engine.decoded`), since its host side
blocks until the batch is decoded; two batches stay in flight, so the GPU also computes while the
caller writes results. On CUDA, long runs compile the method's image side (`torch.compile`, `compile=`).
docs/performance.md has the measurements behind each choice (the side stream and compiling are
not yet measured on a GPU).
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from PIL import Image
from torch import nn
from torch.utils._pytree import tree_map
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from zstag.backbones.base import Backbone
from zstag.core.errors import ImageError, UsageError
from zstag.data.jpeg import read_header, read_jpeg
from zstag.data.labels import LabelSet
from zstag.methods.base import ImageCode, Method

# Labels scored at once; a (batch x chunk) score block stays small whatever the vocabulary. Larger
# chunks keep the matrix products efficient: on a CPU, 16,384 scores 100,000 labels 1.2x faster than
# 8,192 and 3x faster than 1,024, and 65,536 gains only about 12% more (docs/performance.md).
LABEL_CHUNK = 16384
# At most this many CPU streams (`cpu_streams`): each holds one batch's activations.
MAX_STREAMS = 4
# decode_route's answers.
GPU_JPEG, CPU = "gpu-jpeg", "cpu"
# Batches whose scores may still be on their way to the host when the next is queued, on CUDA:
# while the caller writes batch i, the GPU computes batch i+1 and decodes batch i+2.
CUDA_IN_FLIGHT = 2
# Batches the decoding thread may be given before the computing thread takes the first of them
# (`decoded`): each holds a batch of pixels on the device.
DECODE_AHEAD = 2
# With `compile=None`, CUDA runs of at least this many 224 px images compile the method's image
# side (fewer at larger sizes: `Engine.compiles`). Measured on an H200 (VGG19 + LESA, batch 256,
# docs/results/bench-h200-run1.json): compiling costs 9.4 s at 224 px and saves 1/7,560 - 1/12,741 s
# per image, so it pays from 174,000 images; at 448 px 7.0 s against 1/1,771 - 1/3,099 s, from
# 29,000. The compile time hardly depends on the size while the saving grows with the pixels, so
# the threshold scales with 1/pixels (43,750 at 448 px, on the safe side of the measured 29,000).
COMPILE_MIN_IMAGES = 175_000
COMPILE_REFERENCE_SIZE = 224
ModuleT = TypeVar("ModuleT", bound=nn.Module)
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
# A batch as `collate` makes it: (indices of decoded images, their uint8 pixels or None, failures,
# the JPEGs left for the device to decode).
Collated = tuple[list[int], torch.Tensor | None, list[tuple[int, str]], "Undecoded"]
# A batch with its undecoded files merged in: (indices, uint8 pixels or None, failures, the event
# after which the pixels are ready on the device, None where nothing is pending).
Merged = tuple[list[int], torch.Tensor | None, list[tuple[int, str]], "torch.cuda.Event | None"]


class IndexBatches(Protocol):
    """Batches of dataset indices that know how many there are (a BatchSampler, the trainer's shuffled one)."""

    def __iter__(self) -> Iterator[list[int]]: ...

    def __len__(self) -> int: ...


class SizedDataset(Dataset, ABC):
    """A map-style dataset with a length, which torch's `Dataset` does not declare but sampling needs."""

    @abstractmethod
    def __len__(self) -> int: ...


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` picks CUDA when present (under torchrun, the rank's LOCAL_RANK GPU); `cuda[:i]`
    without CUDA is a usage error, not a crash later."""
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        from zstag.engine.distributed import local_rank

        rank = local_rank()
        return torch.device("cuda", rank % torch.cuda.device_count()) if rank is not None else torch.device("cuda")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r}: use auto, cpu or cuda[:i]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {spec!r}: use auto, cpu or cuda[:i]")
    return device


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device: torch.device) -> int:
    """Decoding processes: on a GPU as many as cores allow; on a CPU none (see `Engine.streamed`)."""
    return min(16, max(available_cores() - 1, 0)) if device.type == "cuda" else 0


def cpu_streams(threads: int, batches: int) -> tuple[int, int]:
    """(streams, torch threads per stream) for tagging `batches` batches with `threads` threads.

    `threads` is torch's budget (`torch.get_num_threads()`: the physical cores by default, fewer
    under OMP_NUM_THREADS, `torch.set_num_threads` or torchrun's one per process). One stream per
    thread, so that no stream's threads wait at another's barriers, but at most `MAX_STREAMS`, as
    each holds a batch's activations, and no more than there are batches: a lone batch gets them all.
    """
    streams = max(1, min(threads, MAX_STREAMS, batches))
    return streams, max(1, threads // streams)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch computes with at most `count` threads (per thread that starts a computation) inside;
    the process-wide setting is restored afterwards. Threads started inside take the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, count)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_beside(device: torch.device, workers: int) -> contextlib.AbstractContextManager[None]:
    """On a CPU, torch computes on the cores the decoding workers leave free, and no more.

    By default torch takes every core, and its threads then fight the workers for them: on two
    cores, one worker plus two torch threads tagged 57 images/s, one worker plus one thread 104
    (docs/performance.md).
    """
    if device.type == "cpu" and workers:
        return torch_threads(available_cores() - workers)
    return contextlib.nullcontext()


def decode_route(data: bytes | bytearray, device: torch.device) -> str:
    """Where a file's pixels are decoded: "gpu-jpeg" (nvJPEG on `device`) or "cpu" (Pillow).

    `data` is the whole file. Only what nvJPEG decodes exactly as Pillow would goes to the GPU: an
    8-bit baseline or extended-sequential JPEG, grey or YCbCr, complete up to its EOI marker, with
    no EXIF rotation to apply, no further pictures (MPO) and within Pillow's pixel limit. CMYK,
    progressive, rotated, truncated and oversized files, and anything that is not a JPEG, keep the
    Pillow path and its conversions and error messages.
    """
    if device.type != "cuda":
        return CPU
    header = read_header(data)
    if header is None or not header.complete or header.process not in (0xC0, 0xC1) or header.precision != 8:
        return CPU
    if header.components not in (1, 3) or (header.components == 3 and header.adobe_transform == 0):
        return CPU  # CMYK / YCCK, or samples stored as RGB (Adobe transform 0) that a YCbCr decode would miscolour
    if header.orientation != 1 or header.multi_picture or not header.width or not header.height:
        return CPU
    limit = Image.MAX_IMAGE_PIXELS
    return CPU if limit is not None and header.width * header.height > limit else GPU_JPEG


class SideStream:
    """Where the engine decodes on the device: a CUDA stream of its own, beside the compute stream.

    `work()` runs device-side decoding on that stream; `hand_over` makes the compute stream wait
    for it (an event between the streams) and tells the caching allocator that the compute stream
    uses the result, so its memory is not handed out again, to nvJPEG least of all, before the
    compute stream is done with it. So the GPU decodes one batch while it computes the one before.
    On a CPU both are no-ops and the same loop runs in line.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream: torch.cuda.Stream | None = None  # made at first use: an engine may never decode

    def work(self) -> contextlib.AbstractContextManager[object]:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        if self.stream is None:
            self.stream = torch.cuda.Stream(self.device)
        return torch.cuda.stream(self.stream)

    def done(self) -> torch.cuda.Event | None:
        """An event marking the work queued on the side stream so far (None on a CPU)."""
        if self.stream is None:
            return None
        ready = torch.cuda.Event()
        ready.record(self.stream)
        return ready

    def hand_over(self, tensor: torch.Tensor, ready: torch.cuda.Event | None) -> torch.Tensor:
        """`tensor`, made inside `work()` before `ready` (`done`), for the calling thread's current
        (compute) stream. Called by the thread that computes with it, when it is about to: a wait
        queued earlier, from the decoding thread, would hold up the compute stream's work on the
        batch before."""
        if ready is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(ready)
            tensor.record_stream(compute)
        return tensor


def compile_settings() -> dict[str, object]:
    """`torch.compile`'s keywords: shapes are static (the engine pads the last batch), the mode
    and backend may be chosen with ZSTAG_COMPILE_MODE / ZSTAG_COMPILE_BACKEND (the GPU check
    measures modes that way; the tests use the quick `eager` backend)."""
    settings: dict[str, object] = {"dynamic": False, "backend": os.environ.get("ZSTAG_COMPILE_BACKEND", "inductor")}
    mode = os.environ.get("ZSTAG_COMPILE_MODE")
    if mode:
        settings["mode"] = mode
    return settings


class PaddedEncoder:
    """A method's `encode` compiled for one batch shape: smaller batches (a run's last) are padded
    with zeros to `batch_size` and the code cut back, so the compiled graph is never rebuilt for a
    new shape and CUDA graphs can replay it. Images are encoded independently in eval mode, so the
    padding changes no image's code."""

    def __init__(self, encode: Callable[[torch.Tensor], ImageCode], batch_size: int) -> None:
        self.compiled = torch.compile(encode, **compile_settings())  # type: ignore[call-overload]
        self.batch_size = batch_size

    def __call__(self, images: torch.Tensor) -> ImageCode:
        n = images.shape[0]
        if n >= self.batch_size:
            return self.compiled(images)
        padded = images.new_zeros((self.batch_size, *images.shape[1:])).contiguous(memory_format=torch.channels_last)
        padded[:n] = images
        return tree_map(lambda t: t[:n], self.compiled(padded))


class ImageFiles(SizedDataset):
    """Decodes image files to uint8 (3, size, size) tensors; a failure becomes a reason, not an exception.

    With `jpeg_device` set, a file that `decode_route` sends to that device comes back undecoded,
    as its bytes (a 1-D uint8 tensor), for the engine to decode in the main process.
    """

    def __init__(self, paths: Sequence[str | Path], size: int, jpeg_device: torch.device | None = None) -> None:
        self.paths = paths
        self.size = size
        self.jpeg_device = jpeg_device

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        if self.jpeg_device is not None:
            data = read_jpeg(self.paths[index])
            if data is not None and decode_route(data, self.jpeg_device) == GPU_JPEG:
                return index, torch.frombuffer(data, dtype=torch.uint8), None
        return (index, *self.decode(index))

    def decode(self, index: int) -> tuple[torch.Tensor, None] | tuple[None, str]:
        """Pillow's pixels of one file, or the reason it cannot be read."""
        from zstag.data.images import decode_image, to_tensor

        try:
            return to_tensor(decode_image(self.paths[index], self.size), self.size), None
        except ImageError as exc:
            return None, str(exc)


def in_order(
    work: Callable[[ItemT], ResultT], items: Iterable[ItemT], threads: int, ahead: int, name: str
) -> Iterator[ResultT]:
    """`work(item)` for each of `items`, run by a pool of `threads` threads, yielded in input order,
    with at most `ahead` results waiting beyond the one being taken. `items` is iterated in the
    calling thread. Stopped early (Ctrl-C, a closed generator), the items under way finish and no
    more start."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
    try:
        queued: deque[Future[ResultT]] = deque()
        for item in items:
            queued.append(pool.submit(work, item))
            if len(queued) > ahead:
                yield queued.popleft().result()
        while queued:
            yield queued.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


class DecodedHere:
    """Batches decoded in this process, each by a pool of threads, between the caller's steps.

    The loader with no workers (the trainer's on a CPU by default). Pillow releases the GIL while
    it decodes and resizes, so `threads` threads decode a batch about `threads` times as fast as
    one, the caller's computation then has every core to itself, and no process has to start.
    Iterating again starts over, with the batches of the sampler's next pass (the trainer's next
    shuffled epoch).
    """

    num_workers = 0  # no decoding processes: `threads_beside` leaves torch's threads alone

    def __init__(self, dataset: Dataset, batches: IndexBatches, collate_fn: Callable, threads: int) -> None:
        self.dataset, self.batches, self.collate_fn, self.threads = dataset, batches, collate_fn, max(1, threads)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        with ThreadPoolExecutor(self.threads, thread_name_prefix="zstag-decode") as pool:
            for indices in self.batches:
                yield self.collate_fn(list(pool.map(self.dataset.__getitem__, indices)))


def fold_batch_norms(module: ModuleT) -> ModuleT:
    """Fold each eval-mode BatchNorm2d that follows a Conv2d in an nn.Sequential into its weights.

    In eval mode a batch norm is a fixed per-channel affine map, so the convolution before it can
    absorb it (`torch.nn.utils.fusion.fuse_conv_bn_eval`) and one pass over the feature map is
    saved: tagging with the default model on 2 CPU cores went from 274 to 292 images/s. Results
    agree to float rounding. Changes `module` in place (the batch norms become Identity, the state
    dict changes): for inference only.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for sequence in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequence._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = sequence._modules[first], sequence._modules[second]
            if (
                type(conv) is nn.Conv2d
                and type(norm) is nn.BatchNorm2d
                and norm.track_running_stats
                and not conv.training
                and not norm.training
            ):
                sequence._modules[first] = fuse_conv_bn_eval(conv, norm)
                sequence._modules[second] = nn.Identity()
    return module


@dataclass
class Undecoded:
    """A batch's JPEG files left for the device to decode, their bytes packed into one tensor.

    One tensor, not one per file: a worker hands each tensor to the main process through a
    shared-memory file of its own and the pinning thread copies each one apart, so 256 small
    tensors a batch held the main process to about 2,800 photos/s on two workers where one packed
    tensor passes 25,000 (docs/performance.md).
    """

    indices: list[int]  # positions in the input list, in batch order
    data: torch.Tensor  # uint8, the files' bytes one after another
    lengths: list[int]  # each file's size in bytes

    @classmethod
    def pack(cls, files: Sequence[tuple[int, torch.Tensor]]) -> Undecoded:
        data = torch.cat([t for _, t in files]) if files else torch.empty(0, dtype=torch.uint8)
        return cls([i for i, _ in files], data, [len(t) for _, t in files])

    def __len__(self) -> int:
        return len(self.indices)

    def files(self) -> list[torch.Tensor]:
        """Each file's bytes, as views of the packed tensor."""
        return list(torch.split(self.data, self.lengths))

    def pin_memory(self) -> Undecoded:
        """Called by the DataLoader's pinning thread (pin_memory=True) on each batch."""
        return Undecoded(self.indices, self.data.pin_memory(), self.lengths)


def collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Collated:
    """(indices of decoded images, their stacked uint8 batch or None, [(index, reason)] failures,
    the JPEGs left for the device to decode as `Undecoded`)."""
    ok = [(i, t) for i, t, _ in items if t is not None and t.ndim == 3]
    encoded = Undecoded.pack([(i, t) for i, t, _ in items if t is not None and t.ndim == 1])
    failures = [(i, reason) for i, _, reason in items if reason is not None]  # a reason exactly when no image
    batch = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], batch, failures, encoded


def resize_square(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """uint8 (N, 3, size, size) from uint8 (3, H, W) images of any sizes, on their device.

    Squashed with antialiased bilinear filtering, torch's port of the Pillow filter `to_tensor`
    uses, and rounded back to 8 bits as Pillow does. Images of one shape (a camera's) are resized
    in one call.
    """
    out = torch.empty((len(images), 3, size, size), dtype=torch.uint8, device=images[0].device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    for members in groups.values():
        pixels = torch.stack([images[i] for i in members]).float()
        square = torch.nn.functional.interpolate(
            pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[members] = square.round_().clamp_(0, 255).to(torch.uint8)
    return out


@dataclass
class Batch:
    indices: list[int]  # positions in the input list of the images in `scores`
    scores: torch.Tensor  # (len(indices), L) float32 on the CPU
    failures: list[tuple[int, str]]  # inputs that could not be decoded, with the reason


class Engine:
    """Runs a method over images on one device, in one precision, in batches."""

    def __init__(
        self,
        device: str = "auto",
        batch_size: int = 64,
        workers: int | None = None,
        gpu_decode: bool | None = None,
        compile: bool | None = None,
    ) -> None:
        """`gpu_decode`: decode plain JPEGs with nvJPEG on CUDA (None: yes unless ZSTAG_GPU_DECODE=0).
        `compile`: compile the method's image side with `torch.compile` (None: on CUDA for runs
        long enough for it to pay for itself, `compiles`; never on a CPU)."""
        self.device = resolve_device(device)
        self.compile = compile
        self.batch_size = max(1, batch_size)
        self.workers = default_workers(self.device) if workers is None else max(0, workers)
        if gpu_decode is None:
            gpu_decode = os.environ.get("ZSTAG_GPU_DECODE", "1") != "0"
        self.gpu_decode = gpu_decode and self.device.type == "cuda"
        # Batches whose scores may still be on their way to the host when the next batch is queued.
        self.in_flight = CUDA_IN_FLIGHT if self.device.type == "cuda" else 0
        self.side = SideStream(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def autocast(self):
        """bf16 autocast on GPU; full precision on CPU, where bf16 is rarely faster."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batches(self, dataset: SizedDataset, batch_size: int | None = None) -> BatchSampler:
        """Index batches of `dataset` in order."""
        return BatchSampler(SequentialSampler(dataset), batch_size or self.batch_size, drop_last=False)

    def loader(
        self,
        dataset: SizedDataset,
        batch_size: int | None = None,
        collate_fn=collate,
        batch_sampler: IndexBatches | None = None,
    ) -> DataLoader | DecodedHere:
        """Batches in order, or those of `batch_sampler` (the trainer's shuffled, per-rank batches).

        With no workers, or a single batch, the batches are decoded in this process
        (`DecodedHere`): a lone batch has nothing to overlap its decoding with, and starting
        workers (most of a second on a small machine) would only add to the latency of a few images.
        """
        batches = batch_sampler if batch_sampler is not None else self.batches(dataset, batch_size)
        if self.workers == 0 or len(batches) <= 1:
            return DecodedHere(dataset, batches, collate_fn, available_cores())
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4,
        )

    def normalise(self, batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """uint8 (B, 3, H, W) on any device -> normalised float on this device, channels last.

        Channels last on every device: cuDNN and oneDNN both convolve it faster (on a CPU the
        bundled model runs 1.3-2x faster, docs/performance.md), with the same results up to float
        rounding (about 1e-6).
        """
        x = batch.to(self.device, non_blocking=True).float().div_(255)
        m = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        return ((x - m) / s).contiguous(memory_format=torch.channels_last)

    def prepare(self, method: Method) -> Method:
        """The method on this device in eval mode, its convolution weights channels last (see
        `normalise`), and its score cohort (`Method.standardised`), if any, on this device too."""
        method = method.to(self.device).eval().to(memory_format=torch.channels_last)
        if method.cohort is not None:
            method.cohort = self.vocabulary(method, method.cohort)
        return method

    def for_inference(self, method: Method) -> Method:
        """`prepare`d, with its batch norms folded into the convolutions (`fold_batch_norms`); changed
        in place, so from then on the method serves inference only."""
        return self.prepare(fold_batch_norms(method.eval()))

    def compiles(self, images: int, image_size: int = COMPILE_REFERENCE_SIZE) -> bool:
        """Whether a run over `images` images of `image_size` px compiles (`compile=`)."""
        if self.compile is not None:
            return self.compile
        pixels = images * (image_size / COMPILE_REFERENCE_SIZE) ** 2
        return self.device.type == "cuda" and pixels >= COMPILE_MIN_IMAGES

    def compiled(self, method: Method) -> Method:
        """`method` with its `encode` compiled for this engine's batch size (`PaddedEncoder`), in
        place; the first batch pays the compilation. Scoring stays eager: it is chunked over the
        vocabulary, and the backbone is where the time goes. The method's lazy work is done first
        (`Method.prepare`), outside the compiled graph."""
        if not isinstance(method.encode, PaddedEncoder):
            method.prepare(self.device)
            method.encode = PaddedEncoder(method.encode, self.batch_size)  # type: ignore[method-assign]
        return method

    @torch.inference_mode()
    def vocabulary(self, method: Method, labels: LabelSet) -> LabelSet:
        """`labels` on this device with the method's label-side work done once (`Method.prepare_labels`),
        in full precision: it is reused by every batch."""
        return method.prepare_labels(labels.to(self.device))

    @torch.inference_mode()
    def score(self, method: Method, code: ImageCode, labels: LabelSet) -> torch.Tensor:
        """(B, L) float32 scores, the vocabulary in chunks when the method allows it, standardised
        per image when the model has a score cohort (`Method.standardised`)."""
        if not method.chunkable or len(labels) <= LABEL_CHUNK:
            with self.autocast():
                scores = method.score(code, labels).float()
        else:
            parts = []
            for start in range(0, len(labels), LABEL_CHUNK):
                with self.autocast():
                    parts.append(method.score(code, labels.subset(slice(start, start + LABEL_CHUNK))).float())
            scores = torch.cat(parts, dim=1)
        with self.autocast():
            return method.standardised(code, scores)

    def decode_jpegs(self, files: list[torch.Tensor], size: int) -> torch.Tensor:
        """uint8 (N, 3, size, size) on this device from JPEG files' bytes, decoded in one batched
        call (nvJPEG on CUDA). Raises RuntimeError when the decoder refuses any of them."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if self.device.type == "cuda":
            # nvJPEG does not wait for the stream it is called on, yet its outputs come from the
            # blocks the allocator recycles on that stream, which queued kernels may still read
            # (pytorch/vision#9606): let the stream drain first. On the side stream (`pixels`)
            # that is the previous batch's resize, not the forward pass on the compute stream.
            torch.cuda.current_stream(self.device).synchronize()
        return resize_square(decode_jpeg(files, mode=ImageReadMode.RGB, device=self.device), size)

    def pixels(
        self,
        dataset: ImageFiles,
        indices: list[int],
        batch: torch.Tensor | None,
        failures: list[tuple[int, str]],
        encoded: Undecoded,
    ) -> Merged:
        """Merge the JPEGs the workers left undecoded into the batch, in input order, on this device.

        The work runs on the side stream; the event it returns tells the compute stream when the
        pixels are ready (`SideStream.hand_over`). A batch nvJPEG refuses is decoded by Pillow
        instead, one file at a time, so an unreadable file is reported exactly as on the CPU path.
        """
        with self.side.work():
            parts = [] if batch is None else [(indices, batch.to(self.device, non_blocking=True))]
            try:
                parts.append((encoded.indices, self.decode_jpegs(encoded.files(), dataset.size)))
            except torch.OutOfMemoryError:
                raise
            except RuntimeError:
                failures = list(failures)
                for i in encoded.indices:
                    decoded = dataset.decode(i)
                    if decoded[0] is None:  # indexed, so the type checker pairs a missing image with its reason
                        failures.append((i, decoded[1]))
                    else:
                        parts.append(([i], decoded[0].unsqueeze(0).to(self.device)))
                failures.sort()
            if not parts:
                return [], None, failures, None
            merged = [i for part, _ in parts for i in part]
            order = sorted(range(len(merged)), key=merged.__getitem__)
            images = torch.cat([t for _, t in parts])[order]
        return [merged[k] for k in order], images, failures, self.side.done()

    @torch.inference_mode()
    def forward(self, method: Method, images: torch.Tensor, labels: LabelSet) -> torch.Tensor:
        """(B, L) float32 scores of normalised images on this device: encoded once, then scored."""
        with self.autocast():
            code = method.encode(images)
        return self.score(method, code, labels)

    @torch.inference_mode()
    def run(self, method: Method, paths: Sequence[str | Path], labels: LabelSet, image_size: int) -> Iterator[Batch]:
        """Scores of every readable image in `paths` against `labels`, batch by batch, in input order.

        `method` is readied for inference in place (`for_inference`): load a model afresh to train it.
        """
        method = self.for_inference(method)
        if self.device.type == "cuda":
            # cuDNN's benchmark mode times every algorithm of each convolution on the first batch
            # of a shape: worth it over many batches, start-up cost for one (the one-photo row of
            # `zstag bench`, where zstag trailed the plain loop on the H200, 15.3 s against 13.4).
            torch.backends.cudnn.benchmark = len(paths) > self.batch_size
        if self.compiles(len(paths), image_size):
            method = self.compiled(method)
        labels = self.vocabulary(method, labels)
        dataset = ImageFiles(paths, image_size, jpeg_device=self.device if self.gpu_decode else None)
        if self.device.type == "cpu" and self.workers == 0:
            yield from self.streamed(method, dataset, labels)
            return
        waiting: list[tuple[Batch, torch.cuda.Event | None]] = []
        for indices, batch, failures in self.decoded(dataset):
            waiting.append(self.to_host(self.scored(method, labels, indices, batch, failures)))
            while len(waiting) > self.in_flight:
                yield self.arrived(*waiting.pop(0))
        for item in waiting:
            yield self.arrived(*item)

    def decoded(self, dataset: ImageFiles) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
        """(indices, uint8 batch on this device or None, failures) for every batch of `dataset`, in
        input order, through the loader (workers, or threads here) with the JPEGs the workers left
        undecoded merged in. The caller computes inside: torch keeps to the cores workers leave free.

        Batches from worker processes are merged (`pixels`: nvJPEG on a GPU, whose host side
        blocks until the batch is decoded) by a thread of their own, up to `DECODE_AHEAD` batches
        ahead, while this thread receives the next batch and its caller queues forward passes and
        writes results. The loader itself stays in this thread, so a worker's death and Ctrl-C
        are noticed and handled as without that thread, which has only one batch's decoding to
        finish when the run stops."""
        loader = self.loader(dataset)
        with threads_beside(self.device, loader.num_workers):
            if not isinstance(loader, DataLoader):
                for item in loader:
                    yield self.handed_over(self.merge(dataset, item))
                return
            # The device, with its index: a bare "cuda" would mean device 0 in the decoding thread.
            device = self.device
            if device.type == "cuda" and device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            merge = partial(self.merge, dataset, device=device)
            for merged in in_order(merge, loader, threads=1, ahead=DECODE_AHEAD, name="zstag-decode"):
                yield self.handed_over(merged)

    def merge(self, dataset: ImageFiles, item: Collated, device: torch.device | None = None) -> Merged:
        """One batch from the loader (`collate`'s) with its undecoded JPEGs merged in (`pixels`), in
        whichever thread calls this; with `device`, that CUDA device is made current in it first."""
        indices, batch, failures, encoded = item
        if not encoded:
            return indices, batch, failures, None
        on_device = (
            torch.cuda.device(device) if device is not None and device.type == "cuda" else contextlib.nullcontext()
        )
        with on_device:
            return self.pixels(dataset, indices, batch, failures, encoded)

    def handed_over(self, merged: Merged) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
        """A merged batch for the compute stream of the calling thread (`SideStream.hand_over`)."""
        indices, batch, failures, ready = merged
        return indices, None if batch is None else self.side.hand_over(batch, ready), failures

    def images(
        self,
        backbone: Backbone,
        paths: Sequence[str | Path],
        image_size: int,
    ) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
        """(indices, normalised images for `backbone` or None, failures) for every batch of `paths`, in
        input order: the decoding, device and batching of `run`, for callers that compute something
        other than scores (`zstag explain`, the trainer's feature cache)."""
        dataset = ImageFiles(paths, image_size, jpeg_device=self.device if self.gpu_decode else None)
        for indices, batch, failures in self.decoded(dataset):
            yield indices, None if batch is None else self.normalise(batch, backbone.mean, backbone.std), failures

    def scored(
        self,
        method: Method,
        labels: LabelSet,
        indices: list[int],
        batch: torch.Tensor | None,
        failures: list[tuple[int, str]],
    ) -> Batch:
        """One decoded batch's scores, on this device."""
        if batch is None:
            return Batch([], torch.zeros(0, len(labels)), failures)
        images = self.normalise(batch, method.backbone.mean, method.backbone.std)
        return Batch(indices, self.forward(method, images, labels), failures)

    def streamed(self, method: Method, dataset: ImageFiles, labels: LabelSet) -> Iterator[Batch]:
        """The CPU's way through `run`: whole batches, each decoded and scored by one of a few
        threads (`cpu_streams`), yielded in input order.

        While one stream decodes (Pillow, without the GIL), the others compute, so the cores stay
        busy without a worker process to start or compute threads to fight over cores. On the
        2-core machine, 2 streams of 1 thread tagged 1.1x to 1.3x as many images/s as decoding
        each batch on both cores and then computing it on both (docs/performance.md). One batch more
        than there are streams is queued, so no stream idles while the caller writes results.
        """
        batches = self.batches(dataset)
        streams, threads = cpu_streams(torch.get_num_threads(), len(batches))

        @torch.inference_mode()  # inference mode is per thread
        def score(indices: list[int]) -> Batch:
            return self.scored(method, labels, *collate([dataset[i] for i in indices])[:3])

        with torch_threads(threads):
            yield from in_order(score, batches, threads=streams, ahead=streams, name="zstag-stream")

    def to_host(self, batch: Batch) -> tuple[Batch, torch.cuda.Event | None]:
        """Start moving a batch's scores to the CPU; on CUDA into pinned memory, without waiting."""
        if self.device.type != "cuda":
            return Batch(batch.indices, batch.scores.cpu(), batch.failures), None
        host = torch.empty(batch.scores.shape, dtype=batch.scores.dtype, pin_memory=True)
        host.copy_(batch.scores, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return Batch(batch.indices, host, batch.failures), copied

    @staticmethod
    def arrived(batch: Batch, copied: torch.cuda.Event | None) -> Batch:
        """The batch once its scores are on the host."""
        if copied is not None:
            copied.synchronize()
        return batch
