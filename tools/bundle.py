"""Make the bundled backbone and check what ships in `weights/`.

The bundled backbone is one of our scratch trunks (`small` or `small-resnet`) pretrained as a
multi-label classifier on the OpenClipart benchmark's *training* split, over the seen labels plus the drawings' folder
categories ("birds", "fruit", "vehicles"...). The categories give the classifier a class space
beyond the target labels, which RGCN-PosVAE uses as external knowledge (as ImageNet-1k serves
VGG19). Unseen labels never enter pretraining: their tags are removed, and a category that
matches an unseen label (also by a plural "s") is left out.

The classifier is trained with zstag's own loop (`--method conse`, which is exactly a classifier
over its training labels on pooled features), then exported:

    python -m tools.bundle manifest DATA_DIR          # writes DATA_DIR/pretrain.jsonl
    zstag train DATA_DIR/pretrain.jsonl --method conse --backbone small --out M ...
    python -m tools.bundle export M [--weights weights/bundled]   # M trained on small or small-resnet

The default model (`weights/default`) is a trained model folder stored with fp16 weights, which
halves its size (the engine computes in fp32 either way; docs/benchmarks.md measured the change):

    python -m tools.bundle default M [--weights weights/default]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from tools.openclipart import normalise_keyword
from zstag.backbones import SCRATCH_BACKBONES
from zstag.core.paths import WEIGHTS_DIR
from zstag.data.manifest import read_dataset
from zstag.data.vocab import read_vocabulary


def category_of(image: Path, root: Path) -> str:
    """The leaf folder of a drawing as a label: images/food/breads_and_carbs/x.png -> 'breads and carbs'."""
    parts = image.relative_to(root / "images").parts
    return normalise_keyword(parts[-2]) if len(parts) > 1 else ""


def pretrain_manifest(data_dir: Path) -> Path:
    """DATA_DIR/pretrain.jsonl: training images with seen tags plus their folder category."""
    unseen = set(read_vocabulary(data_dir / "unseen.txt"))
    blocked = unseen | {u + "s" for u in unseen} | {u[:-1] for u in unseen if u.endswith("s")}
    out = data_dir / "pretrain.jsonl"
    root = data_dir.resolve()
    with out.open("w", encoding="utf-8") as f:
        for s in read_dataset(data_dir / "train.jsonl"):
            tags = [t for t in s.tags if t not in unseen]
            category = category_of(s.image, root)
            if category and category not in blocked and category not in tags:
                tags.append(category)
            f.write(json.dumps({"image": str(s.image.relative_to(root)), "tags": tags}) + "\n")
    return out


def export(model_dir: Path, weights: Path) -> None:
    """A conse model on a scratch trunk -> weights/bundled (backbone + classifier in fp16, class names)."""
    config = json.loads((model_dir / "config.json").read_text())
    if config["method"] != "conse" or config["backbone"] not in SCRATCH_BACKBONES:
        raise SystemExit(f"{model_dir}: expected a conse model on one of: {', '.join(SCRATCH_BACKBONES)}")
    state = load_file(str(model_dir / "model.safetensors"))
    tensors = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    tensors["classifier.2.weight"] = state["classifier.weight"]
    tensors["classifier.2.bias"] = state["classifier.bias"]
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    weights.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(weights / "model.safetensors"))
    meta = {
        "architecture": config["backbone"],
        "class_names": config["seen_labels"],
        "image_size": config["image_size"],
        "pretraining": {
            k: config["training"][k]
            for k in ("data", "n_train", "n_val", "best_epoch", "best_val_mAP", "seconds", "device")
        },
        "hp": config["hp"],
    }
    (weights / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def export_default(model_dir: Path, weights: Path) -> None:
    """A trained model folder -> weights/default: floating tensors in fp16, every other file (the
    config, a semantics file the config names) copied as it is.

    Refuses a model that carries its backbone: the default reads the bundled one."""
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("backbone") != "bundled" or config.get("backbone_in_weights"):
        raise SystemExit(f"{model_dir}: expected a model on the bundled backbone, without the backbone's weights")
    state = load_file(str(model_dir / "model.safetensors"))
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    weights.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(weights / "model.safetensors"))
    for item in model_dir.iterdir():
        if item.name in ("model.safetensors", "checkpoint.safetensors"):
            continue
        if item.is_dir():
            shutil.copytree(item, weights / item.name, dirs_exist_ok=True)
        else:
            shutil.copyfile(item, weights / item.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bundle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("manifest", help="write DATA_DIR/pretrain.jsonl")
    m.add_argument("data_dir", type=Path)
    e = sub.add_parser("export", help="export a conse model on a scratch trunk as the bundled backbone")
    e.add_argument("model_dir", type=Path)
    e.add_argument("--weights", type=Path, default=WEIGHTS_DIR / "bundled")
    d = sub.add_parser("default", help="store a trained model on the bundled backbone as the default, in fp16")
    d.add_argument("model_dir", type=Path)
    d.add_argument("--weights", type=Path, default=WEIGHTS_DIR / "default")
    args = parser.parse_args(argv)
    if args.command == "manifest":
        print(pretrain_manifest(args.data_dir))
    elif args.command == "export":
        export(args.model_dir, args.weights)
    else:
        export_default(args.model_dir, args.weights)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
