"""`zstag bench`: what tagging costs on this machine, measured in one run.

Sections (`--only` picks some):
- end-to-end: N synthetic 500x375 JPEG photos tagged by `zstag tag`'s own code
  (`zstag.jobs.tag.tag`) and by the straightforward loop of `zstag.bench.naive`, same model
  and labels, in this process (on CUDA the loop is a DataLoader with a Pillow worker per core,
  at most 16, and pinned memory); then one photo each through `python -m zstag tag` and
  `python -m zstag.bench.naive` as fresh processes, start-up included.
- forward: the model's backbone + head on a batch already on the device, in the engine's
  precision and memory layout; eager, and compiled (`torch.compile`, on CUDA by default or with
  `--compile`), with the compilation's cost apart and the run length from which it pays.
- vocab-scale: the same forward scored against 100 and 100,000 labels (random unit vectors: no
  text model needed), with peak memory and the largest tensor any operation built.
- methods: every method's head on one backbone: inference and training images/s, peak memory.
- decode: the engine's CPU path (Pillow, one process) against its device path
  (`torchvision.io.decode_jpeg` in batches + resize; nvJPEG on CUDA, libjpeg-turbo on a CPU).
- pipeline: where `zstag tag`'s time goes: the engine's run cut after each stage (files read,
  decoded, scored eager and compiled with the scores on the host, then the whole job with writing),
  images/s of each prefix over the end-to-end photos, so the slowest stage shows as the first drop.

Every number is measured here and now: the best of a few timed repeats after a warm-up (the best,
because on a shared machine interference only ever adds time), and what is compared takes turns
within each repeat, so that a change in the machine's load hits both sides. Each row names the
device, torch version, batch size, image size and command line; the report also records the load
average at the start, since a busy machine slows everything it measures.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from zstag import __version__
from zstag.bench.memory import LargestTensor, PeakMemory
from zstag.bench.options import SECTIONS, BenchOptions
from zstag.bench.photos import PHOTO_SIZE, write_photos
from zstag.core import console
from zstag.core.errors import MissingWeightsError, UsageError
from zstag.data.labels import LabelSet
from zstag.engine.engine import Batch, Engine, ImageFiles, available_cores, compile_settings
from zstag.methods import ASSEMBLED, METHODS
from zstag.methods.base import Method
from zstag.store.model import Model

DECODE_PHOTOS = 2048  # the decode section's share: Pillow on one core takes seconds for these already
# Everyday photo words for the end-to-end runs (embedded once by the model's text encoder).
VOCABULARY = (
    "dog",
    "cat",
    "person",
    "car",
    "tree",
    "beach",
    "mountain",
    "sky",
    "building",
    "flower",
    "food",
    "boat",
    "bicycle",
    "bird",
    "horse",
    "sunset",
    "snow",
    "river",
    "street",
    "house",
)
TOP_K = 10
SEEN_LABELS, SCORED_LABELS, SEMANTIC_DIM = 100, 1000, 384  # the methods section's label sets
PAPER_BACKBONES = ("vgg19", "resnet101")
# The targets that hold on any machine (ratios); absolute GPU targets are in docs/performance.md.
TARGETS = {"end-to-end": 1.5, "single-image": 1.0, "vocab-scale": 1.10}


@dataclass(frozen=True)
class Plan:
    """The sizes of one run: full, or `--quick`'s (well under a minute on two CPU cores), then the user's."""

    images: int
    batch_size: int
    repeats: int
    train_steps: int
    vocab: tuple[int, int]

    @classmethod
    def make(cls, opts: BenchOptions, device: torch.device) -> Plan:
        if opts.quick:
            plan = cls(images=16, batch_size=8, repeats=1, train_steps=1, vocab=(100, 20_000))
        elif device.type == "cuda":
            plan = cls(images=16384, batch_size=256, repeats=3, train_steps=5, vocab=(100, 100_000))
        else:
            plan = cls(images=256, batch_size=32, repeats=3, train_steps=3, vocab=(100, 100_000))
        return cls(
            images=opts.images or plan.images,
            batch_size=opts.batch_size or plan.batch_size,
            repeats=opts.repeats or plan.repeats,
            train_steps=plan.train_steps,
            vocab=plan.vocab,
        )


def run(opts: BenchOptions) -> dict[str, Any]:
    """Measure the chosen sections, show a table per section on stderr, write `--json`; returns the report."""
    only = opts.only or list(SECTIONS)
    engine = Engine(opts.device, workers=opts.workers, compile=opts.compile)
    plan = Plan.make(opts, engine.device)
    engine.batch_size = plan.batch_size  # what a compiled model pads its batches to
    report: dict[str, Any] = {
        "zstag": __version__,
        "command": opts.command,
        "machine": machine(engine.device),
        "plan": asdict(plan),
        "targets": TARGETS,
        "sections": {},
    }
    with tempfile.TemporaryDirectory(prefix="zstag-bench-") as work:
        bench = Bench(opts, plan, engine, Path(work))
        for name in [s for s in SECTIONS if s in only]:
            console.info(f"bench: {name} ...")
            report["sections"][name] = SECTION_FUNCTIONS[name](bench)
            render(name, report["sections"][name])
            write_json(opts, report)  # after every section: a run stopped later keeps what it measured
    report["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write_json(opts, report)
    return report


def write_json(opts: BenchOptions, report: dict[str, Any]) -> None:
    if opts.json_path is not None and str(opts.json_path) != "-":
        from zstag.core.atomic import atomic_write_text

        atomic_write_text(Path(opts.json_path), json.dumps(report, indent=2) + "\n")


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on besides the code: hardware, versions, threads and current load."""
    import PIL
    import torchvision

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "device": device_name(device),
        "cpu": cpu_name(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {cpu_name()}"


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class Bench:
    """What the sections share: options, sizes, the engine, a work folder, and things made once."""

    def __init__(self, opts: BenchOptions, plan: Plan, engine: Engine, work: Path) -> None:
        self.opts, self.plan, self.engine, self.work = opts, plan, engine, work
        self._photos: list[Path] | None = None
        self._model: Model | None = None

    def row(self, batch_size: int, image_size: int, **fields: Any) -> dict[str, Any]:
        return {
            **fields,
            "batch_size": batch_size,
            "image_size": image_size,
            "device": device_name(self.engine.device),
            "torch": torch.__version__,
            "command": self.opts.command,
        }

    def photos(self) -> list[Path]:
        if self._photos is None:
            self._photos = write_photos(self.work / "photos", self.plan.images)
        return self._photos

    def vocabulary(self) -> Path:
        path = self.work / "vocab.txt"
        path.write_text("\n".join(VOCABULARY) + "\n", encoding="utf-8")
        return path

    def model(self) -> Model:
        """The model the model sections measure: `--model`, or, when `--backbone` / `--image-size`
        ask for another shape, its method rebuilt that way (an ensemble's first member's). Speed
        does not depend on weights, so a GPU with no trained VGG19 model can still measure one:
        backbone weights come from the fetch cache when they are there, else from a random
        initialisation (the `weights` field says which).
        """
        if self._model is None:
            from zstag.store.model import build_model, load_model, save_model

            model = load_model(self.opts.model)
            model.config["weights"] = "trained"
            config, size = model.config, self.opts.image_size or model.image_size
            backbone = self.opts.backbone or config["backbone"]
            if (backbone, size) != (config["backbone"], model.image_size):
                method, hp = config["method"], config["hp"]
                if method not in METHODS and method not in ASSEMBLED:  # a ready-made model (CLIP zero-shot)
                    raise UsageError(
                        f"--backbone and --image-size do not apply to the ready-made model {self.opts.model}: "
                        f"it has no trained head to rebuild (measure it as it is, at {model.image_size} px)"
                    )
                if method == "ensemble":  # the targets name one head on that backbone (VGG19 + LESA)
                    method, hp = hp["members"][0]["method"], hp["members"][0]["hp"]
                hp = {**hp, "finetune_backbone": True}  # so the backbone's tensors are saved with it
                args = (method, backbone, config["semantics"], config["seen_labels"], hp, size)
                try:
                    model = build_model(*args, pretrained=True)
                    model.config["weights"] = "pretrained backbone, random head"
                except MissingWeightsError:
                    model = build_model(*args, pretrained=False)
                    model.config["weights"] = "random init"
                # Saved now, for `zstag tag` and the loop to load (`model_ref`), before a section
                # folds its batch norms (`Engine.for_inference` changes the modules in place).
                model.path = self.work / "model"
                save_model(model, model.path)
            self._model = model
        return self._model

    def model_ref(self) -> str:
        """How `zstag tag` and the loop name the model: `--model`, or the rebuilt one's folder."""
        model = self.model()
        return self.opts.model if model.config["weights"] == "trained" else str(model.path)

    def describe_model(self) -> dict[str, Any]:
        config = self.model().config
        return {"method": config["method"], "backbone": config["backbone"], "weights": config["weights"]}

    def device_batch(self, size: int, backbone) -> torch.Tensor:
        """A normalised batch of random pixels on the device, laid out as the engine lays out images."""
        g = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (self.plan.batch_size, 3, size, size), dtype=torch.uint8, generator=g)
        return self.engine.normalise(pixels, backbone.mean, backbone.std)

    def timed(
        self, calls: Mapping[str, Callable[[], object]], repeats: int | None = None, warm_up: bool = True
    ) -> dict[str, float]:
        """Best wall time of each call over `repeats` rounds in which the calls take turns, so that a
        change in the machine's load hits all of them alike; one untimed round first unless
        `warm_up` is off (the caller warmed up more cheaply). The device is synchronised around each."""
        times: dict[str, list[float]] = {name: [] for name in calls}
        for attempt in range(int(warm_up) + (repeats or self.plan.repeats)):
            for name, call in calls.items():
                self.synchronize()
                start = time.perf_counter()
                call()
                self.synchronize()
                if attempt >= int(warm_up):
                    times[name].append(time.perf_counter() - start)
        return {name: min(t) for name, t in times.items()}

    def compiles(self) -> bool:
        """Whether the forward section also measures the compiled model: `--compile`, or on CUDA
        unless `--no-compile`."""
        if self.opts.compile is not None:
            return self.opts.compile
        return self.engine.device.type == "cuda"

    def synchronize(self) -> None:
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)


# -- sections -----------------------------------------------------------------------------------


def tag_job(bench: Bench, inputs: list[str]) -> None:
    """`zstag tag`'s own code on `inputs`, as the bench's options ask, into the work folder."""
    from zstag.jobs.options import TagOptions
    from zstag.jobs.tag import tag

    news = io.StringIO()
    with contextlib.redirect_stderr(news):  # the job's own news would break up the tables
        code = tag(
            TagOptions(
                inputs=inputs,
                labels=bench.vocabulary(),
                model=bench.model_ref(),
                top_k=TOP_K,
                output=str(bench.work / "tags.jsonl"),
                batch_size=bench.plan.batch_size,
                device=str(bench.engine.device),
                workers=bench.opts.workers,
                compile=bench.opts.compile,
            )
        )
    if code:
        raise RuntimeError(f"zstag tag exited with {code}: {news.getvalue().strip()}")


def end_to_end(bench: Bench) -> dict[str, Any]:
    """`zstag tag` against the straightforward loop: throughput in this process, then latency of one photo."""
    from zstag.bench.naive import BATCH, tag_loop

    ref, model = bench.model_ref(), bench.model()
    photos, vocab, device = bench.photos(), bench.vocabulary(), str(bench.engine.device)
    batch = bench.plan.batch_size
    out = bench.work / "tags.jsonl"
    zstag_tag = partial(tag_job, bench)

    # On a GPU the loop is what one writes for one: a DataLoader with a Pillow worker per core and
    # pinned memory, in batches of the engine's size; on a CPU the one-process loop of the tutorials.
    on_gpu = bench.engine.device.type == "cuda"
    loop_workers, loop_batch = (min(16, available_cores()), batch) if on_gpu else (0, BATCH)

    def loop(paths: list[Path]) -> None:
        with out.open("w", encoding="utf-8") as f:
            tag_loop(paths, vocab, ref, device, TOP_K, f, workers=loop_workers, batch=loop_batch)

    zstag_tag([str(p) for p in photos[:2]])  # warm-up: imports, label vectors into the cache
    loop(photos[:2])
    # Each side also tags the first half: the difference is the steady state, without what a run
    # pays once (loading the model, starting workers, compiling), which comes out as `fixed_s`.
    n, half = len(photos), photos[: len(photos) // 2]
    seconds = bench.timed(
        {
            "zstag": lambda: zstag_tag([str(p) for p in photos]),
            "zstag_half": lambda: zstag_tag([str(p) for p in half]),
            "loop": lambda: loop(photos),
            "loop_half": lambda: loop(half),
        },
        warm_up=False,
    )
    zstag_ips, loop_ips = n / seconds["zstag"], n / seconds["loop"]
    steady = {side: steady_rate(n - len(half), seconds[side] - seconds[f"{side}_half"]) for side in ("zstag", "loop")}
    size = model.image_size
    rows = [
        bench.row(
            batch,
            size,
            run="batch, in-process",
            images=n,
            zstag_images_per_s=zstag_ips,
            loop_images_per_s=loop_ips,
            loop_workers=loop_workers,
            compiled=bench.engine.compiles(n, size),  # as `zstag tag` decided, by the same rule
            ratio=zstag_ips / loop_ips,
            target=TARGETS["end-to-end"],
            meets_target=zstag_ips / loop_ips >= TARGETS["end-to-end"],
            zstag_steady_images_per_s=steady["zstag"],
            loop_steady_images_per_s=steady["loop"],
            steady_ratio=ratio_of(steady["zstag"], steady["loop"]),
            zstag_fixed_s=fixed_seconds(n, seconds["zstag"], steady["zstag"]),
            loop_fixed_s=fixed_seconds(n, seconds["loop"], steady["loop"]),
            **bench.describe_model(),
        )
    ]

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")) if p
        ),
    }
    common = [str(photos[0]), "--labels", str(vocab), "--model", ref, "--device", device, "--output", str(out)]
    commands = {
        "zstag": [sys.executable, "-m", "zstag", "-q", "tag", *common],
        "loop": [sys.executable, "-m", "zstag.bench.naive", *common],
    }
    # No warm-up: the runs above left the files and the bytecode cached.
    seconds = bench.timed(
        {
            name: partial(subprocess.run, command, env=env, check=True, capture_output=True)
            for name, command in commands.items()
        },
        warm_up=False,
    )
    rows.append(
        bench.row(
            1,
            size,
            run="one photo, new process",
            images=1,
            zstag_seconds=seconds["zstag"],
            loop_seconds=seconds["loop"],
            ratio=seconds["loop"] / seconds["zstag"],
            target=TARGETS["single-image"],
            meets_target=seconds["zstag"] <= seconds["loop"],
            zstag_command=shlex.join(commands["zstag"]),
            loop_command=shlex.join(commands["loop"]),
        )
    )
    return {
        "rows": rows,
        "notes": [
            f"{n} synthetic {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs, {len(VOCABULARY)} labels, top {TOP_K}; "
            "both sides load "
            "the model and embed the labels inside the timed region; the loop is zstag.bench.naive "
            f"(Pillow + torchvision transforms, batches of {loop_batch}, "
            + (f"a DataLoader with {loop_workers} workers and pinned memory" if loop_workers else "one process")
            + f"); best of {bench.plan.repeats} after a warm-up on two photos",
            "ratio: zstag images/s over the loop's (batch), the loop's seconds over zstag's (one photo)",
            f"steady: images/s of the second half alone, from the difference between tagging all {n} photos and "
            f"the first {len(half)}; fixed_s: the rest of a run's time (loading the model, embedding the labels, "
            "starting workers, compiling), paid once per run",
        ],
    }


def forward(bench: Bench) -> dict[str, Any]:
    """Backbone + head on a device-resident batch: the ceiling the rest of the pipeline feeds."""
    from zstag.bench.heads import random_labels

    model = bench.model()
    engine, method = bench.engine, bench.engine.for_inference(model.method)
    x = bench.device_batch(model.image_size, method.backbone)
    labels = engine.vocabulary(method, random_labels(SEEN_LABELS, method.dim))
    batch = bench.plan.batch_size
    calls = {"eager": lambda: engine.forward(method, x, labels)}
    first: dict[str, float] = {}
    if bench.compiles():
        compiled = engine.compiled(copy.copy(method))  # the same modules, its own compiled `encode`
        start = time.perf_counter()
        calls["compiled"] = lambda: engine.forward(compiled, x, labels)
        calls["compiled"]()
        bench.synchronize()
        first["compiled"] = time.perf_counter() - start
    seconds = bench.timed(calls)

    def row(kind: str, **extra: Any) -> dict[str, Any]:
        """The row of the eager or compiled calls: what both share, then `extra`."""
        return bench.row(
            batch,
            model.image_size,
            labels=len(labels),
            images_per_s=batch / seconds[kind],
            ms_per_batch=1e3 * seconds[kind],
            precision=precision(engine),
            compiled=kind == "compiled",
            **extra,
            **bench.describe_model(),
        )

    rows = [row("eager")]
    if "compiled" in seconds:
        gain = seconds["eager"] / batch - seconds["compiled"] / batch  # seconds saved per image
        compile_s = max(0.0, first["compiled"] - seconds["compiled"])
        rows.append(
            row(
                "compiled",
                compile_s=compile_s,
                break_even_images=compile_s / gain if gain > 0 else None,
                max_abs_difference=(calls["eager"]() - calls["compiled"]()).abs().max().item(),
                speedup=seconds["eager"] / seconds["compiled"],
            )
        )
    return {
        "rows": rows,
        "notes": [
            f"Engine.forward on random pixels already on the device; best of {bench.plan.repeats}",
            "compiled: the method's encode through torch.compile "
            f"({', '.join(f'{k}={v}' for k, v in compile_settings().items())}); compile_s: the first call's "
            "time less a steady call's; break_even_images: the run length from which compiling saves time; "
            "max_abs_difference: the largest difference from the eager scores",
        ],
    }


def vocab_scale(bench: Bench) -> dict[str, Any]:
    """Cost per image of a large vocabulary: time, peak memory, and proof that no B x L x D tensor is built."""
    from zstag.bench.heads import random_labels

    model = bench.model()
    engine, method = bench.engine, bench.engine.for_inference(model.method)
    x = bench.device_batch(model.image_size, method.backbone)
    batch = bench.plan.batch_size
    raw = {str(n): random_labels(n, method.dim) for n in bench.plan.vocab}
    # Once per vocabulary, as Engine.run does before its first batch; timed apart from the batches.
    prepare_s = bench.timed({n: partial(engine.vocabulary, method, labels) for n, labels in raw.items()})
    vocabularies = {n: engine.vocabulary(method, labels) for n, labels in raw.items()}

    def tag_batch(labels: LabelSet) -> torch.Tensor:
        """The scores leave the device as in Engine.run: into pinned memory on CUDA, waited for."""
        scores = engine.forward(method, x, labels)
        return engine.arrived(*engine.to_host(Batch(list(range(len(scores))), scores, []))).scores

    seconds = bench.timed({n: partial(tag_batch, labels) for n, labels in vocabularies.items()})
    with torch.inference_mode(), engine.autocast():
        code = method.encode(x)
    rows = []
    for n, labels in vocabularies.items():
        with PeakMemory(engine.device) as memory:
            tag_batch(labels)
        with LargestTensor() as largest:
            engine.score(method, code, labels)
        full = batch * len(labels) * method.dim
        rows.append(
            bench.row(
                batch,
                model.image_size,
                labels=len(labels),
                ms_per_image=1e3 * seconds[n] / batch,
                prepare_labels_ms=1e3 * prepare_s[n],
                peak_memory_mib=memory.mib,
                largest_tensor_elements=largest.numel,
                images_x_labels_x_dim=full,
                bounded=largest.numel < full,
                **bench.describe_model(),
            )
        )
    ratio = rows[-1]["ms_per_image"] / rows[0]["ms_per_image"]
    rows[-1].update(ratio=ratio, target=TARGETS["vocab-scale"], meets_target=ratio <= TARGETS["vocab-scale"])
    return {
        "rows": rows,
        "notes": [
            f"label vectors are random unit vectors of the model's {method.dim} dimensions "
            "(zstag.data.labels.LabelSet), "
            "so no text embedding is timed; time is encode + score + copy of the scores to the host "
            "as Engine.run copies them (pinned memory on CUDA); "
            "prepare_labels_ms: the method's label-side work, done once per vocabulary before the first batch",
            "ratio: ms per image with the most labels over ms per image with the fewest",
            "peak memory (one more call after the timed ones): " + PeakMemory.WHAT[engine.device.type],
            "largest_tensor_elements: the biggest tensor any operation returned while scoring the encoded batch "
            "(a dispatch mode sees every intermediate); bounded = smaller than images x labels x dims",
        ],
    }


def methods(bench: Bench) -> dict[str, Any]:
    """Every method's head on one backbone: inference and training images/s and peak memory."""
    from zstag.backbones import SCRATCH_BACKBONES, build_backbone
    from zstag.bench.heads import build_head, random_labels
    from zstag.methods import METHODS

    engine, batch = bench.engine, bench.plan.batch_size
    if bench.opts.backbone:
        names = [bench.opts.backbone]
    elif engine.device.type == "cuda":
        names = list(PAPER_BACKBONES)
    else:
        names = [bench.model().config["backbone"]]
    seen, vocab = random_labels(SEEN_LABELS, SEMANTIC_DIM), random_labels(SCORED_LABELS, SEMANTIC_DIM, seed=2)
    seen_dev, vocab_dev = seen.to(engine.device), vocab.to(engine.device)
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(batch, SEEN_LABELS, generator=g) < 0.03).float().to(engine.device)
    rows = []
    for name in names:
        try:
            backbone, weights = (
                build_backbone(name, pretrained=True),
                "pretrained" if name not in SCRATCH_BACKBONES else "random init",
            )
        except MissingWeightsError:
            backbone, weights = build_backbone(name, pretrained=False), "random init (same shape)"
        backbone.requires_grad_(False)  # the default recipe trains the head on a frozen backbone
        size = bench.opts.image_size or (bench.model().image_size if name == bench.model().config["backbone"] else 224)
        x = bench.device_batch(size, backbone)
        for method_name in METHODS:
            fields: dict[str, Any] = {"method": method_name, "backbone": name, "weights": weights}
            try:
                fields.update(
                    head_speed(
                        bench, engine.prepare(build_head(method_name, backbone, seen)), x, targets, seen_dev, vocab_dev
                    )
                )
            except torch.OutOfMemoryError:
                fields["error"] = f"out of memory at batch {batch}"
            rows.append(bench.row(batch, size, **fields))
            if engine.device.type == "cuda":
                torch.cuda.empty_cache()
    return {
        "rows": rows,
        "notes": [
            f"inference: Engine.forward against {SCORED_LABELS} random labels ({precision(engine)}); training: "
            f"method.loss + backward + the recipe's optimizer step on {SEEN_LABELS} seen labels: train = backbone "
            "frozen and run every step; train_cached = the frozen backbone's maps cached in fp16 on the device "
            "as `zstag train` caches them (none for methods that read the images); finetune = the backbone "
            f"trained too; best of {bench.plan.repeats} / {bench.plan.train_steps} after a warm-up; "
            "batch norms are not folded here (Engine.prepare, as for training), as they are for tagging",
            f"batch {batch}" + ("" if engine.device.type == "cuda" else " (on a GPU the default is 256)"),
            "peak memory: " + PeakMemory.WHAT[engine.device.type],
        ],
    }


def head_speed(
    bench: Bench, method: Method, x: torch.Tensor, targets: torch.Tensor, seen: LabelSet, vocab: LabelSet
) -> dict[str, float | None]:
    """Inference images/s of one prepared method and its training images/s in the trainer's three
    regimes, with the peak memory of each: the backbone frozen and run every step (`train`), the
    frozen backbone's maps cached as the trainer caches them (`train_cached`; None for a method
    that reads the images themselves) and the backbone fine-tuned end to end (`finetune`)."""
    engine, batch = bench.engine, x.shape[0]
    with PeakMemory(engine.device) as inference:
        infer_s = bench.timed({"infer": lambda: engine.forward(method, x, vocab)})["infer"]
    speeds: dict[str, float | None] = {"infer_images_per_s": batch / infer_s, "infer_peak_mib": inference.mib}
    speeds.update(train_speed(bench, method, x, targets, seen, "train", finetune=False))
    speeds.update({"train_cached_images_per_s": None, "train_cached_peak_mib": None})
    if not type(method).reads_images:
        from zstag.backbones.base import Stages
        from zstag.training.features import StageCache

        backbone = method.backbone
        with torch.inference_mode(), engine.autocast():
            maps = backbone.stages(x)
        # As the trainer keeps them: fp16, on the GPU (compute_features), rows served by index.
        pooled = getattr(maps, "pooled", None)
        half = Stages((m.half() for m in maps), None if pooled is None else pooled.half())
        method.backbone = StageCache(backbone, half)
        try:
            rows = torch.arange(batch, device=engine.device)
            speeds.update(train_speed(bench, method, rows, targets, seen, "train_cached", finetune=False))
        finally:
            method.backbone = backbone
    speeds.update(train_speed(bench, method, x, targets, seen, "finetune", finetune=True))
    method.backbone.requires_grad_(False)
    return speeds


def train_speed(
    bench: Bench, method: Method, inputs: torch.Tensor, targets: torch.Tensor, seen: LabelSet, key: str, finetune: bool
) -> dict[str, float]:
    """`{key}_images_per_s` and `{key}_peak_mib` of the trainer's step: the method's loss, backward
    and its recipe's optimizer step over the trainable parameters (the backbone's too when
    `finetune`; otherwise it stays in eval mode, its batch-norm statistics frozen, as in training)."""
    from zstag.training.trainer import make_optimizer

    engine = bench.engine
    method.train()
    method.backbone.requires_grad_(finetune)
    if not finetune:
        method.backbone.eval()
    optimizer = make_optimizer([p for p in method.parameters() if p.requires_grad], method.hp)

    def step() -> None:
        with engine.autocast():
            loss, _ = method.loss(inputs, targets, seen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with PeakMemory(engine.device) as training:
        seconds = bench.timed({key: step}, repeats=bench.plan.train_steps)[key]
    return {f"{key}_images_per_s": inputs.shape[0] / seconds, f"{key}_peak_mib": training.mib}


def decode(bench: Bench) -> dict[str, Any]:
    """Decoding + resizing: the engine's Pillow path against its batched decode_jpeg path."""
    from zstag.data.jpeg import read_jpeg

    model = bench.model()
    engine, photos, size, batch = bench.engine, bench.photos()[:DECODE_PHOTOS], model.image_size, bench.plan.batch_size
    dataset = ImageFiles(photos, size)
    files = [torch.frombuffer(read_jpeg(p), dtype=torch.uint8) for p in photos]
    seconds = bench.timed(
        {
            "pillow": lambda: [dataset.decode(i) for i in range(len(photos))],
            "device": lambda: [engine.decode_jpegs(files[i : i + batch], size) for i in range(0, len(files), batch)],
        }
    )
    where = "nvJPEG" if engine.device.type == "cuda" else "libjpeg-turbo, one process"
    n = len(photos)
    rows = [
        bench.row(1, size, path="Pillow decode_image + to_tensor (one process)", images_per_s=n / seconds["pillow"]),
        bench.row(
            batch, size, path=f"torchvision decode_jpeg + resize_square ({where})", images_per_s=n / seconds["device"]
        ),
    ]
    return {
        "rows": rows,
        "notes": [
            f"{n} synthetic {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs of about "
            f"{sum(p.stat().st_size for p in photos) / n / 1e3:.0f} KB, files already in memory "
            f"for decode_jpeg, read from the page cache by Pillow; best of {bench.plan.repeats}"
        ],
    }


def pipeline(bench: Bench) -> dict[str, Any]:
    """`zstag tag`'s run cut after each stage, so the profile shows which one bounds the whole."""
    from zstag.bench.heads import random_labels

    model = bench.model()
    engine, photos, size = bench.engine, bench.photos(), model.image_size
    method = engine.for_inference(model.method)
    labels = random_labels(len(VOCABULARY), method.dim)
    dataset = ImageFiles(photos, size, jpeg_device=engine.device if engine.gpu_decode else None)
    compiling = copy.copy(engine)
    compiling.compile = True
    compiled = compiling.compiled(copy.copy(method))  # compiled once, in the warm-up round

    def drain(batches) -> None:
        for _ in batches:
            pass

    stages: dict[str, tuple[str, Callable[[], object]]] = {
        "read": (
            "workers read the files (on a CPU, or for files nvJPEG cannot take, they decode too)",
            lambda: drain(engine.loader(dataset)),
        ),
        "decode": ("+ decoded and resized on the device, in input order", lambda: drain(engine.decoded(dataset))),
        "score": (
            "+ forward and scoring, eager, scores on the host (Engine.run)",
            lambda: drain(engine.run(method, photos, labels, size)),
        ),
    }
    if bench.compiles():
        stages["score, compiled"] = (
            "+ the same with the image side compiled, steady state (the warm-up round compiled it)",
            lambda: drain(compiling.run(compiled, photos, labels, size)),
        )
    stages["tag"] = (
        "+ loading the model, embedding the labels, selecting and writing tags (zstag tag)",
        lambda: tag_job(bench, [str(photos[0].parent)]),
    )
    seconds = bench.timed({name: call for name, (_, call) in stages.items()})
    n = len(photos)
    rows = [
        bench.row(
            bench.plan.batch_size,
            size,
            stage=name,
            includes=what,
            images_per_s=n / seconds[name],
            seconds=seconds[name],
            **bench.describe_model(),
        )
        for name, (what, _) in stages.items()
    ]
    return {
        "rows": rows,
        "notes": [
            f"{n} synthetic {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs; each stage runs the pipeline up to it "
            f"(workers: {engine.workers}); {len(VOCABULARY)} random label vectors except in `tag`, which embeds "
            f"the words; best of {bench.plan.repeats} after a warm-up round",
        ],
    }


SECTION_FUNCTIONS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "end-to-end": end_to_end,
    "forward": forward,
    "vocab-scale": vocab_scale,
    "methods": methods,
    "decode": decode,
    "pipeline": pipeline,
}


# -- helpers ------------------------------------------------------------------------------------


def steady_rate(images: int, seconds: float) -> float | None:
    """Images/s from the extra time of a longer run; None when timing noise leaves no extra time."""
    return images / seconds if seconds > 0 else None


def ratio_of(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def fixed_seconds(images: int, seconds: float, steady: float | None) -> float | None:
    """The part of a run's `seconds` that its length does not explain at the `steady` rate."""
    return None if steady is None else seconds - images / steady


def precision(engine: Engine) -> str:
    return "bf16 autocast, channels last" if engine.device.type == "cuda" else "float32, channels last"


# -- output -------------------------------------------------------------------------------------

_SHARED = ("device", "torch", "command")  # the same on every row: said once, under the table


def render(name: str, section: dict[str, Any]) -> None:
    """One Rich table on stderr. Fields equal on every row are said once under it, with the notes;
    a wide section is shown turned, one column per row, which fits a narrow terminal."""
    from rich.table import Table

    rows = [{k: v for k, v in r.items() if not k.endswith("_command")} for r in section["rows"]]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    same = [k for k in keys if k in _SHARED or (len(rows) > 1 and all(r.get(k) == rows[0].get(k) for r in rows))]
    table = Table(title=f"zstag bench: {name}")
    columns = [k for k in keys if k not in same]
    if len(columns) > 6:
        table.add_column("")
        for _ in rows:
            table.add_column("", justify="right")
        for k in columns:
            table.add_row(k.replace("_", " "), *(cell(r.get(k)) for r in rows))
    else:
        for k in columns:
            numeric = isinstance(rows[0].get(k), (int, float)) and not isinstance(rows[0].get(k), bool)
            table.add_column(k.replace("_", " "), justify="right" if numeric else "left", overflow="fold")
        for r in rows:
            table.add_row(*(cell(r.get(k)) for k in columns))
    console.stderr.print(table)
    shared = ", ".join(f"{k.replace('_', ' ')}: {cell(rows[0].get(k))}" for k in same)
    for line in (shared, *section["notes"]):
        console.stderr.print(line, markup=False, highlight=False, soft_wrap=True, style="dim")


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
