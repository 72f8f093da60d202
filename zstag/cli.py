"""The command line: parse, call one function, print. Machine output on stdout, the rest on stderr.

Exit codes (GUIDE §1): 0 done; 2 bad usage or bad input files (one line, no traceback); 3 finished
but some inputs were unreadable; 1 anything else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from zstag import __version__
from zstag.core import console
from zstag.core.errors import ZstagError

app = typer.Typer(
    name="zstag",
    help="Zero-shot image tagging: tag photos with any vocabulary, train and evaluate taggers.\n\n"
    "Example: zstag tag ./photos --labels vocab.txt > tags.jsonl",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, or cuda[:i].")]
WORKERS_HELP = ("Image decoding processes. Default: on a GPU one per core but one (at most 16); on a CPU none: "
                "threads of this process decode instead, which measured faster there.")
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=0, help=WORKERS_HELP)]


def _version(value: bool) -> None:
    if value:
        print(f"zstag {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or news on stderr; warnings and errors still show.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr, and tracebacks for unexpected errors.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    console.configure(quiet=quiet, verbose=verbose)


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are JSON where they parse (numbers, true/false, lists), else strings."""
    from zstag.core.errors import UsageError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


@app.command()
def fetch(
    names: Annotated[Optional[list[str]], typer.Argument(help="Registry names (vgg19, resnet101, resnet50, minilm, glove-300) or hf://OWNER/REPO[@REV].")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the registry and what is cached.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache folder (default: $ZSTAG_CACHE or the user cache).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even when cached.")] = False,
) -> None:
    """Download pretrained weights into the cache (verified by sha256 where known).

    Examples:\n
      zstag fetch --list\n
      zstag fetch vgg19 minilm\n
      zstag fetch hf://someone/zstag-lesa-model@main
    """
    from zstag.store import hub
    from zstag.core.errors import UsageError

    if list_:
        for entry in hub.list_registry(cache_dir=cache_dir):
            mark = "cached" if entry.get("cached") else "-"
            print(f"{entry['name']}\t{entry.get('kind', '')}\t{mark}\t{entry.get('repo', '')}\t{entry.get('description', '')}")
        return
    if not names:
        raise UsageError("name what to fetch (see `zstag fetch --list`)")
    for name in names:
        path = hub.fetch(name, cache_dir=cache_dir, force=force)
        print(f"{name}\t{path}")


@app.command()
def models(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Model directories, or folders to search for them (e.g. runs/).")] = None,
    search: Annotated[Optional[list[Path]], typer.Option("--path", help="Also list the model directories under this folder (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per model instead of tab-separated lines.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Fetch cache to list (default: $ZSTAG_CACHE or the user cache).")] = None,
) -> None:
    """List the models usable as --model: bundled, fetched and local, from their config.json only.

    On a terminal: a table. Otherwise (pipes, files): a header line and one tab-separated line
    per model, or JSON lines with --json. Columns: name (what --model takes), where, method,
    backbone, semantics, seen, unseen, image_size, size (bytes), best_val_mAP, epochs, path, error
    (set for a broken directory). Exit code 3 when a directory named on the command line is broken.

    Examples:\n
      zstag models\n
      zstag models runs/ --json | jq -r 'select(.error == null) | .name'\n
      zstag models --path ~/models | sort -t$'\\t' -k10 -g
    """
    from zstag.store import catalog

    rows, broken = catalog.list_models(paths or [], search or [], cache_dir=cache_dir)
    if as_json:
        for row in rows:
            print(json.dumps(catalog.as_dict(row)))
    elif sys.stdout.isatty():
        from rich.console import Console

        Console(highlight=False).print(catalog.table(rows))
    else:
        for line in catalog.tsv_lines(rows):
            print(line)
    for row in broken:
        console.warn(str(row.error))  # the message names the directory
    raise typer.Exit(3 if broken else 0)


@app.command()
def push(
    model_dir: Annotated[Path, typer.Argument(help="Model directory to publish (config.json + model.safetensors).")],
    url: Annotated[str, typer.Argument(help="Destination: hf://OWNER/REPO (created when missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private (an existing one keeps its visibility).")] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch to commit to (created from main when missing).")] = None,
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="Commit message.")] = None,
) -> None:
    """Publish a trained model on the Hugging Face Hub, in the layout `zstag fetch hf://...` pulls.

    Uploads config.json, model.safetensors and a generated model card (README.md), nothing else.
    Needs a token with write access: `hf auth login` or HF_TOKEN. Prints the reference to fetch,
    the commit and its URL, tab-separated.

    Examples:\n
      zstag push models/lesa hf://me/zstag-lesa-photos\n
      zstag push models/lesa hf://me/zstag-lesa-photos --revision v2 --private -m "more epochs"\n
      zstag fetch hf://me/zstag-lesa-photos && zstag tag photos/ --labels vocab.txt --model hf://me/zstag-lesa-photos
    """
    from zstag.store.publish import push as run_push

    result = run_push(model_dir, url, private=private, revision=revision, message=message)
    for warning in result.warnings:
        console.warn(warning)
    print(f"{result.reference}\t{result.commit}\t{result.url}")


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Training data: a .jsonl / .csv manifest or a folder of images with .txt sidecars.")],
    method: Annotated[str, typer.Option("--method", "-m", help="lesa, sgma, rgcn-posvae, ml2p, fast0tag or conse.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write (config.json + model.safetensors).")],
    unseen: Annotated[Optional[Path], typer.Option("--unseen", help="Labels held out of training (one per line).")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Train only on these labels (default: every tag in DATA).")] = None,
    backbone: Annotated[str, typer.Option("--backbone", help="bundled (default), small (from scratch), vgg19, resnet101, resnet50.")] = "bundled",
    semantics: Annotated[str, typer.Option("--semantics", help="minilm, glove-300, or a vector file / sentence-transformers folder.")] = "minilm",
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs (default: the method's recipe).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Batch size (default: the method's recipe).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: the method's recipe).")] = None,
    image_size: Annotated[int, typer.Option("--image-size", min=16, help="Square input size in pixels.")] = 224,
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed for splits, initialisation and shuffling.")] = 0,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, help="Share of images held out for validation.")] = 0.1,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Method hyperparameter KEY=VALUE (repeatable), e.g. --set attentions=1.")] = None,
    workers: WorkersOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from OUT's last epoch checkpoint (same options; --epochs may grow).")] = False,
) -> None:
    """Train a tagger on a folder or manifest of tagged images.

    Examples:\n
      zstag train data/train.jsonl --method lesa --out models/lesa --unseen data/unseen.txt\n
      zstag train photos/ --method fast0tag --backbone small --epochs 5 --out models/f0t\n
      zstag train data.csv --method lesa --set attentions=1 --out models/lesa-m1\n
      zstag train data/train.jsonl --method lesa --out models/lesa --resume   (after an interruption)
    """
    from zstag.training.trainer import TrainOptions, train as run_train

    run_train(TrainOptions(data=data, method=method, out=out, unseen=unseen, labels=labels, backbone=backbone,
                           semantics=semantics, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                           device=device, seed=seed, val_fraction=val_fraction, overrides=parse_sets(set_ or []),
                           workers=workers, resume=resume))


@app.command()
def tag(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders, quoted globs, or '-' for paths on stdin.")],
    labels: Annotated[Path, typer.Option("--labels", "-l", help="Vocabulary file: one label per line, any labels you like.")],
    model: Annotated[str, typer.Option("--model", help="Model directory, 'default' (bundled), or a fetched name.")] = "default",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=0, help="Tags per image (0 = every label).")] = 10,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Keep only tags scoring at least this (a probability when the model is calibrated).")] = None,
    thresholds: Annotated[Optional[Path], typer.Option("--thresholds", help="Per-label thresholds: 'label<TAB>threshold' per line (others use --threshold).")] = None,
    raw_scores: Annotated[bool, typer.Option("--raw-scores", help="Write the method's raw scores instead of calibrated probabilities.")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl, csv, tsv, txt (x.txt sidecars) or xmp (x.xmp sidecars).")] = "jsonl",
    output: Annotated[str, typer.Option("--output", "-o", help="Output file, or '-' for stdout.")] = "-",
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into sub-folders.")] = True,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 64,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run into the same --output.")] = False,
    extensions: Annotated[Optional[str], typer.Option("--extensions", help="Comma-separated extensions that count as images in folders.")] = None,
    errors: Annotated[Optional[Path], typer.Option("--errors", help="Append unreadable inputs to this file as JSON lines.")] = None,
    sidecar_mode: Annotated[str, typer.Option("--sidecar-mode", help="For txt/xmp: overwrite, append or skip existing sidecars.")] = "overwrite",
    shard: Annotated[Optional[str], typer.Option("--shard", help="Tag only block I of N of the inputs (0 <= I < N), e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT.")] = None,
) -> None:
    """Tag images with the labels of a vocabulary (any labels, seen in training or not).

    Examples:\n
      zstag tag ./photos --labels vocab.txt > tags.jsonl\n
      find . -name '*.jpg' | zstag tag - --labels vocab.txt --top-k 5 --format csv -o tags.csv\n
      zstag tag ./photos --labels vocab.txt --model models/lesa --format xmp\n
      zstag tag ./photos --labels vocab.txt --top-k 0 --threshold 0.5 --thresholds strict.tsv\n
      zstag tag /data --labels vocab.txt --shard 3/16 -o tags.3.jsonl   (one task of a job array)\n
      torchrun --nproc-per-node 8 -m zstag tag /data --labels vocab.txt -o tags.jsonl
    """
    from zstag.core.errors import UsageError
    from zstag.outputs.streams import FORMATS
    from zstag.jobs.tag import TagOptions, tag as run_tag

    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}: use {', '.join(FORMATS)}")
    if sidecar_mode not in ("overwrite", "append", "skip"):
        raise UsageError(f"unknown --sidecar-mode {sidecar_mode!r}: use overwrite, append or skip")
    if resume and output == "-" and fmt in ("jsonl", "csv", "tsv"):
        raise UsageError("--resume needs --output FILE (it reads what the file already holds)")
    exts = [e.strip().lower() if e.strip().startswith(".") else "." + e.strip().lower() for e in extensions.split(",")] if extensions else None
    code = run_tag(TagOptions(inputs=inputs, labels=labels, model=model, top_k=top_k, threshold=threshold, fmt=fmt,
                              output=output, recursive=recursive, batch_size=batch_size, device=device, workers=workers,
                              resume=resume, extensions=exts, errors=errors, sidecar_mode=sidecar_mode,
                              thresholds=thresholds, raw_scores=raw_scores, shard=shard))
    raise typer.Exit(code)


@app.command("eval")
def eval_(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="With --model: the images to tag (default: the truth's images).")] = None,
    truth: Annotated[Path, typer.Option("--truth", help="Ground truth: a manifest or sidecar folder.")] = Path("."),
    predictions: Annotated[Optional[Path], typer.Option("--predictions", "-p", help="Predictions from `zstag tag --format jsonl`.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Tag the truth's images with this model instead of reading predictions.")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels to evaluate (default: every label in truth and predictions).")] = None,
    unseen: Annotated[Optional[Path], typer.Option("--unseen", help="Unseen labels: adds the zero-shot (zs) section.")] = None,
    k: Annotated[str, typer.Option("--k", help="Comma-separated K for P/R/F1@K.")] = "3,5",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    protocol: Annotated[str, typer.Option("--protocol", help="zstag (labels without positives left out of mAP) or lesa (counted as AP 0).")] = "zstag",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch (with --model).")] = 64,
    device: DeviceOpt = "auto",
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help=WORKERS_HELP + " With --model.")] = None,
) -> None:
    """Evaluate predictions (or a model) against ground truth: mAP, miAP, P/R/F1@K, ZS and GZS.

    Examples:\n
      zstag eval --predictions tags.jsonl --truth test.jsonl --unseen unseen.txt --json\n
      zstag eval --model models/lesa --truth test.jsonl --unseen unseen.txt
    """
    from zstag.core.errors import UsageError
    from zstag.jobs.evaluate import EvalOptions, run_eval, render_report

    if (predictions is None) == (model is None):
        raise UsageError("give exactly one of --predictions FILE or --model MODEL")
    if str(truth) == ".":
        raise UsageError("--truth DATA is required")
    try:
        ks = [int(x) for x in k.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--k expects comma-separated integers, got {k!r}") from None
    if not ks or min(ks) < 1:
        raise UsageError("--k needs positive integers")
    report = run_eval(EvalOptions(truth=truth, predictions=predictions, model=model, inputs=inputs or [], labels=labels,
                                  unseen=unseen, ks=ks, protocol=protocol, batch_size=batch_size, device=device,
                                  workers=workers))
    print(json.dumps(report) if as_json else render_report(report))


@app.command()
def calibrate(
    model: Annotated[str, typer.Argument(help="Model directory to calibrate (its config.json is updated).")],
    data: Annotated[Path, typer.Option("--data", help="Tagged images the model did not train on: a manifest or sidecar folder.")],
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Labels to fit on (default: every tag in DATA).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 64,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
) -> None:
    """Fit score calibration (Platt scaling) on tagged images, so thresholds are probabilities.

    Training already calibrates on its validation split; use this for older models or to
    calibrate on your own images. Prints the fitted scale and bias as JSON.

    Example:\n
      zstag calibrate models/lesa --data data/val.jsonl
    """
    from zstag.jobs.evaluate import EvalOptions, run_calibrate

    fitted = run_calibrate(EvalOptions(truth=data, model=model, labels=labels, batch_size=batch_size, device=device,
                                       workers=workers))
    print(json.dumps(fitted))


@app.command()
def explain(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders, quoted globs, or '-' for paths on stdin.")],
    labels: Annotated[Path, typer.Option("--labels", "-l", help="Vocabulary file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs (one per image).")],
    model: Annotated[str, typer.Option("--model", help="Model directory, 'default' (bundled), or a fetched name.")] = "default",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Tags to explain per image.")] = 3,
    device: DeviceOpt = "auto",
) -> None:
    """Draw where the model looked for each image's top tags (attention maps, part boxes, or occlusion maps).

    Examples:\n
      zstag explain photo.jpg --labels vocab.txt --out explained/\n
      zstag explain ./photos --labels vocab.txt --model models/sgma --top-k 5 -o explained/
    """
    from zstag.jobs.explain import ExplainOptions, explain as run_explain

    raise typer.Exit(run_explain(ExplainOptions(inputs=inputs, labels=labels, out=out, model=model, top_k=top_k, device=device)))


@app.command()
def bench(
    device: DeviceOpt = "auto",
    model: Annotated[str, typer.Option("--model", help="Model directory, 'default' (bundled), or a fetched name.")] = "default",
    backbone: Annotated[Optional[str], typer.Option("--backbone", help="Measure the model's method on this backbone instead (vgg19, resnet101, ...).")] = None,
    images: Annotated[Optional[int], typer.Option("--images", min=1, help="Synthetic photos to tag and decode (default 256 on CPU, 16384 on GPU).")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=16, help="Square input size (default: the model's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Images per batch (default 32 on CPU, 256 on GPU).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help=WORKERS_HELP + " For end-to-end runs.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes: a check that everything runs, not numbers to quote.")] = False,
    only: Annotated[Optional[str], typer.Option("--only", help="Comma-separated sections: end-to-end, forward, vocab-scale, methods, decode.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the measurements as JSON to this file ('-' for stdout).")] = None,
) -> None:
    """Measure tagging speed on this machine: end to end against a plain loop, model, vocabulary size, methods, decoding.

    Tables go to stderr; numbers are measured, never looked up.

    Examples:\n
      zstag bench --device cpu --json bench.json\n
      zstag bench --device cuda --backbone vgg19 --image-size 224\n
      zstag bench --quick --only forward,vocab-scale
    """
    from zstag.bench.run import BenchOptions, run as run_bench

    sections = [s.strip() for s in only.split(",") if s.strip()] if only else None
    report = run_bench(BenchOptions(device=device, model=model, backbone=backbone, images=images, image_size=image_size,
                                    batch_size=batch_size, workers=workers, quick=quick, only=sections, json_path=json_out))
    if json_out is not None and str(json_out) == "-":
        print(json.dumps(report, indent=2))


def main() -> None:
    """Entry point: run the app, turning known errors into one line and an exit code."""
    import warnings

    from PIL import Image

    warnings.showwarning = lambda message, *args, **kwargs: console.warn(str(message))
    # Images past Pillow's limit are refused by the decoder; between the limit and twice it Pillow
    # only warns, which would print once per such image without adding anything.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except ZstagError as exc:
        console.error(str(exc))
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click's usage errors and anything unexpected
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        if "--verbose" in sys.argv or "-v" in sys.argv:
            raise
        console.error(f"{type(exc).__name__}: {exc} (run with --verbose for the traceback)")
        sys.exit(1)
