"""The one training loop. Methods supply modules and losses; this file owns everything else:
data, splits, optimiser and schedule, validation, the best model, the epoch checkpoint that
`--resume` continues from, and the model directory.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from zstag.core import console, interrupt
from zstag.engine import distributed
from zstag.eval.calibration import fit_platt
from zstag.training.checkpoint import CHECKPOINT, load_checkpoint, restore_rng, save_checkpoint
from zstag.backbones.base import Backbone
from zstag.data.manifest import Sample, dataset_labels, read_dataset
from zstag.data.splits import remove_unseen, split_validation
from zstag.data.vocab import read_vocabulary
from zstag.engine.distributed import Share, current_share
from zstag.engine.engine import Engine, ImageFiles
from zstag.core.errors import UsageError
from zstag.data.labels import LabelSet
from zstag.methods import method_class
from zstag.methods.base import Method
from zstag.eval.metrics import mean_ap
from zstag.store.model import Model, build_model, save_model


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
    resume: bool = False

    def signature(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (epochs may grow, the device
        and the number of decoding workers may change)."""
        overrides = {k: v for k, v in self.overrides.items() if k != "epochs"}
        return {"data": str(Path(self.data).resolve()), "method": self.method,
                "unseen": str(Path(self.unseen).resolve()) if self.unseen else None,
                "labels": str(Path(self.labels).resolve()) if self.labels else None,
                "backbone": self.backbone, "semantics": self.semantics, "batch_size": self.batch_size,
                "lr": self.lr, "image_size": self.image_size, "seed": self.seed,
                "val_fraction": self.val_fraction, "overrides": overrides}


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


# Feature maps of the last frozen, pretrained backbone run in this process (the benchmark table
# trains many heads on the same split and backbone), keyed by backbone, size, device and images.
_STAGE_MEMO: dict[tuple, tuple] = {}


class StageCache(Backbone):
    """Stands in for a frozen backbone whose feature maps were computed once per image.

    With a frozen backbone every epoch would recompute the same features (LESA's and (ML)^2P's
    public code precompute them for this reason). The training loop then feeds methods a tensor of
    row indices instead of images; methods only hand their input to the backbone, so they run
    unchanged. The cached maps are plain attributes, never part of the state dict.
    """

    def __init__(self, backbone: Backbone, stages: list[torch.Tensor]) -> None:
        super().__init__()
        self.name, self.channels, self.region_stage = backbone.name, backbone.channels, backbone.region_stage
        self.classifier, self.class_names = backbone.classifier, backbone.class_names
        self.cached = stages

    def feature_maps(self, rows: torch.Tensor) -> Iterator[torch.Tensor]:
        index = rows.to(self.cached[0].device)
        return (s[index].to(rows.device).float() for s in self.cached)


class ShuffledBatches(Sampler[list[int]]):
    """Index batches of one shuffled order per epoch, drawn from the trainer's generator.

    Under torchrun every rank draws the same order (same seed) and takes its block of each global
    batch, so `batch_size` is the global batch and DDP's gradient average over the ranks equals the
    single-process gradient of that batch (for losses that average over images).
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator | None, drop_last: bool,
                 share: Share | None = None) -> None:
        self.n, self.batch_size, self.generator, self.drop_last, self.share = n, batch_size, generator, drop_last, share

    def __len__(self) -> int:
        if self.drop_last and self.n >= self.batch_size:
            return self.n // self.batch_size
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.generator is not None else torch.arange(self.n)
        for b in range(len(self)):
            pick = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield (pick[self.share.block(len(pick))] if self.share is not None else pick).tolist()


class ImageBatches:
    """Training batches as normalised, augmented images from the data loader."""

    def __init__(self, engine: Engine, loader, method: Method, hp: dict[str, Any], augmenting: bool) -> None:
        self.engine, self.loader, self.method, self.hp, self.augmenting = engine, loader, method, hp, augmenting
        self.failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        backbone = self.method.backbone
        for images, targets, failures in self.loader:
            self.failed.update(i for i, _ in failures)
            if images is None:
                continue
            x = self.engine.normalise(images, backbone.mean, backbone.std)
            yield (augment(x, self.hp) if self.augmenting else x), targets.to(self.engine.device)


class CachedBatches:
    """Training batches as row indices into a StageCache, in the batches of a ShuffledBatches."""

    def __init__(self, rows: torch.Tensor, targets: torch.Tensor, batches: ShuffledBatches, device: torch.device) -> None:
        self.rows, self.targets, self.batches, self.device = rows, targets, batches, device
        self.failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for pick in self.batches:
            yield self.rows[pick].to(self.device), self.targets[pick].to(self.device)


def cache_stages(engine: Engine, backbone: Backbone, loaders) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor, set[int]]]]:
    """Run the frozen backbone once over each loader; returns the stacked maps (fp16, on the
    device when it is a GPU) and, per loader, (rows, targets, failed inputs)."""
    parts: list[list[torch.Tensor]] = [[], [], []]
    spans, offset = [], 0
    keep_on = engine.device if engine.device.type == "cuda" else torch.device("cpu")
    with torch.inference_mode(), console.progress("computing backbone features", sum(len(l) for l in loaders)) as bar:
        for loader in loaders:
            targets, failed = [], set()
            for images, batch_targets, failures in loader:
                failed.update(i for i, _ in failures)
                bar.update(1)
                if images is None:
                    continue
                with engine.autocast():
                    stages = backbone.stages(engine.normalise(images, backbone.mean, backbone.std))
                for store, stage in zip(parts, stages):
                    store.append(stage.to(keep_on, torch.float16))
                targets.append(batch_targets)
            n = sum(len(t) for t in targets)
            spans.append((torch.arange(offset, offset + n), torch.cat(targets) if targets else torch.zeros(0), failed))
            offset += n
    return [torch.cat(p) for p in parts], spans


def split_scores(method: Method, engine: Engine, batches, seen: LabelSet) -> tuple[np.ndarray, np.ndarray]:
    """(scores, truth) over the seen labels for every image of a split."""
    method.eval()
    scores, truths = [], []
    with torch.inference_mode():
        for x, targets in batches:
            with engine.autocast():
                scores.append(method.score(method.encode(x), seen).float().cpu())
            truths.append(targets.cpu())
    if not scores:
        return np.zeros((0, len(seen))), np.zeros((0, len(seen)), dtype=bool)
    return torch.cat(scores).numpy(), torch.cat(truths).numpy() > 0


def validate(method: Method, engine: Engine, batches, seen: LabelSet) -> float:
    """mAP (zstag protocol) over the seen labels on the validation split."""
    scores, truth = split_scores(method, engine, batches, seen)
    if not len(scores):
        return float("nan")
    value, _ = mean_ap(scores, truth)
    return float(value)


def calibrate(method: Method, engine: Engine, batches, seen: LabelSet) -> dict[str, Any] | None:
    """Platt scaling fitted on the validation split (zstag/eval/calibration.py); None without one."""
    if batches is None:
        console.info("no validation split: scores stay uncalibrated")
        return None
    try:
        fitted = fit_platt(*split_scores(method, engine, batches, seen))
    except UsageError as exc:
        console.warn(f"scores stay uncalibrated: {exc}")
        return None
    return {**fitted, "fitted_on": "validation split"}


class LossStep(torch.nn.Module):
    """A method's loss as a module's forward: DistributedDataParallel synchronises the gradients
    of what runs through the forward of the module it wraps."""

    def __init__(self, method: Method, seen: LabelSet) -> None:
        super().__init__()
        self.method, self.seen = method, seen

    def forward(self, x: torch.Tensor, targets: torch.Tensor):
        return self.method.loss(x, targets, self.seen)


def kept_state(method: Method, finetune: bool) -> dict[str, torch.Tensor]:
    """The tensors training changes (a frozen backbone's never do), detached copies on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in method.state_dict().items()
            if finetune or not k.startswith("backbone.")}


def read_resume_point(opts: TrainOptions) -> dict[str, Any]:
    """The checkpoint to continue from, after checking it belongs to the same run."""
    path = Path(opts.out) / CHECKPOINT
    if not path.exists():
        done = (Path(opts.out) / "config.json").exists()
        raise UsageError(f"nothing to resume in {opts.out}: no {CHECKPOINT}"
                         + (" (the run there finished; a finished run keeps no checkpoint)" if done else "")
                         + "; start again without --resume")
    checkpoint = load_checkpoint(path)
    before, now = checkpoint["progress"]["options"], json.loads(json.dumps(opts.signature()))
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        details = "; ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in changed)
        raise UsageError(f"--resume must repeat the interrupted run's options (only --epochs, --device and "
                         f"--workers may change): {details}")
    return checkpoint


def train(opts: TrainOptions) -> Model:
    """Train a model and write its directory; returns the best model (by validation mAP).

    After every epoch a checkpoint (weights, optimiser, random generators, counters) is written
    atomically next to the model; `resume=True` continues from it as if the run had never stopped,
    and a run that finishes removes it.
    """
    cls = method_class(opts.method)
    resume_point = read_resume_point(opts) if opts.resume else None
    share = current_share()  # under torchrun: DistributedDataParallel, rank 0 writes
    writes = share is None or share.index == 0
    if not writes:
        console.configure(quiet=True)
    generator = seed_everything(opts.seed)
    samples, seen_labels, unseen, removed = prepare_samples(opts)
    train_set, val_set = split_validation(samples, opts.val_fraction, opts.seed)
    overrides = dict(opts.overrides)
    for key, value in (("epochs", opts.epochs), ("batch_size", opts.batch_size), ("lr", opts.lr)):
        if value is not None:
            overrides[key] = value
    if "single_label" in cls.defaults and "single_label" not in overrides:
        # Single-label data: every image has one tag (images of unseen classes have none left).
        overrides["single_label"] = all(len(s.tags) <= 1 for s in samples) and any(s.tags for s in samples)
    if overrides.get("single_label"):
        # The softmax protocol trains on seen-class images only, as in SGMA's zero-shot splits.
        train_set = [s for s in train_set if s.tags]
        val_set = [s for s in val_set if s.tags]
    engine = Engine(opts.device, batch_size=int(cls.hyperparameters(overrides)["batch_size"]), workers=opts.workers)
    model = build_model(opts.method, opts.backbone, opts.semantics, seen_labels, overrides, opts.image_size)
    hp = model.config["hp"]
    method = model.method.to(engine.device)
    seen = model.seen.to(engine.device)
    # A randomly initialised backbone is trained unless the user freezes it explicitly.
    finetune = bool(hp["finetune_backbone"]) or (opts.backbone == "small" and "finetune_backbone" not in overrides)
    if not finetune:
        method.backbone.requires_grad_(False)
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise UsageError(f"method {opts.method} has nothing to train with a frozen backbone")
    optimizer = make_optimizer(params, hp)
    batch_size = int(hp["batch_size"])
    drop_last = len(train_set) > batch_size
    train_images = TaggedImages(train_set, seen_labels, opts.image_size)
    val_images = TaggedImages(val_set, seen_labels, opts.image_size)
    console.info(f"training {opts.method} on {len(train_set)} images ({len(val_set)} for validation), "
                 f"{len(seen_labels)} seen labels, backbone {opts.backbone}, device {engine.device}")
    backbone = method.backbone
    cached = not finetune and bool(hp["cache_features"]) and not cls.reads_images
    if cached:
        backbone.eval()
        key = (opts.backbone, opts.image_size, str(engine.device), tuple(s.image for s in train_set), tuple(s.image for s in val_set))
        if opts.backbone == "small" or key not in _STAGE_MEMO:
            computed = cache_stages(engine, backbone, [engine.loader(d, collate_fn=collate_tagged) for d in (train_images, val_images)])
            _STAGE_MEMO.clear()  # one set at a time: a few hundred MB
            _STAGE_MEMO[key] = computed
        stages, spans = _STAGE_MEMO[key]
        # Targets come from this run's labels: the memo may have been filled by a run with others.
        spans = [(rows, data.targets[[i for i in range(len(data)) if i not in failed]], failed)
                 for (rows, _, failed), data in zip(spans, (train_images, val_images))]
        method.backbone = StageCache(backbone, stages)
        (train_rows, train_targets, failed), (val_rows, val_targets, val_failed) = spans
        failed |= val_failed
        train_batches = CachedBatches(train_rows, train_targets, ShuffledBatches(len(train_rows), batch_size, generator, drop_last, share), engine.device)
        val_batches = CachedBatches(val_rows, val_targets, ShuffledBatches(len(val_rows), batch_size, None, False), engine.device) if val_set else None
    else:
        sampler = ShuffledBatches(len(train_images), batch_size, generator, drop_last, share)
        train_batches = ImageBatches(engine, engine.loader(train_images, collate_fn=collate_tagged, batch_sampler=sampler), method, hp, True)
        val_batches = ImageBatches(engine, engine.loader(val_images, collate_fn=collate_tagged), method, hp, False) if val_set else None
        failed = set()

    def train_mode() -> None:
        method.train()
        if not finetune:
            method.backbone.eval()  # frozen batch-norm statistics

    train_mode()
    epochs, lr = int(hp["epochs"]), float(hp["lr"])
    best, best_epoch, best_state, stale, first_epoch = -math.inf, 0, None, 0, 1
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    if resume_point is None:
        method.on_train_start(iter(train_batches), seen)
    else:  # the warm-up's results are in the checkpoint's weights
        progress = resume_point["progress"]
        method.load_state_dict({**method.state_dict(), **resume_point["current"]})
        optimizer.load_state_dict(resume_point["optimizer"])
        restore_rng(resume_point["rng_tensors"], resume_point["rng"], generator)
        best_state = resume_point["best"]
        best, best_epoch, stale, lr = progress["best"], progress["best_epoch"], progress["stale"], progress["lr"]
        history, first_epoch = progress["history"], progress["epoch"] + 1
        start -= progress["seconds"]
        console.info(f"resuming after epoch {progress['epoch']} (best epoch {best_epoch})")
    step = LossStep(method, seen)
    if share is not None:
        distributed.start("nccl" if engine.device.type == "cuda" else "gloo")
        step = torch.nn.parallel.DistributedDataParallel(
            step, device_ids=[engine.device.index] if engine.device.type == "cuda" else None, find_unused_parameters=True)

    def record(complete: bool) -> None:
        """Write the model directory: after each improvement (so an interrupted run keeps its best
        epoch) and at the end. Under torchrun only rank 0 writes."""
        if not writes:
            return
        model.config["unseen_labels"] = unseen
        model.config["training"] = {
            "data": str(opts.data), "n_train": len(train_set), "n_val": len(val_set), "unseen_tags_removed": removed,
            "best_epoch": best_epoch, "best_val_mAP": best if val_batches is not None else None,
            "seconds": round(time.perf_counter() - start, 2), "device": str(engine.device), "seed": opts.seed,
            "history": history, "unreadable_images": len(failed), "cached_features": cached, "complete": complete,
        }
        save_model(model, opts.out)

    def checkpoint(epoch: int) -> None:
        if writes:
            save_checkpoint(Path(opts.out) / CHECKPOINT, kept_state(method, finetune), best_state, optimizer, generator, {
                "epoch": epoch, "lr": lr, "best": best, "best_epoch": best_epoch, "stale": stale, "history": history,
                "seconds": time.perf_counter() - start, "options": opts.signature()})

    epoch = first_epoch
    with interrupt.remembered() as ctrl_c:
        try:
            for epoch in range(first_epoch, epochs + 1):
                train_mode()
                if hp["schedule"] == "step" and epoch > 1 and epoch - 1 in [int(m) for m in hp["lr_milestones"]]:
                    lr = max(lr * float(hp["lr_factor"]), float(hp["min_lr"]))
                    _set_lr(optimizer, lr)
                totals: dict[str, float] = {}
                steps = 0
                with console.progress(f"epoch {epoch}/{epochs}", len(train_batches)) as bar:
                    for x, targets in train_batches:
                        bar.update(1)
                        with engine.autocast():
                            loss, parts = step(x, targets)
                        if not torch.isfinite(loss):
                            raise RuntimeError(f"the {opts.method} loss became {loss.item()} at epoch {epoch}; try a lower --lr")
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        steps += 1
                        for k, v in {"loss": loss.item(), **parts}.items():
                            totals[k] = totals.get(k, 0.0) + float(v)
                        ctrl_c.check()
                means = {k: v / max(steps, 1) for k, v in totals.items()}
                val = validate(method, engine, val_batches, seen) if val_batches is not None else -means.get("loss", 0.0)
                history.append({"epoch": epoch, "lr": lr, "val_mAP": val if val_batches is not None else None, **means})
                parts_text = " ".join(f"{k} {v:.4g}" for k, v in means.items())
                console.info(f"epoch {epoch}/{epochs}  {parts_text}  " + (f"val mAP {100 * val:.2f}  " if val_batches is not None else "")
                             + f"lr {lr:.3g}  {time.perf_counter() - start:.1f}s")
                if val > best or best_state is None:
                    best, best_epoch, stale = val, epoch, 0
                    best_state = kept_state(method, finetune)
                    record(complete=False)
                else:
                    stale += 1
                    if hp["schedule"] == "plateau":
                        lr = max(lr * float(hp["lr_factor"]), float(hp["min_lr"]))
                        _set_lr(optimizer, lr)
                checkpoint(epoch)
                if int(hp["early_stopping"]) and stale >= int(hp["early_stopping"]):
                    console.info(f"early stop: no improvement for {stale} epoch(s)")
                    break
            # With cached features the snapshot lacks the frozen backbone's tensors, which never changed.
            method.load_state_dict({**method.state_dict(), **best_state})
            model.config["calibration"] = calibrate(method, engine, val_batches, seen)
        except KeyboardInterrupt:
            console.warn(f"interrupted in epoch {epoch}: {opts.out} keeps the best model so far and the checkpoint "
                         "of the last finished epoch; run the same command with --resume to continue")
            raise
        finally:
            method.backbone = backbone
            if share is not None:
                distributed.close()
    failed |= getattr(train_batches, "failed", set())
    if failed:
        console.warn(f"{len(failed)} training image(s) could not be read and were skipped")
    method.eval()
    record(complete=True)
    if writes:
        (Path(opts.out) / CHECKPOINT).unlink(missing_ok=True)
    console.info(f"saved {opts.out} (best epoch {best_epoch})")
    return model

