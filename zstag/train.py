"""The one training loop. Methods supply modules and losses; this file owns everything else:
data, splits, optimiser and schedule, validation, the best checkpoint and the model directory.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zstag import console
from zstag.data.manifest import Sample, dataset_labels, read_dataset
from zstag.data.splits import remove_unseen, split_validation
from zstag.data.vocab import read_vocabulary
from zstag.engine import Engine, ImageFiles
from zstag.errors import UsageError
from zstag.metrics import mean_ap
from zstag.model_io import Model, build_model, save_model
from zstag.methods import method_class


@dataclass
class TrainOptions:
    data: Path
    method: str
    out: Path
    unseen: Path | None = None
    labels: Path | None = None
    backbone: str = "bundled"
    semantics: str = "minilm"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    image_size: int = 224
    device: str = "auto"
    seed: int = 0
    val_fraction: float = 0.1
    overrides: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None


class TaggedImages(Dataset):
    """Decoded training images with multi-hot targets over the seen labels."""

    def __init__(self, samples: list[Sample], seen: list[str], size: int) -> None:
        self.files = ImageFiles([s.image for s in samples], size)
        index = {label: i for i, label in enumerate(seen)}
        self.targets = torch.zeros(len(samples), len(seen))
        for row, s in enumerate(samples):
            for t in s.tags:
                if t in index:
                    self.targets[row, index[t]] = 1

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return (*self.files[i], self.targets[i])


def collate_tagged(items):
    ok = [(t, y) for _, t, _, y in items if t is not None]
    failures = [(i, reason) for i, t, reason, _ in items if t is None]
    if not ok:
        return None, None, failures
    return torch.stack([t for t, _ in ok]), torch.stack([y for _, y in ok]), failures


def augment(images: torch.Tensor, hp: dict[str, Any]) -> torch.Tensor:
    """Random flips and scale crops, per image, on the training device (one affine resampling)."""
    flip, scale = bool(hp["flip"]), float(hp["crop_scale"])
    if not flip and scale >= 1.0:
        return images
    b = images.shape[0]
    theta = torch.zeros(b, 2, 3, device=images.device)
    s = torch.empty(b, device=images.device).uniform_(min(scale, 1.0), 1.0)
    sign = torch.where(torch.rand(b, device=images.device) < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=images.device)
    theta[:, 0, 0], theta[:, 1, 1] = s * sign, s
    theta[:, 0, 2] = (torch.rand(b, device=images.device) * 2 - 1) * (1 - s)
    theta[:, 1, 2] = (torch.rand(b, device=images.device) * 2 - 1) * (1 - s)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_optimizer(params: list[torch.nn.Parameter], hp: dict[str, Any]) -> torch.optim.Optimizer:
    name, lr, wd = hp["optimizer"], float(hp["lr"]), float(hp["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd, momentum=float(hp["momentum"]))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(hp["momentum"]))
    raise UsageError(f"unknown optimizer {name!r}: use adam, adamw, rmsprop or sgd")


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def prepare_samples(opts: TrainOptions) -> tuple[list[Sample], list[str], list[str], int]:
    """(samples with unseen tags removed, seen labels, unseen labels, number of removed tags)."""
    samples = read_dataset(opts.data)
    if opts.labels:
        vocab = set(read_vocabulary(opts.labels))
        dropped = sum(t not in vocab for s in samples for t in s.tags)
        if dropped:
            console.info(f"{dropped} tag(s) outside --labels ignored")
        samples = [Sample(s.image, [t for t in s.tags if t in vocab]) for s in samples]
    unseen = read_vocabulary(opts.unseen) if opts.unseen else []
    samples, removed = remove_unseen(samples, unseen)
    if unseen:
        console.info(f"removed {removed} unseen tag(s) ({len(unseen)} unseen label(s)) from the training targets")
    seen = dataset_labels(samples)
    if not seen:
        raise UsageError(f"{opts.data}: no seen label left to train on")
    return samples, seen, unseen, removed


def validate(model: Model, engine: Engine, loader, seen) -> float:
    """mAP (zstag protocol) over the seen labels on the validation split."""
    method = model.method
    method.eval()
    scores, truths = [], []
    with torch.inference_mode():
        for images, targets, _ in loader:
            if images is None:
                continue
            x = engine.normalise(images, method.backbone.mean, method.backbone.std)
            with engine.autocast():
                scores.append(method.score(method.encode(x), seen).float().cpu())
            truths.append(targets)
    if not scores:
        return float("nan")
    value, _ = mean_ap(torch.cat(scores).numpy(), torch.cat(truths).numpy() > 0)
    return float(value)


def train(opts: TrainOptions) -> Model:
    """Train a model and write its directory; returns the best model (by validation mAP)."""
    cls = method_class(opts.method)
    generator = seed_everything(opts.seed)
    samples, seen_labels, unseen, removed = prepare_samples(opts)
    train_set, val_set = split_validation(samples, opts.val_fraction, opts.seed)
    overrides = dict(opts.overrides)
    for key, value in (("epochs", opts.epochs), ("batch_size", opts.batch_size), ("lr", opts.lr)):
        if value is not None:
            overrides[key] = value
    if "single_label" in cls.defaults and "single_label" not in overrides:
        overrides["single_label"] = all(len(s.tags) == 1 for s in train_set)
    engine = Engine(opts.device, batch_size=int(cls.hyperparameters(overrides)["batch_size"]), workers=opts.workers)
    model = build_model(opts.method, opts.backbone, opts.semantics, seen_labels, overrides, opts.image_size)
    hp = model.config["hp"]
    method = model.method.to(engine.device)
    seen = model.seen.to(engine.device)
    finetune = bool(hp["finetune_backbone"]) or opts.backbone == "small"
    if not finetune:
        method.backbone.requires_grad_(False)
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise UsageError(f"method {opts.method} has nothing to train with a frozen backbone")
    optimizer = make_optimizer(params, hp)
    train_loader = engine.loader(TaggedImages(train_set, seen_labels, opts.image_size), shuffle=True,
                                 collate_fn=collate_tagged, generator=generator, drop_last=len(train_set) > int(hp["batch_size"]))
    val_loader = engine.loader(TaggedImages(val_set, seen_labels, opts.image_size), collate_fn=collate_tagged) if val_set else None
    console.info(f"training {opts.method} on {len(train_set)} images ({len(val_set)} for validation), "
                 f"{len(seen_labels)} seen labels, backbone {opts.backbone}, device {engine.device}")

    def batches():
        for images, targets, _ in train_loader:
            if images is not None:
                yield engine.normalise(images, method.backbone.mean, method.backbone.std), targets.to(engine.device)

    def train_mode() -> None:
        method.train()
        if not finetune:
            method.backbone.eval()  # frozen batch-norm statistics

    train_mode()
    method.on_train_start(batches(), seen)
    epochs, lr = int(hp["epochs"]), float(hp["lr"])
    best, best_epoch, best_state, stale, failed = -math.inf, 0, None, 0, set()
    history = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        train_mode()
        if hp["schedule"] == "step" and epoch - 1 in [int(m) for m in hp["lr_milestones"]] and epoch > 1:
            lr = max(lr * float(hp["lr_factor"]), float(hp["min_lr"]))
            _set_lr(optimizer, lr)
        totals: dict[str, float] = {}
        steps = 0
        with console.progress(f"epoch {epoch}/{epochs}", len(train_loader)) as bar:
            for images, targets, failures in train_loader:
                failed.update(i for i, _ in failures)
                bar.update(1)
                if images is None:
                    continue
                x = augment(engine.normalise(images, method.backbone.mean, method.backbone.std), hp)
                with engine.autocast():
                    loss, parts = method.loss(x, targets.to(engine.device), seen)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"the {opts.method} loss became {loss.item()} at epoch {epoch}; try a lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                for k, v in {"loss": loss.item(), **parts}.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        means = {k: v / max(steps, 1) for k, v in totals.items()}
        val = validate(model, engine, val_loader, seen) if val_loader is not None else -means.get("loss", 0.0)
        history.append({"epoch": epoch, "lr": lr, "val_mAP": val if val_loader is not None else None, **means})
        parts_text = " ".join(f"{k} {v:.4g}" for k, v in means.items())
        console.info(f"epoch {epoch}/{epochs}  {parts_text}  " + (f"val mAP {100 * val:.2f}  " if val_loader is not None else "")
                     + f"lr {lr:.3g}  {time.perf_counter() - start:.1f}s")
        if val > best or best_state is None:
            best, best_epoch, stale = val, epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in method.state_dict().items()})
        else:
            stale += 1
            if hp["schedule"] == "plateau":
                lr = max(lr * float(hp["lr_factor"]), float(hp["min_lr"]))
                _set_lr(optimizer, lr)
            if int(hp["early_stopping"]) and stale >= int(hp["early_stopping"]):
                console.info(f"early stop: no improvement for {stale} epoch(s)")
                break
    if failed:
        console.warn(f"{len(failed)} training image(s) could not be read and were skipped")
    method.load_state_dict(best_state)
    method.eval()
    model.config["unseen_labels"] = unseen
    model.config["training"] = {
        "data": str(opts.data), "n_train": len(train_set), "n_val": len(val_set), "unseen_tags_removed": removed,
        "best_epoch": best_epoch, "best_val_mAP": best if val_loader is not None else None,
        "seconds": round(time.perf_counter() - start, 2), "device": str(engine.device), "seed": opts.seed,
        "history": history, "unreadable_images": len(failed),
    }
    save_model(model, opts.out)
    console.info(f"saved {opts.out} (best epoch {best_epoch})")
    return model
