"""Hostile model directories: copies of the shipped `weights/default` with one field made dangerous.

Every config field is checked by `zstag.store.config.read_config` before anything is allocated
(issue 17, item 3) and a model may name semantics only by registry name or by a path inside itself,
loading only safetensors (item 7). Each case is refused with one line naming the file and the field,
exit 2 on the command line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from zstag.core.errors import ModelError, UsageError
from zstag.core.paths import WEIGHTS_DIR
from zstag.store.config import MAX_LABELS, read_config
from zstag.store.model import CONFIG, build_model, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
ZSTAG = shutil.which("zstag")


def hostile_copy(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """weights/default copied into tmp_path/m with `change` applied to its config."""
    folder = Path(shutil.copytree(WEIGHTS_DIR / "default", tmp_path / "m"))
    config = json.loads((folder / CONFIG).read_text())
    change(config)
    (folder / CONFIG).write_text(json.dumps(config))
    return folder


def setter(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config.update(fields)


CASES = [
    ("image_size", setter(image_size=100000)),  # grew to 21 GB before it was checked
    ("image_size", setter(image_size=1e9)),
    ("image_size", setter(image_size="128")),
    ("image_size", setter(image_size=True)),
    ("image_size", setter(image_size=8)),
    ("semantic_dim", setter(semantic_dim=10**9)),
    ("semantic_dim", setter(semantic_dim=384.0)),
    ("semantic_dim", setter(semantic_dim=300)),  # the header's project.weight is 256 x 384
    ("seen_labels", setter(seen_labels="dog")),
    ("seen_labels", setter(seen_labels=[])),
    ("seen_labels", setter(seen_labels=["dog", ""])),
    ("seen_labels", setter(seen_labels=["dog", 7])),
    ("seen_labels", setter(seen_labels=["dog", "x" * 5000])),
    ("seen_labels", setter(seen_labels=["label"] * (MAX_LABELS + 1))),
    ("unseen_labels", setter(unseen_labels={"dog": 1})),
    ("unseen_labels", setter(unseen_labels=[None])),
    ("calibration.scale", setter(calibration={"scale": float("nan"), "bias": 0.0})),
    ("calibration.bias", setter(calibration={"scale": 1.0, "bias": float("inf")})),
    ("calibration.scale", setter(calibration={"scale": 1e300, "bias": 0.0})),
    ("calibration.scale", setter(calibration={"scale": "1", "bias": 0.0})),
    ("calibration.scale", setter(calibration={"scale": -2.0, "bias": 0.0})),  # would reverse the ranking
    ("calibration.scale", setter(calibration={"scale": 0, "bias": 0.0})),
    ("calibration.pairs", setter(calibration={"scale": 1.0, "bias": 0.0, "pairs": float("nan")})),
    ("calibration", setter(calibration=[1.0, 0.0])),
    ("calibration", setter(calibration={"scale": 1.0})),
    ("backbone", setter(backbone="../../etc")),
    ("backbone", setter(backbone=["vgg19"])),
    ("backbone_in_weights", setter(backbone_in_weights="yes")),
    ("format", setter(format=2)),
    ("hp", setter(hp="attentions=1000000000")),
    ("hp", setter(hp=[1, 2])),
    ("semantics", setter(semantics="/etc/passwd")),
    ("semantics", setter(semantics="../default/config.json")),
    ("semantics", setter(semantics=".")),
    ("semantics", setter(semantics=5)),
    ("semantics", setter(semantics="vectors.txt")),  # not in the directory
    ("unknown method", setter(method=["lesa"])),
]


@pytest.mark.parametrize("field, change", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_hostile_field_is_refused_naming_the_file_and_field(tmp_path, field, change):
    folder = hostile_copy(tmp_path, change)
    with pytest.raises(ModelError) as info:
        read_config(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / CONFIG}: ") and field in message and "\n" not in message
    assert len(message) < 400  # a megabyte-long field is not echoed back


def test_the_shipped_default_model_passes(tmp_path):
    assert read_config(WEIGHTS_DIR / "default")["image_size"] == 128


def test_deeply_nested_json_is_an_unreadable_config_not_a_crash(tmp_path):
    folder = hostile_copy(tmp_path, setter())
    (folder / CONFIG).write_text('{"hp": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ModelError, match="unreadable model config"):
        read_config(folder)


def test_a_semantics_link_out_of_the_directory_is_refused(tmp_path):
    folder = hostile_copy(tmp_path, setter(semantics="vectors.txt"))
    (folder / "vectors.txt").symlink_to("/etc/passwd")
    with pytest.raises(ModelError, match="semantics 'vectors.txt' is neither"):
        read_config(folder)


def test_a_pickle_only_sentence_transformers_folder_is_refused(tmp_path):
    folder = hostile_copy(tmp_path, setter(semantics="st"))
    st = folder / "st"
    st.mkdir()
    (st / "modules.json").write_text("[]")
    (st / "config.json").write_text("{}")
    (st / "pytorch_model.bin").write_bytes(b"\x80\x04\x95 a pickle")
    assert read_config(folder)["semantics"] == "st"  # inside the directory: allowed by the config check
    with pytest.raises(UsageError) as info:
        load_model(folder)
    assert "pytorch_model.bin" in str(info.value) and "\n" not in str(info.value)


def test_a_label_count_mismatch_is_caught_from_the_header(tmp_path, word_vectors):
    model = build_model(
        "conse",
        "small",
        str(word_vectors),
        ["red circle", "blue square", "green triangle"],
        {},
        image_size=32,
        pretrained=False,
    )
    save_model(model, tmp_path / "conse")
    config = json.loads((tmp_path / "conse" / CONFIG).read_text())
    config["seen_labels"] = config["seen_labels"][:2]
    (tmp_path / "conse" / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"seen_labels lists 2 labels, but model.safetensors was trained on 3"):
        read_config(tmp_path / "conse")


def test_a_model_with_local_semantics_carries_them_and_loads_anywhere(tmp_path, word_vectors):
    model = build_model(
        "fast0tag", "small", str(word_vectors), ["red circle", "blue square"], {"hidden": 8}, image_size=32
    )
    save_model(model, tmp_path / "a")
    copy = tmp_path / "a" / "semantics.txt"
    inode = copy.stat().st_ino
    save_model(model, tmp_path / "a")  # a later epoch's save does not copy the vectors again
    assert copy.stat().st_ino == inode and copy.read_bytes() == word_vectors.read_bytes()
    moved = Path(shutil.move(str(tmp_path / "a"), tmp_path / "b"))
    assert load_model(moved).semantics.source == (moved / "semantics.txt")


needs_console_script = pytest.mark.skipif(ZSTAG is None, reason="the zstag console script is not installed")


@needs_console_script
@pytest.mark.parametrize(
    "field, change",
    [
        ("image_size", setter(image_size=100000)),
        ("seen_labels", setter(seen_labels="dog")),
        ("calibration.scale", setter(calibration={"scale": float("nan"), "bias": 0.0})),
        ("semantics", setter(semantics="/etc/passwd")),
        ("hp", setter(hp="x")),
    ],
)
def test_tag_with_a_hostile_model_exits_2_with_one_line(tmp_path, field, change):
    folder = hostile_copy(tmp_path, change)
    start = time.monotonic()
    result = subprocess.run(
        [
            ZSTAG,
            "tag",
            str(EXAMPLES / "photos" / "car.jpg"),
            "--labels",
            str(EXAMPLES / "vocab.txt"),
            "--model",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "ZSTAG_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and str(folder / CONFIG) in lines[0], result.stderr
    assert result.stdout == ""
    assert time.monotonic() - start < 60
