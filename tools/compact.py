"""Re-encode a built benchmark set as lossy WebP, for moving it to a machine with little transfer
room (the 61 MB OpenClipart set becomes about 13 MB). Manifests are rewritten to the new names;
the labels and splits are unchanged.

    python -m tools.compact SRC DST [--quality 80]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image


def compact(src: Path, dst: Path, quality: int = 80) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "seen.txt", "unseen.txt", "stats.json"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    for manifest in sorted(src.glob("*.jsonl")):
        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        for row in rows:
            target = Path(row["image"]).with_suffix(".webp")
            out = dst / target
            if not out.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(src / row["image"]) as im:
                    im.convert("RGB").save(out, "WEBP", quality=quality, method=4)
            row["image"] = str(target)
        (dst / manifest.name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.compact", description=__doc__)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--quality", type=int, default=80)
    args = parser.parse_args(argv)
    compact(args.src, args.dst, args.quality)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
