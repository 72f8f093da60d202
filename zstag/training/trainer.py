"""The one training loop. Methods supply modules and losses; the loop owns everything else:
data and splits, validation, the best model, the epoch checkpoint that `--resume` continues from,
and the model directory. Its parts live beside it: batches and samplers (`batches`), the
optimiser and lr schedule (`optim`), cached backbone features (`features`) and the checkpoint with
the loop's counters (`checkpoint`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zstag.backbones import SCRATCH_BACKBONES
from zstag.core import console, interrupt
from zstag.core.errors import UsageError
from zstag.data.labels import LabelSet
from zstag.data.manifest import Sample, dataset_labels, read_dataset
from zstag.data.splits import remove_unseen, split_validation
from zstag.data.vocab import read_vocabulary
from zstag.engine import distributed
from zstag.engine.distributed import current_share
from zstag.engine.engine import Engine
from zstag.eval.calibration import fit_platt
from zstag.eval.metrics import mean_ap
from zstag.methods import method_class
from zstag.methods.base import Method
from zstag.store.model import Model, build_model, save_model
from zstag.training.batches import CachedBatches, ImageBatches, ShuffledBatches, TaggedImages, collate_tagged
from zstag.training.checkpoint import CHECKPOINT, TrainState, load_checkpoint, restore_rng, save_checkpoint
from zstag.training.checks import label_warnings, shown, unseen_typos
from zstag.training.features import FeatureCache, StageCache
from zstag.training.optim import Schedule, make_optimizer
from zstag.training.options import TrainOptions


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def prepare_samples(opts: TrainOptions) -> tuple[list[Sample], list[str], list[str], int]:
    """(samples with unseen tags removed, seen labels, unseen labels, number of removed tags)."""
    samples = read_dataset(opts.data)
    if opts.labels:
        vocab = set(read_vocabulary(opts.labels))
        dropped = sum(t not in vocab for s in samples for t in s.tags)
        if dropped:
            console.info(f"{dropped} tag(s) outside --labels ignored")
        samples = [Sample(s.image, [t for t in s.tags if t in vocab]) for s in samples]
    for warning in label_warnings(samples):
        console.warn(f"{opts.data}: {warning}")
    unseen = read_vocabulary(opts.unseen) if opts.unseen else []
    for warning in unseen_typos(unseen, dataset_labels(samples)):
        console.warn(f"{opts.unseen}: {warning}")
    samples, removed = remove_unseen(samples, unseen)
    if unseen:
        console.info(f"removed {removed} unseen tag(s) ({len(unseen)} unseen label(s)) from the training targets")
    seen = dataset_labels(samples)
    if not seen:
        raise UsageError(f"{opts.data}: no seen label left to train on")
    return samples, seen, unseen, removed


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
    return {
        k: v.detach().cpu().clone() for k, v in method.state_dict().items() if finetune or not k.startswith("backbone.")
    }


def read_resume_point(opts: TrainOptions) -> dict[str, Any]:
    """The checkpoint to continue from, after checking it belongs to the same run."""
    path = Path(opts.out) / CHECKPOINT
    if not path.exists():
        done = (Path(opts.out) / "config.json").exists()
        raise UsageError(
            f"nothing to resume in {opts.out}: no {CHECKPOINT}"
            + (" (the run there finished; a finished run keeps no checkpoint)" if done else "")
            + "; start again without --resume"
        )
    checkpoint = load_checkpoint(path)
    before, now = checkpoint["progress"]["options"], json.loads(json.dumps(opts.signature()))
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        details = "; ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in changed)
        raise UsageError(
            f"--resume must repeat the interrupted run's options (only --epochs, --device and "
            f"--workers may change): {details}"
        )
    return checkpoint


def run_overrides(opts: TrainOptions, cls: type[Method], samples: list[Sample]) -> dict[str, Any]:
    """The settings this run changes from the method's defaults: the user's overrides, the epochs,
    batch size and lr given as options, and the single-label protocol when the data calls for it."""
    overrides = dict(opts.overrides)
    for key, value in (("epochs", opts.epochs), ("batch_size", opts.batch_size), ("lr", opts.lr)):
        if value is not None:
            overrides[key] = value
    if cls.has_single_label_protocol() and "single_label" not in overrides:
        # Single-label data: every image has one tag (images of unseen classes have none left).
        overrides["single_label"] = all(len(s.tags) <= 1 for s in samples) and any(s.tags for s in samples)
    return overrides


@dataclass
class Batches:
    """The training and validation batches of a run, and the images found unreadable so far."""

    train: ImageBatches | CachedBatches
    val: ImageBatches | CachedBatches | None
    cached: bool  # batches are rows of cached backbone features
    paths: list[str | Path]  # the training images, then the validation images
    n_train: int
    failed: set[int]  # positions in `paths` found unreadable before training (cached features)

    def unreadable(self) -> list[str | Path]:
        """The images that could not be read; image batches note theirs as they meet them."""
        rows = set(self.failed)
        if isinstance(self.train, ImageBatches):
            rows |= self.train.failed
        if isinstance(self.val, ImageBatches):
            rows |= {self.n_train + i for i in self.val.failed}
        return [self.paths[i] for i in sorted(rows)]


# The training order for a number of training rows (one shuffle per epoch from the run's generator).
Shuffler = Callable[[int], ShuffledBatches]


def image_batches(
    engine: Engine, method: Method, data: tuple[TaggedImages, TaggedImages], shuffled: Shuffler, has_val: bool
) -> Batches:
    """Decoded, normalised images each epoch; the training batches augmented by the recipe."""
    train_images, val_images = data
    sampler = shuffled(len(train_images))
    train = ImageBatches(
        engine,
        engine.loader(train_images, collate_fn=collate_tagged, batch_sampler=sampler),
        method.backbone,
        method.hp.recipe,
    )
    val = (
        ImageBatches(engine, engine.loader(val_images, collate_fn=collate_tagged), method.backbone, None)
        if has_val
        else None
    )
    return Batches(train, val, False, [*train_images.files.paths, *val_images.files.paths], len(train_images), set())


def cached_batches(
    engine: Engine,
    method: Method,
    opts: TrainOptions,
    data: tuple[TaggedImages, TaggedImages],
    shuffled: Shuffler,
    has_val: bool,
    cache: FeatureCache,
) -> Batches:
    """Rows of the frozen backbone's maps, computed once (or found in `cache`); `method.backbone`
    becomes the `StageCache` that serves them until the caller puts the backbone back."""
    train_images, val_images = data
    splits = [list(d.files.paths) for d in data]
    features = cache.features(
        engine, method.backbone, opts.backbone, splits, opts.image_size, reusable=opts.backbone not in SCRATCH_BACKBONES
    )
    method.backbone = StageCache(method.backbone, features.stages)
    order = torch.tensor(features.indices, dtype=torch.long)
    # Targets come from this run's labels: the cache may have been filled by a run with others.
    targets = torch.cat([train_images.targets, val_images.targets])
    in_train = order < len(train_images)
    train_rows, val_rows = torch.nonzero(in_train).flatten(), torch.nonzero(~in_train).flatten()
    train = CachedBatches(train_rows, targets[order[train_rows]], shuffled(len(train_rows)), engine.device)
    in_order = ShuffledBatches(len(val_rows), engine.batch_size, None, False)
    val = CachedBatches(val_rows, targets[order[val_rows]], in_order, engine.device) if has_val else None
    return Batches(
        train, val, True, [p for split in splits for p in split], len(train_images), {i for i, _ in features.failures}
    )


def train(opts: TrainOptions, feature_cache: FeatureCache | None = None) -> Model:
    """Train a model and write its directory; returns the best model (by validation mAP).

    After every epoch a checkpoint (weights, optimiser, random generators, counters) is written
    atomically next to the model; `resume=True` continues from it as if the run had never stopped,
    and a run that finishes removes it. `feature_cache` keeps a frozen backbone's maps for the next
    run on the same images (tools/table.py); without one they are computed for this run only.
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
    overrides = run_overrides(opts, cls, samples)
    engine = Engine(opts.device, batch_size=cls.hyperparameters(overrides).recipe.batch_size, workers=opts.workers)
    model = build_model(opts.method, opts.backbone, opts.semantics, seen_labels, overrides, opts.image_size)
    method = model.method.to(engine.device)
    method.on_unseen_labels(unseen)
    recipe = method.hp.recipe
    assert model.seen is not None  # build_model embeds the seen labels
    seen = model.seen.to(engine.device)
    if method.single_label:
        # The softmax protocol trains on seen-class images only, as in SGMA's zero-shot splits.
        train_set = [s for s in train_set if s.tags]
        val_set = [s for s in val_set if s.tags]
    # A randomly initialised backbone is trained unless the user freezes it explicitly.
    finetune = method.trains_backbone or (opts.backbone in SCRATCH_BACKBONES and "finetune_backbone" not in overrides)
    if not finetune:
        method.backbone.requires_grad_(False)
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise UsageError(f"method {opts.method} has nothing to train with a frozen backbone")
    optimizer = make_optimizer(params, method.hp)
    schedule = Schedule(recipe, optimizer)
    data = (TaggedImages(train_set, seen_labels, opts.image_size), TaggedImages(val_set, seen_labels, opts.image_size))
    console.info(
        f"training {opts.method} on {len(train_set)} images ({len(val_set)} for validation), "
        f"{len(seen_labels)} seen labels, backbone {opts.backbone}, device {engine.device}"
    )
    backbone = method.backbone
    drop_last = len(train_set) > recipe.batch_size

    def shuffled(n: int) -> ShuffledBatches:
        return ShuffledBatches(n, recipe.batch_size, generator, drop_last, share)

    if not finetune and recipe.cache_features and not cls.reads_images:
        batches = cached_batches(engine, method, opts, data, shuffled, bool(val_set), feature_cache or FeatureCache())
    else:
        batches = image_batches(engine, method, data, shuffled, bool(val_set))

    def train_mode() -> None:
        method.train()
        if not finetune:
            method.backbone.eval()  # frozen batch-norm statistics

    train_mode()
    state = TrainState(lr=recipe.lr)
    best_state: dict[str, torch.Tensor] | None = None
    start = time.perf_counter()
    if resume_point is None:
        method.on_train_start(iter(batches.train), seen)
    else:  # the warm-up's results are in the checkpoint's weights
        state = TrainState.from_progress(resume_point["progress"])
        method.load_state_dict({**method.state_dict(), **resume_point["current"]})
        optimizer.load_state_dict(resume_point["optimizer"])
        restore_rng(resume_point["rng_tensors"], resume_point["rng"], generator)
        best_state = resume_point["best"]
        start -= state.seconds
        console.info(f"resuming after epoch {state.epoch} (best epoch {state.best_epoch})")
    step: torch.nn.Module = LossStep(method, seen)  # or its DistributedDataParallel wrapper
    if share is not None:
        distributed.start("nccl" if engine.device.type == "cuda" else "gloo")
        step = torch.nn.parallel.DistributedDataParallel(
            step,
            device_ids=[engine.device.index] if engine.device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    def record(complete: bool) -> None:
        """Write the model directory: after each improvement (so an interrupted run keeps its best
        epoch) and at the end. Under torchrun only rank 0 writes."""
        if not writes:
            return
        model.config["unseen_labels"] = unseen
        model.config["training"] = {
            "data": str(opts.data),
            "n_train": len(train_set),
            "n_val": len(val_set),
            "unseen_tags_removed": removed,
            "best_epoch": state.best_epoch,
            "best_val_mAP": state.best if batches.val is not None else None,
            "seconds": round(time.perf_counter() - start, 2),
            "device": str(engine.device),
            "seed": opts.seed,
            "history": state.history,
            "unreadable_images": len(batches.unreadable()),
            "cached_features": batches.cached,
            "complete": complete,
        }
        save_model(model, opts.out)

    epoch = state.epoch + 1
    with interrupt.remembered() as ctrl_c:
        try:
            for epoch in range(state.epoch + 1, recipe.epochs + 1):
                train_mode()
                state.lr = schedule.epoch_start(epoch, state.lr)
                means = run_epoch(step, optimizer, engine, batches.train, ctrl_c, opts.method, epoch, recipe.epochs)
                val = (
                    validate(method, engine, batches.val, seen) if batches.val is not None else -means.get("loss", 0.0)
                )
                state.history.append(
                    {"epoch": epoch, "lr": state.lr, "val_mAP": val if batches.val is not None else None, **means}
                )
                parts_text = " ".join(f"{k} {v:.4g}" for k, v in means.items())
                console.info(
                    f"epoch {epoch}/{recipe.epochs}  {parts_text}  "
                    + (f"val mAP {100 * val:.2f}  " if batches.val is not None else "")
                    + f"lr {state.lr:.3g}  {time.perf_counter() - start:.1f}s"
                )
                state.epoch = epoch
                if val > state.best or best_state is None:
                    state.best, state.best_epoch, state.stale = val, epoch, 0
                    best_state = kept_state(method, finetune)
                    record(complete=False)
                else:
                    state.stale += 1
                state.lr = schedule.epoch_end(state.history, state.lr)  # plateau: val mAP or training loss
                if writes:
                    state.seconds = time.perf_counter() - start
                    save_checkpoint(
                        Path(opts.out) / CHECKPOINT,
                        kept_state(method, finetune),
                        best_state,
                        optimizer,
                        generator,
                        state,
                        opts.signature(),
                    )
                if recipe.early_stopping and state.stale >= recipe.early_stopping:
                    console.info(f"early stop: no improvement for {state.stale} epoch(s)")
                    break
            # With cached features the snapshot lacks the frozen backbone's tensors, which never changed.
            assert best_state is not None  # set by the first epoch (epochs >= 1) or read from the checkpoint
            method.load_state_dict({**method.state_dict(), **best_state})
            model.config["calibration"] = calibrate(method, engine, batches.val, seen)
        except KeyboardInterrupt:
            console.warn(
                f"interrupted in epoch {epoch}: {opts.out} keeps the best model so far and the checkpoint "
                "of the last finished epoch; run the same command with --resume to continue"
            )
            raise
        finally:
            method.backbone = backbone
            if share is not None:
                distributed.close()
    unreadable = batches.unreadable()
    if unreadable:
        console.warn(
            f"{len(unreadable)} training image(s) could not be read and were skipped: "
            f"{shown([str(p) for p in unreadable])}"
        )
    method.eval()
    record(complete=True)
    if writes:
        (Path(opts.out) / CHECKPOINT).unlink(missing_ok=True)
    console.info(f"saved {opts.out} (best epoch {state.best_epoch})")
    return model


def run_epoch(
    step: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    engine: Engine,
    batches: ImageBatches | CachedBatches,
    ctrl_c: interrupt.CtrlC,
    name: str,
    epoch: int,
    epochs: int,
) -> dict[str, float]:
    """One pass of optimiser steps over `batches`; the mean of the loss and of each of its named
    parts, for the epoch's log line and history."""
    totals: dict[str, float] = {}
    steps = 0
    with console.progress(f"epoch {epoch}/{epochs}", len(batches)) as bar:
        for x, targets in batches:
            bar.update(1)
            with engine.autocast():
                loss, parts = step(x, targets)
            if not torch.isfinite(loss):
                raise RuntimeError(f"the {name} loss became {loss.item()} at epoch {epoch}; try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            for k, v in {"loss": loss.item(), **parts}.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            ctrl_c.check()
    return {k: v / max(steps, 1) for k, v in totals.items()}
