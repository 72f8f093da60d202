"""The model store: model directories (`config`, `model`), the fetch cache and the Hugging Face Hub
(`hub`, which knows files and checksums, never methods), listing (`catalog`) and publishing (`publish`).

A model directory is these two files, never a pickle, and, for a model trained on a local vector
file or sentence-transformers folder, its copy (`semantics.txt` / `semantics/`) that the config names.
"""

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
# The largest |scale| and |bias| of a config's calibration: a Platt fit beyond it means scores that
# barely vary, which `zstag.eval.calibration.fit_platt` refuses rather than store.
CALIBRATION_LIMIT = 1e6
from zstag.backbones import CLIP_MODELS  # noqa: E402 (names only, no torch)

SEMANTICS_NAMES = ("minilm", "glove-300", *CLIP_MODELS)  # the registry's semantics a model's config may name
