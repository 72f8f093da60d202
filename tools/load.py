"""Memory under load (docs/reliability.md): peak resident memory of `zstag tag` over many images
and against a very large vocabulary.

    python -m tools.load --work /tmp/zstag-load --out docs/results/load-cpu.json \
        [--images 10000,100000] [--labels 100000] [--vocab-images 1000] [--device cpu]

Each measurement runs `zstag tag` in its own process and reads that process's peak resident set
(`ru_maxrss` of the child; on a CPU the images are decoded in that process, so it includes the
decoding; DataLoader workers, on a GPU or with `--workers N`, are separate processes and are not). The
images are small generated JPEGs (64x48, a few kB each, 1,000 per folder) so that 100,000 of them
fit on any disk; memory that grows with the number of images would show as a higher peak at
100,000 than at 10,000. The large vocabulary is WordNet's noun and verb lemmas (Debian's
wordnet-base) when installed, else numbered labels; its embeddings are computed once (and timed),
then the tagging run reads them from the embedding cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

WORDNET = Path("/usr/share/wordnet")


def make_images(folder: Path, n: int, seed: int = 0) -> Path:
    """n small JPEGs in sub-folders of 1,000 (reused when already there)."""
    done = folder / f".complete-{n}"
    if done.exists():
        return folder
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    for i in range(n):
        sub = folder / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        pixels = np.roll(base, shift=(i * 7) % 64, axis=1) ^ np.uint8(i % 251)
        Image.fromarray(pixels).save(sub / f"{i:06d}.jpg", quality=80)
    done.touch()
    return folder


def large_vocabulary(n: int) -> list[str]:
    """n distinct labels: WordNet lemmas (nouns first) where available, numbered labels after."""
    labels: dict[str, None] = {}
    for part in ("noun", "verb", "adj", "adv"):
        index = WORDNET / f"index.{part}"
        if not index.exists():
            continue
        for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
            if line and not line.startswith(" "):
                labels.setdefault(line.split(" ", 1)[0].replace("_", " "), None)
            if len(labels) >= n:
                return list(labels)
    labels.update({f"label {i}": None for i in range(n - len(labels))})
    return list(labels)[:n]


def run_tag(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `python -m zstag tag ARGS` in a fresh wrapper; wall seconds and the child's peak RSS."""
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "code = subprocess.run(sys.argv[1:]).returncode; "
        "print(code, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "zstag", "-q", "tag", *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    code, seconds, kib = out.stdout.split()[-3:]
    return {"exit_code": int(code), "seconds": round(float(seconds), 1), "peak_rss_mb": round(int(kib) / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the generated images")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    parser.add_argument("--images", default="10000,100000", help="image counts to tag")
    parser.add_argument("--labels", type=int, default=100_000, help="size of the large vocabulary")
    parser.add_argument("--vocab-images", type=int, default=1000, help="images tagged against the large vocabulary")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="default")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    # A cache of its own, so that the first large-vocabulary run really computes the embeddings.
    env = {**os.environ, "ZSTAG_CACHE": str(args.work / "cache")}
    small_vocab = args.work / "vocab-10.txt"
    small_vocab.write_text(
        "\n".join(["dog", "cat", "tree", "car", "house", "flower", "bird", "boat", "person", "sky"]) + "\n"
    )
    common = ["--model", args.model, "--device", args.device, "--top-k", "5"]
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": "python -m tools.load " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": [],
    }
    # Warm-up: the small vocabulary's embeddings go into the cache, so the runs below measure tagging.
    run_tag(
        [str(make_images(args.work / "images-10", 10)), "--labels", str(small_vocab), "-o", os.devnull, *common], env
    )
    for n in [int(x) for x in args.images.split(",") if x]:
        start = time.perf_counter()
        folder = make_images(args.work / f"images-{n}", n)
        made = time.perf_counter() - start
        run = run_tag(
            [str(folder), "--labels", str(small_vocab), "-o", str(args.work / f"tags-{n}.jsonl"), *common], env
        )
        rows = sum(1 for _ in (args.work / f"tags-{n}.jsonl").open())
        results["runs"].append(
            {
                "what": f"{n} images x 10 labels",
                "images": n,
                "labels": 10,
                "rows": rows,
                "images_generated_in_s": round(made, 1),
                **run,
            }
        )
        print(results["runs"][-1], flush=True)

    vocab = args.work / f"vocab-{args.labels}.txt"
    vocab.write_text("\n".join(large_vocabulary(args.labels)) + "\n", encoding="utf-8")
    folder = make_images(args.work / f"images-{args.vocab_images}", args.vocab_images)
    for phase in ("embedding (first run, cache cold)", "tagging (embeddings cached)"):
        run = run_tag([str(folder), "--labels", str(vocab), "-o", str(args.work / "tags-vocab.jsonl"), *common], env)
        rows = sum(1 for _ in (args.work / "tags-vocab.jsonl").open())
        results["runs"].append(
            {
                "what": f"{args.vocab_images} images x {args.labels} labels, {phase}",
                "images": args.vocab_images,
                "labels": args.labels,
                "rows": rows,
                **run,
            }
        )
        print(results["runs"][-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
