"""Random weights of the real shapes for the ready-made models, fetched the way users fetch them.

    python -m tools.random_clip WORK [--tiny] [--no-imagenet]

The GPU check (tools/gpu-check.sh, step `clip`) measures what `clip-vit-b32` and `imagenet` cost on
a GPU that has no network, so no real weights: speed does not depend on their values, only on their
shapes. This writes into WORK:

- `clip-vit-b32/`: a random CLIP ViT-B/32 in the layout the Hub serves openai/clip-vit-base-patch32
  (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`). The model is
  transformers' `CLIPConfig()`, whose defaults are ViT-B/32's shapes; `REAL_TOWERS` (from the real
  config.json) is checked against it. The tokenizer is the tests' byte-level one (tests/fakehub.py `tiny_clip_files`: a
  character a token, no merges), so label prompts are longer than with CLIP's BPE and the text tower
  does somewhat more work than with the real one; the image tower's work is the same.
- `resnet101/model.safetensors`: a random torchvision ResNet-101 under timm's `resnet101.tv_in1k`
  key names (`imagenet` uses it), unless `--no-imagenet`.
- `registry.json`: zstag's registry with those entries pinned to these files' sha256 and size
  (tests/fakehub.py `serve_registry`): point `ZSTAG_REGISTRY` at it for every later zstag command.
- `random-weights.json`: what was generated: parameters, and the weights file's bytes beside the
  real file's pinned size (ViT-B/32: 151,277,313 values, 1,208 bytes short of the real file, about
  its two int64 `position_ids` buffers, which transformers no longer saves).

Then it serves them with the tests' fake hub (tests/fakehub.py, `HF_ENDPOINT` pointed at it) and runs
`zstag fetch` for each into `$ZSTAG_CACHE`, so that fetching, checksums and the cache layout are the
real code paths. `--tiny` uses the tests' tiny CLIP instead (a dry run on a CPU in seconds).
Nothing here is part of the wheel.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fakehub import serve, serve_registry, tiny_clip_files, torch_seed  # noqa: E402

CLIP, IMAGENET_BACKBONE = "clip-vit-b32", "resnet101"
# openai/clip-vit-base-patch32's config.json (the Hub, revision refs/pr/15): the shapes that matter.
REAL_PROJECTION = 512
REAL_TOWERS = {
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 32,
        "num_channels": 3,
        "hidden_act": "quick_gelu",
    },
}
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def clip_files(folder: Path, tiny: bool) -> dict[str, bytes]:
    """The CLIP snapshot's files. The tests' tiny CLIP gives the tokenizer (and, with `tiny`, the model);
    otherwise its model is replaced by `CLIPModel(CLIPConfig())`, its text tower told the tokenizer's
    special token ids (ids, not shapes)."""
    from transformers import CLIPConfig, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    files = tiny_clip_files(folder)
    if tiny:
        return files
    ids = {key: json.loads(files["config.json"])["text_config"][key] for key in SPECIAL_IDS}
    config = CLIPConfig(text_config=ids)
    check_shapes(config.to_dict())
    torch_seed()
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)  # replaces config.json and the weights
    return {name: (folder / name).read_bytes() for name in files}


def check_shapes(config: dict[str, Any]) -> None:
    """Refuse to measure anything but ViT-B/32's shapes (a transformers release could change a default)."""
    wrong = [f"projection_dim={config['projection_dim']!r}"] if config["projection_dim"] != REAL_PROJECTION else []
    wrong += [
        f"{tower}.{key}={config[tower][key]!r} (real: {value!r})"
        for tower, values in REAL_TOWERS.items()
        for key, value in values.items()
        if config[tower][key] != value
    ]
    if wrong:
        raise SystemExit(f"CLIPConfig() is not ViT-B/32 here: {', '.join(wrong)}")


def resnet_file(folder: Path) -> bytes:
    """A random torchvision ResNet-101 as timm's `resnet101.tv_in1k` model.safetensors (the same key names)."""
    import torchvision
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch_seed()
    net = torchvision.models.resnet101(weights=None)
    state = {k: v.contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(folder / "model.safetensors"))
    return (folder / "model.safetensors").read_bytes()


def describe(files: dict[str, bytes], real: dict[str, Any]) -> dict[str, Any]:
    """What was generated, beside the shipped registry's pin of the real weights file."""
    weights = files["model.safetensors"]
    header = json.loads(weights[8 : 8 + int.from_bytes(weights[:8], "little")])  # safetensors' layout
    parameters = sum(math.prod(t["shape"]) for key, t in header.items() if key != "__metadata__")
    return {
        "weights": "random weights, real shapes",
        "real": f"{real['repo']}@{real.get('revision') or 'main'}",
        "parameters": parameters,
        "model.safetensors bytes": len(weights),
        "real model.safetensors bytes": next(f.get("size") for f in real["files"] if f["name"] == "model.safetensors"),
        "files": sorted(files),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path, help="folder for the generated files and registry.json")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny CLIP (a dry run on a CPU)")
    parser.add_argument("--no-imagenet", action="store_true", help="no ResNet-101 for `--model imagenet`")
    args = parser.parse_args(argv)
    cache = os.environ.get("ZSTAG_CACHE")
    if not cache:
        parser.error("set ZSTAG_CACHE: the fetched files go there")
    from zstag.store import hub

    shipped = hub.load_registry()
    made = {CLIP: clip_files(args.work / CLIP, args.tiny)}
    if not args.no_imagenet:
        made[IMAGENET_BACKBONE] = {"model.safetensors": resnet_file(args.work / IMAGENET_BACKBONE)}
    manifest = {name: describe(files, shipped[name]) for name, files in made.items()}
    if args.tiny:
        manifest[CLIP]["weights"] = "random weights, tiny test shapes (--tiny): a dry run, not ViT-B/32"

    env = pytest.MonkeyPatch()  # the tests' helpers set the environment through one
    fake = serve(args.work, env)
    try:
        env.setenv("ZSTAG_CACHE", cache)  # serve() points it into WORK
        for name, files in made.items():
            serve_registry(fake, args.work, env, name, files)
        for name in made:
            done = subprocess.run([sys.executable, "-m", "zstag", "fetch", name], cwd=ROOT)
            if done.returncode:
                return done.returncode
    finally:
        fake.stop()
        env.undo()
    (args.work / "random-weights.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))
    print(f"registry: {args.work / 'registry.json'} (set ZSTAG_REGISTRY to it); cache: {cache}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
