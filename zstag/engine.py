"""The one inference engine: devices, precision, batching, decoding and vocabulary scoring.

`tag`, `eval --model` and `bench` go through `Engine`; the trainer reuses its device handling and
data path. Images are decoded and resized to uint8 tensors in DataLoader workers (Pillow, with JPEG
draft decoding), moved to the device with pinned, non-blocking copies, normalised there, and encoded
once per image; the label vectors of the vocabulary are embedded once per run and scored in chunks
so that memory stays bounded for any vocabulary size.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from zstag.errors import ImageError, UsageError
from zstag.labels import LabelSet
from zstag.methods.base import ImageCode, Method

# Labels scored at once; a (batch x chunk) score block stays small whatever the vocabulary.
LABEL_CHUNK = 8192


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; `cuda[:i]` without CUDA is a usage error, not a crash later."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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


def default_workers(device: torch.device) -> int:
    """Decoding processes: on a GPU as many as cores allow; on a CPU one, leaving cores for compute."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(16, max(cores - 1, 0)) if device.type == "cuda" else min(1, cores - 1)


class ImageFiles(Dataset):
    """Decodes image files to uint8 (3, size, size) tensors; a failure becomes a reason, not an exception."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths = paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        from zstag.data.images import decode_image, to_tensor

        try:
            return index, to_tensor(decode_image(self.paths[index], self.size), self.size), None
        except ImageError as exc:
            return index, None, str(exc)


def collate(items: list[tuple[int, torch.Tensor | None, str | None]]):
    """(indices of decoded images, their stacked uint8 batch or None, [(index, reason)] failures)."""
    ok = [(i, t) for i, t, _ in items if t is not None]
    failures = [(i, reason) for i, t, reason in items if t is None]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], batch, failures


@dataclass
class Batch:
    indices: list[int]  # positions in the input list of the images in `scores`
    scores: torch.Tensor  # (len(indices), L) float32 on the CPU
    failures: list[tuple[int, str]]  # inputs that could not be decoded, with the reason


class Engine:
    """Runs a method over images on one device, in one precision, in batches."""

    def __init__(self, device: str = "auto", batch_size: int = 64, workers: int | None = None) -> None:
        self.device = resolve_device(device)
        self.batch_size = max(1, batch_size)
        self.workers = default_workers(self.device) if workers is None else max(0, workers)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def autocast(self):
        """bf16 autocast on GPU; full precision on CPU, where bf16 is rarely faster."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loader(self, dataset: Dataset, shuffle: bool = False, batch_size: int | None = None,
               collate_fn=collate, generator: torch.Generator | None = None, drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size or self.batch_size, shuffle=shuffle, num_workers=self.workers,
                          collate_fn=collate_fn, pin_memory=self.device.type == "cuda", generator=generator,
                          persistent_workers=False, prefetch_factor=4 if self.workers else None, drop_last=drop_last)

    def normalise(self, batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
        """uint8 (B, 3, H, W) on any device -> normalised float on this device."""
        x = batch.to(self.device, non_blocking=True).float().div_(255)
        m = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        x = (x - m) / s
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def prepare(self, method: Method) -> Method:
        method.to(self.device).eval()
        if self.device.type == "cuda":
            method.to(memory_format=torch.channels_last)
        return method

    @torch.inference_mode()
    def score(self, method: Method, code: ImageCode, labels: LabelSet) -> torch.Tensor:
        """(B, L) float32 scores, the vocabulary in chunks when the method allows it."""
        if not method.chunkable or len(labels) <= LABEL_CHUNK:
            with self.autocast():
                return method.score(code, labels).float()
        parts = []
        for start in range(0, len(labels), LABEL_CHUNK):
            with self.autocast():
                parts.append(method.score(code, labels.subset(slice(start, start + LABEL_CHUNK))).float())
        return torch.cat(parts, dim=1)

    @torch.inference_mode()
    def run(self, method: Method, paths: Sequence[Path], labels: LabelSet, image_size: int) -> Iterator[Batch]:
        """Scores of every readable image in `paths` against `labels`, batch by batch, in input order."""
        method = self.prepare(method)
        labels = labels.to(self.device)
        backbone = method.backbone
        for indices, batch, failures in self.loader(ImageFiles(paths, image_size)):
            if batch is None:
                yield Batch([], torch.zeros(0, len(labels)), failures)
                continue
            images = self.normalise(batch, backbone.mean, backbone.std)
            with self.autocast():
                code = method.encode(images)
            yield Batch(indices, self.score(method, code, labels).cpu(), failures)
