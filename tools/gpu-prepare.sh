#!/usr/bin/env bash
# Fill .device/ (git-ignored) with what tools/gpu-check.sh needs on the GPU machine and cannot get
# there (it has no network), then print the device tool's `run` call. Run on a machine with
# network, from anywhere in the checkout:
#
#   bash tools/gpu-prepare.sh
#
# .device/cache   zstag's cache root (ZSTAG_CACHE there) holding the label vectors of every label
#                 the check embeds: the default model's seen labels, `zstag bench`'s vocabulary and
#                 the 1,000 ImageNet names (`--model imagenet`), computed here with MiniLM, so that
#                 the 90 MB text model stays behind.
#                 Backbone weights are left out on purpose: the bench uses random weights of the
#                 same shape (speed does not depend on them) and says so in its `weights` field.
# .device/wheels  platformdirs, which zstag imports at start-up and the GPU image lacks, and
#                 huggingface_hub 2 with its httpx2 (the image has 1.x, which zstag's hub code and
#                 tools/random_clip.py's fetch through the fake hub do not run on).
# .device/fallback
#                 typer and its dependencies at the versions tested here, installed there only if
#                 `python3 -m zstag --help` fails with the image's own typer.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=.device
mkdir -p "$dev/cache" "$dev/wheels" "$dev/fallback"

echo "label vectors -> $dev/cache/embeddings"
ZSTAG_CACHE="$PWD/$dev/cache" HF_HUB_OFFLINE=1 python3 - <<'EOF'
from zstag.backbones.torchvision_nets import imagenet_classes
from zstag.bench.run import VOCABULARY
from zstag.store.model import load_model

model = load_model("default")  # embeds (and caches) its seen labels
model.embed(list(VOCABULARY))
model.embed(imagenet_classes())  # what `--model imagenet` (ConSE) scores with
labels = f"{len(model.config['seen_labels'])} seen labels + {len(VOCABULARY)} bench labels + 1,000 ImageNet names"
print(f"  {labels}, {model.config['semantics']}")
EOF

# The GPU image runs CPython 3.12 on x86-64 (/work/.library/device/KINDS.md).
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$@"
}
version() { python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
for package in platformdirs huggingface_hub httpx2 httpcore2 truststore; do
    download "$dev/wheels" "$package==$(version "$package")"
done
for package in typer pydantic pydantic-core annotated-types typing-inspection annotated-doc shellingham rich; do
    download "$dev/fallback" "$package==$(version "$package")"
done

du -sh "$dev"
cat <<'EOF'

Check the script here first (tiny sizes on the CPU, a few minutes): DEVICE=cpu bash tools/gpu-check.sh
Then the device tool's call (one run; the script ends its own steps within about 7.5 minutes):
  run(command="bash tools/gpu-check.sh", carry=[".device"], timeout_s=540)
and commit what comes back: gpu-check.json as docs/results/bench-h200.json, its figures in
docs/performance.md (the GPU section says what to fill in).
EOF
