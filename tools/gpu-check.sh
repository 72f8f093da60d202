#!/usr/bin/env bash
# Issue #22's one GPU script: the CUDA tests, then `zstag bench` on the GPU, in under 8 minutes.
#
# On the GPU machine, through the device tool, after `bash tools/gpu-prepare.sh` here:
#   run(command="bash tools/gpu-check.sh", carry=[".device"], timeout_s=540)
# A dry run on a CPU, with tiny sizes (checks every command and flag, not speed; a few minutes):
#   DEVICE=cpu bash tools/gpu-check.sh
# Some steps only: STEPS="WORD ..." (spaces or commas between) runs the steps named WORD or
# WORD-... (and `start`), e.g. `DEVICE=cpu STEPS=clip bash tools/gpu-check.sh` (about a minute).
#
# Writes two files into $OUT (what the device tool brings back: at most 8 files; /tmp/zstag-gpu-check
# when unset): gpu-check.log (all output) and gpu-check.json, the file to commit to docs/results/:
# {"steps": each step's exit status, "reports": {step: its `zstag bench --json` report},
# "random_weights": what tools/random_clip.py generated}, written again after every step, so that a
# run cut short keeps what it measured. The per-step reports and generated weights stay in a scratch
# folder, removed at the end. Each step runs under `timeout`; a failed or timed-out step is logged
# and the script goes on. Steps run in order of value, and a step is skipped when less of the time
# budget (BUDGET seconds: 450 on a GPU) is left than it needs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/zstag-gpu-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
TEE=$!
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export ZSTAG_CACHE=$ROOT/.device/cache  # the label vectors tools/gpu-prepare.sh computed
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
PY=python3
START=$SECONDS
ONLY=${STEPS:-}
RESULTS=()  # NAME=exit status, or NAME=skipped
WORK=$(mktemp -d "${TMPDIR:-/tmp}/zstag-gpu-check.XXXXXX")  # per-step reports, generated weights
REPORTS=$WORK/reports
mkdir -p "$REPORTS"
trap 'rm -rf "$WORK"' EXIT

# selected NAME: whether STEPS (unset: every step) asks for step NAME.
selected() {
    local word
    [[ -z $ONLY || $1 == start ]] && return 0
    for word in ${ONLY//,/ }; do
        [[ $1 == "$word" || $1 == "$word"-* ]] && return 0
    done
    return 1
}

# merge: write $OUT/gpu-check.json from the reports so far (the clip steps' marked as random weights).
merge() {
    $PY - "$OUT" "$REPORTS" "$WORK/random/random-weights.json" "${RESULTS[@]}" <<'EOF'
import json, sys
from pathlib import Path

out, reports_dir, made = map(Path, sys.argv[1:4])
steps = dict(s.split("=", 1) for s in sys.argv[4:])
reports = {}
for path in sorted(reports_dir.glob("*.json")):
    try:
        reports[path.stem] = json.loads(path.read_text())
    except ValueError as exc:  # a step killed while writing it
        reports[path.stem] = {"error": f"unreadable report: {exc}"}
merged = {"steps": steps, "reports": reports}
if made.is_file():
    merged["random_weights"] = json.loads(made.read_text())
    for name, report in reports.items():
        if name.startswith("clip-"):
            report["weights_source"] = {model: m["weights"] for model, m in merged["random_weights"].items()}
(out / "gpu-check.json").write_text(json.dumps(merged, indent=2) + "\n")
EOF
}

# step NAME EXPECTED_S LIMIT_S COMMAND...: run COMMAND under `timeout LIMIT_S` (cut to what the
# budget leaves), unless STEPS leaves it out or fewer than EXPECTED_S seconds of the budget are
# left, then rewrite gpu-check.json. LAST: its exit status, else "skipped".
step() {
    local name=$1 expected=$2 limit=$3 left rc began
    shift 3
    LAST=skipped
    selected "$name" || return 0
    left=$((BUDGET - (SECONDS - START)))
    if ((left < expected)); then
        echo "=== $name: skipped, ${left}s of the budget left, it needs about ${expected}s"
        RESULTS+=("$name=skipped")
        merge
        return
    fi
    ((limit > left)) && limit=$left
    echo "=== $name (at $((SECONDS - START))s, limit ${limit}s): $*"
    began=$SECONDS
    timeout -k 5 "$limit" "$@"
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - began))s$( ((rc == 124 || rc == 137)) && echo ' (timed out)')"
    RESULTS+=("$name=$rc")
    LAST=$rc
    merge
}

if [[ $DEVICE == cpu ]]; then
    # Tiny sizes: every section and flag runs, in minutes on two cores; Dynamo's quick `eager`
    # backend stands in for inductor (tests/test_engine.py checks inductor's scores).
    SIZE_224=64 SIZE_448=96
    E2E=(--images 4 --batch-size 2 --repeats 1)
    RANDOM_CLIP=(--tiny)  # the tests' tiny CLIP (seconds) instead of a 600 MB ViT-B/32
    E2E_SMALL=("${E2E[@]}")
    METHODS=(--batch-size 2 --repeats 1 --image-size 64)
    FORWARD=(--compile)  # on a CPU the forward section measures the compiled model only when asked
    export ZSTAG_COMPILE_BACKEND=${ZSTAG_COMPILE_BACKEND:-eager}
    PYTEST_MARK="not slow"
    BUDGET=${BUDGET:-3600}  # a slow, shared CPU: run every step
else
    SIZE_224=224 SIZE_448=448
    E2E=(--repeats 2)                   # 16,384 photos, batch 256 (the CUDA defaults)
    E2E_SMALL=(--images 4096 --repeats 2)
    RANDOM_CLIP=()                      # ViT-B/32's shapes
    METHODS=()                          # batch 256, VGG19 and ResNet-101 at 224 px
    FORWARD=()                          # on CUDA it measures the compiled model by default
    PYTEST_MARK="not slow"             # the CUDA tests skip themselves without a GPU
    BUDGET=${BUDGET:-450}
fi

echo "=== machine"
nvidia-smi 2>&1 | head -15
nproc
$PY - <<'EOF'
import platform, torch, torchvision
print("python", platform.python_version(), "torch", torch.__version__, "torchvision", torchvision.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), p.name, f"{p.total_memory / 2**30:.0f} GiB")
EOF

if [[ $DEVICE != cpu ]]; then
    # The GPU image has torch & co.; platformdirs travels as a wheel (no network there).
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/wheels/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/site
    $PY -m pip install -q --no-deps --no-build-isolation -e . || echo "editable install failed: PYTHONPATH serves instead"
    if ! $PY -m zstag --help >/dev/null; then
        echo "zstag does not start with the image's typer: installing the tested versions from .device/fallback"
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/fallback/*.whl
    fi
fi
step start 5 60 $PY -m zstag --version

step tests 60 150 $PY -m pytest -q -p no:cacheprovider -m "$PYTEST_MARK" tests/test_decode_path.py tests/test_engine.py

bench() {
    local name=$1 expected=$2 limit=$3
    shift 3
    step "$name" "$expected" "$limit" $PY -m zstag bench --device "$DEVICE" --json "$REPORTS/$name.json" "$@"
}
# VGG19 + LESA at 224 px: forward eager and compiled (compile cost apart), 100 vs 100,000 labels,
# decoding; then end to end (eager: a run this short does not compile by default) against the
# DataLoader loop. Two runs, so that a timeout in one cannot lose the other's report.
bench bench-224 60 150 --backbone vgg19 --image-size $SIZE_224 --only forward,decode,vocab-scale \
    "${E2E[@]}" "${FORWARD[@]}"
# Where the end-to-end time goes: the engine's run cut after each stage (read, decode, score eager
# and compiled, the whole tag job).
bench pipeline 60 150 --backbone vgg19 --image-size $SIZE_224 --only pipeline "${E2E_SMALL[@]}" "${FORWARD[@]}"
bench bench-224-e2e 60 150 --backbone vgg19 --image-size $SIZE_224 --only end-to-end "${E2E[@]}"
# Issue #21's GPU column: the ready-made models (docs/usage.md, "Photos, no training"), with RANDOM
# WEIGHTS OF THE REAL SHAPES (no network here; speed does not depend on the values; their reports
# say so in `weights_source`): tools/random_clip.py generates CLIP ViT-B/32 and ResNet-101 and
# fetches them through the tests' fake hub into a copy of the cache (whose MiniLM vectors of the
# ImageNet names `imagenet` reads; .device/cache stays as prepared), pinned by its own registry.
# Then the CLIP tower as a backbone (LESA's head, forward eager and compiled), and `--model
# clip-vit-b32` and `--model imagenet` (ConSE on ResNet-101), forward and end to end, eager.
if selected clip-prepare; then
    cp -r "$ZSTAG_CACHE" "$WORK/cache"
fi
step clip-prepare 30 120 env ZSTAG_CACHE="$WORK/cache" $PY -m tools.random_clip "$WORK/random" "${RANDOM_CLIP[@]}"
if [[ $LAST == 0 ]]; then
    export ZSTAG_CACHE=$WORK/cache ZSTAG_REGISTRY=$WORK/random/registry.json
    bench clip-backbone 60 120 --backbone clip-vit-b32 --image-size $SIZE_224 --only forward \
        "${E2E_SMALL[@]}" "${FORWARD[@]}"
    bench clip-model 60 120 --model clip-vit-b32 --only forward,end-to-end --no-compile "${E2E_SMALL[@]}"
    bench clip-imagenet 45 90 --model imagenet --only forward,end-to-end --no-compile "${E2E_SMALL[@]}"
    export ZSTAG_CACHE=$ROOT/.device/cache
    unset ZSTAG_REGISTRY
fi
# 448 px: forward (eager and compiled) and end to end.
bench bench-448 90 150 --backbone vgg19 --image-size $SIZE_448 --only forward,end-to-end \
    "${E2E_SMALL[@]}" "${FORWARD[@]}"
# End to end with the model compiled (inductor's cache is warm from bench-224's forward section).
bench bench-224-compiled 60 120 --backbone vgg19 --image-size $SIZE_224 --only end-to-end --compile "${E2E_SMALL[@]}"
# The compile mode, measured: CUDA graphs (the engine pads batches to one shape) against bench-224's default mode.
ZSTAG_COMPILE_MODE=reduce-overhead bench bench-224-cudagraphs 45 90 --backbone vgg19 --image-size $SIZE_224 \
    --only forward "${E2E_SMALL[@]}" "${FORWARD[@]}"

# Every method's inference and training, batch 256, VGG19 and ResNet-101 (measured in the first
# H200 run, docs/results/bench-h200-run1.json: last, so that what changed since is measured first).
bench bench-methods 60 150 --only methods "${METHODS[@]}"

echo "=== steps: ${RESULTS[*]} (${SECONDS}s in all)"
merge && echo "wrote $OUT/gpu-check.json"
exec >&- 2>&-
wait "$TEE"  # the log is complete before the device tool collects $OUT
