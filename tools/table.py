"""The results table of docs/benchmarks.md, end to end: train every method on the same split with
the same backbone, evaluate each on the test split (ZS and GZS), and write JSON and Markdown.

    python -m tools.table DATA_DIR --out RESULTS_DIR [--image-size 128] [--epochs N]
        [--device auto] [--only lesa,fast0tag] [--seeds 0,1,2]

DATA_DIR is a set built by `python -m tools.openclipart`. Every row uses
`--backbone bundled` (frozen unless the method's recipe fine-tunes it), MiniLM semantics and the
same seeds; `--epochs` caps each method's own recipe so the whole table fits a time budget (the
cap is recorded in the output). A "random scores" row gives the floor every method must clear.
With several seeds a row reports the mean and, in brackets, the spread (max - min) over its runs.
Runs already in RESULTS_DIR/results.json are kept, so an interrupted run continues and a later call
with more seeds or rows adds to the same table. Rows can run in parallel processes, each with its own
--out; `--merge A/results.json B/results.json` then combines their runs (and commands) into
RESULTS_DIR without training anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zstag import __version__
from zstag.data.manifest import read_dataset
from zstag.data.vocab import read_vocabulary
from zstag.eval.report import evaluate, evaluation_labels
from zstag.jobs.evaluate import EvalOptions, run_eval
from zstag.training.features import FeatureCache
from zstag.training.options import TrainOptions
from zstag.training.trainer import train

# (row name, method, --set overrides): the paper methods, their variants and ablations, the baselines.
ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("lesa", "lesa", {}),
    ("ml2p", "ml2p", {}),
    ("rgcn-posvae", "rgcn-posvae", {}),
    ("fast0tag", "fast0tag", {}),
    ("conse", "conse", {}),
    ("lesa M=1", "lesa", {"attentions": 1}),
    ("lesa one attention per cluster", "lesa", {"cluster": True}),
    ("rgcn", "rgcn-posvae", {"variant": "rgcn"}),
    ("rgcn-xl", "rgcn-posvae", {"variant": "rgcn-xl"}),
    ("sgma (multi-label)", "sgma", {}),
    ("lesa without L_div", "lesa", {"use_div": False}),
    ("lesa without L_rel", "lesa", {"use_rel": False}),
    ("lesa without L_dist", "lesa", {"use_dist": False}),
    ("lesa L_rank only", "lesa", {"use_div": False, "use_rel": False, "use_dist": False}),
    # The default model's head with the backbone trained end to end (issue 20): what freezing costs.
    ("lesa M=1 fine-tuned", "lesa", {"attentions": 1, "finetune_backbone": True}),
]


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU {platform.processor() or platform.machine()}, {cores} cores (torch {torch.__version__})"


def random_row(data: Path, seed: int) -> dict[str, Any]:
    """The report of uniformly random scores on the test split."""
    samples = read_dataset(data / "test.jsonl")
    unseen = read_vocabulary(data / "unseen.txt")
    labels = evaluation_labels([], samples, read_vocabulary(data / "vocab.txt"), unseen)
    truth = np.array([[label in set(s.tags) for label in labels] for s in samples])
    scores = np.random.default_rng(seed).random(truth.shape)
    return evaluate(scores, truth, labels, unseen)


def summarise(report: dict[str, Any]) -> dict[str, float | None]:
    out = {}
    for setting in ("zs", "gzs"):
        section = report[setting]
        out[f"{setting}_mAP"] = section["mAP"]
        out[f"{setting}_miAP"] = section["miAP"]
        for k in ("3", "5"):
            out[f"{setting}_F1@{k}"] = section["at_k"][k]["F1"]
    return out


def aggregate(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread (max - min) of each metric over a row's seeds; None where a metric is undefined."""
    metrics = [run["metrics"] for run in runs.values()]
    mean, spread = {}, {}
    for key in metrics[0]:
        values = [m[key] for m in metrics if m[key] is not None]
        mean[key] = float(np.mean(values)) if values else None
        spread[key] = float(np.ptp(values)) if len(values) > 1 else None
    return {
        "metrics": mean,
        "spread": spread,
        "seeds": sorted(int(s) for s in runs),
        "epochs": next(iter(runs.values())).get("epochs"),
        "train_seconds": float(np.mean([run.get("train_seconds", 0) for run in runs.values()])),
    }


def markdown(results: dict[str, Any]) -> str:
    cols = ["zs_mAP", "zs_F1@3", "zs_F1@5", "zs_miAP", "gzs_mAP", "gzs_F1@3", "gzs_F1@5", "gzs_miAP"]
    head = "| method | " + " | ".join(c.replace("_", " ") for c in cols) + " | seeds | epochs | train s |\n"
    head += "|" + " --- |" * (len(cols) + 4) + "\n"
    lines = []
    for name, row in results["rows"].items():
        cells = []
        for c in cols:
            value, spread = row["metrics"][c], row.get("spread", {}).get(c)
            cell = "-" if value is None else f"{100 * value:.2f}"
            cells.append(cell if spread is None else f"{cell} ({100 * spread:.2f})")
        seeds = ",".join(str(s) for s in row.get("seeds", [])) or "-"
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {seeds} | {row.get('epochs') or '-'} | {row.get('train_seconds', 0):.0f} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.table", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=None, help="cap on each method's epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated row names to run")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each row runs once per seed")
    parser.add_argument("--finetune", action="store_true", help="keep each method's own fine-tuning recipe")
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=[], help="results.json files of other runs to combine; trains nothing"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    results.update(
        {
            "machine": machine(),
            "zstag": __version__,
            "image_size": args.image_size,
            "epochs_cap": args.epochs,
            "data": str(args.data),
        }
    )
    results.setdefault("commands", []).append(
        "python -m tools.table " + " ".join(argv if argv is not None else sys.argv[1:])
    )
    runs = results.setdefault("runs", {})
    if "random scores" not in runs:
        runs["random scores"] = {"0": {"metrics": summarise(random_row(args.data, 0)), "train_seconds": 0}}
    for other in map(json.loads, (p.read_text() for p in args.merge)):
        for name, by_seed in other["runs"].items():
            for seed, run in by_seed.items():
                runs.setdefault(name, {}).setdefault(seed, run)
        results["commands"] += [c for c in other.get("commands", []) if c not in results["commands"]]
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    features = FeatureCache()
    for seed in [] if args.merge else seeds:
        for name, method, sets in ROWS:
            if (wanted and name not in wanted) or str(seed) in runs.get(name, {}):
                continue
            run = run_row(args, name, method, sets, seed, features)
            if run is None:
                continue
            runs.setdefault(name, {})[str(seed)] = run
            path.write_text(json.dumps(results, indent=2) + "\n")
    path.write_text(json.dumps(results, indent=2) + "\n")
    order = ["random scores"] + [name for name, _, _ in ROWS]
    names = sorted((n for n in runs if runs[n]), key=lambda n: order.index(n) if n in order else len(order))
    table = {"rows": {name: aggregate(runs[name]) for name in names}}
    (args.out / "table.md").write_text(markdown(table))
    print(markdown(table))
    return 0


def run_row(
    args: argparse.Namespace, name: str, method: str, sets: dict[str, Any], seed: int, features: FeatureCache
) -> dict[str, Any] | None:
    """Train and evaluate one row for one seed; None (and a message) when it fails. Rows share
    `features`: the frozen backbone runs once over the split for all of them."""
    model_dir = args.out / "models" / f"{name.replace(' ', '_').replace('=', '')}-seed{seed}"
    # Same backbone for every row: frozen, as the papers' comparison methods use it (ML2P and
    # SGMA fine-tune in their own recipes; --finetune keeps those recipes).
    overrides = dict(sets) if args.finetune else {"finetune_backbone": False, **sets}
    start = time.perf_counter()
    try:
        from zstag.methods import method_class

        recipe = method_class(method).hyperparameters(overrides).recipe
        epochs = min(recipe.epochs, args.epochs) if args.epochs else None
        train(
            TrainOptions(
                data=args.data / "train.jsonl",
                method=method,
                out=model_dir,
                unseen=args.data / "unseen.txt",
                backbone="bundled",
                image_size=args.image_size,
                epochs=epochs,
                device=args.device,
                seed=seed,
                overrides=overrides,
                workers=args.workers,
            ),
            feature_cache=features,
        )
        seconds = time.perf_counter() - start
        report = run_eval(
            EvalOptions(
                truth=args.data / "test.jsonl",
                model=str(model_dir),
                labels=args.data / "vocab.txt",
                unseen=args.data / "unseen.txt",
                device=args.device,
                workers=args.workers,
            )
        )
    except Exception as exc:  # one failing row must not lose the others
        print(f"{name} (seed {seed}): FAILED {type(exc).__name__}: {exc}", flush=True)
        return None
    print(
        f"{name} (seed {seed}): ZS mAP {100 * report['zs']['mAP']:.2f}  GZS mAP {100 * report['gzs']['mAP']:.2f}  "
        f"({seconds:.0f} s)",
        flush=True,
    )
    return {
        "method": method,
        "set": overrides,
        "metrics": summarise(report),
        "train_seconds": round(seconds, 1),
        "epochs": epochs,
    }


if __name__ == "__main__":
    raise SystemExit(main())
