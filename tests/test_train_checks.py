"""`zstag train`'s input checks, through the installed console script: every mistake it can find
before importing torch is reported at once, one line each, exit 2, without importing torch; data
that trains but looks wrong (descriptions as tags, unreadable images) is named.

The "no torch" checks run the console script with PYTHONPROFILEIMPORTTIME=1, which makes Python
list every module the process imports on stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import synth
from synth import ON_CPU
from test_console_script import ZSTAG, zstag

from zstag.backbones import BACKBONES
from zstag.data.manifest import Sample
from zstag.training.checks import label_warnings

pytestmark = pytest.mark.skipif(ZSTAG is None, reason="the zstag console script is not installed")


def without_torch(*args: str, cwd: Path) -> tuple[int, list[str]]:
    """Run `zstag ARGS`; (exit code, stderr lines that are not import timings), asserting that
    the process never imported torch."""
    result = zstag(*args, cwd=cwd, env={"PYTHONPROFILEIMPORTTIME": "1"})
    lines = result.stderr.splitlines()
    imported = [line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")]
    assert "zstag.cli" in imported  # the timings are there, so their lack of torch means something
    assert "torch" not in imported
    return result.returncode, [line for line in lines if not line.startswith("import time:")]


def test_a_missing_manifest_is_reported_without_importing_torch(tmp_path):
    code, lines = without_torch("train", "nothere.jsonl", "--method", "lesa", "--out", "m", cwd=tmp_path)
    assert code == 2 and lines == ["error: dataset not found: nothere.jsonl"]


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["train"], ["train", "d.jsonl", "--epochs", "0"]])
def test_help_and_usage_errors_do_not_import_torch(args, tmp_path):
    code, _ = without_torch(*args, cwd=tmp_path)
    assert code == (0 if "--help" in args else 2)


def test_the_cli_module_imports_no_torch():
    subprocess.run([sys.executable, "-c", "import zstag.cli, sys; assert 'torch' not in sys.modules"], check=True)


def test_every_problem_is_reported_in_one_go(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    rows = [{"image": "a.png", "tags": "dog"}, {"image": "b.png"}, {"image": "c.png", "tags": ["cat"]}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "out.txt").write_text("not a model folder")
    code, lines = without_torch(
        "train",
        "m.jsonl",
        "--method",
        "lesax",
        "--out",
        "out.txt",
        "--unseen",
        "none.txt",
        "--backbone",
        "vgg",
        "--set",
        "lr=-1",
        cwd=tmp_path,
    )
    assert code == 2
    assert lines == [
        "error: unknown method 'lesax'; choose one of: lesa, sgma, rgcn-posvae, ml2p, fast0tag, conse",
        "error: --set: hyperparameter 'lr' must be > 0, not -1",
        f"error: unknown backbone 'vgg'; choose one of: {', '.join(BACKBONES)}",
        "error: --out out.txt is a file; give a folder for the model",
        "error: --unseen: vocabulary file not found: none.txt",
        "error: m.jsonl:1: 'tags' must be a list of strings, not the string 'dog' (write [\"dog\"])",
        "error: m.jsonl:2: each line must be an object with 'image' and 'tags'",
    ]


def test_missing_images_are_named_before_training(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    rows = [{"image": name, "tags": ["cat"]} for name in ("a.png", "b.png", "c.png")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, lines = without_torch("train", "m.jsonl", "--method", "lesa", "--out", "m", cwd=tmp_path)
    assert code == 2
    missing = f"'{tmp_path / 'b.png'}', '{tmp_path / 'c.png'}'"
    assert lines == [f"error: m.jsonl: 2 of 3 listed image(s) not found: {missing}"]


def test_a_csv_row_without_tags_is_refused_naming_its_line(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "m.csv").write_text("image,tags\na.png,dog\na.png\n")
    code, lines = without_torch("train", "m.csv", "--method", "lesa", "--out", "m", cwd=tmp_path)
    assert code == 2 and len(lines) == 1 and "m.csv:3: the row has no 'tags' column" in lines[0]


@pytest.mark.parametrize("pair", ["novalue", "=3", " =3"])
def test_set_without_a_key_exits_2_naming_set(pair, tmp_path):
    code, lines = without_torch("train", "d.jsonl", "--method", "lesa", "--out", "m", "--set", pair, cwd=tmp_path)
    assert code == 2 and len(lines) == 1 and "--set" in lines[0] and "KEY=VALUE" in lines[0]


def test_a_method_setting_is_checked_before_the_data_is_read(tmp_path):
    """Keys of a method's own settings need its class (and torch), but still come in the same list."""
    result = zstag("train", "nothere.jsonl", "--method", "lesa", "--out", "m", "--set", "attentoins=2", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --set: unknown hyperparameter 'attentoins' for lesa (did you mean 'attentions'?)",
        "error: dataset not found: nothere.jsonl",
    ]


def test_labels_that_look_like_descriptions_are_warned_about():
    captions = [Sample(Path(f"/d/{i}.png"), [f"A banana number {i}.", f"photo {i}"]) for i in range(4)]
    said = label_warnings(captions)
    assert len(said) == 2
    assert said[0].startswith("4 of 8 label(s) look like sentences") and "'A banana number 0.'" in said[0]
    assert said[1].startswith("8 labels for 4 image(s), 8 of them on one image only")
    tags = [Sample(Path(f"/d/{i}.png"), ["dog", "beach"] if i % 2 else ["cat", "St. Bernard"]) for i in range(4)]
    assert label_warnings(tags) == []


def test_training_names_unreadable_images_warns_on_captions_and_exits_3(tmp_path, word_vectors):
    """A sidecar folder of caption files with one image that is not an image: the model is written,
    the image named, the captions warned about; no NumPy overflow noise from the calibration fit."""
    data = synth.make_dataset(tmp_path / "data", n=12, size=32, seed=5)
    folder = data["images"]
    for row in map(json.loads, data["manifest"].read_text().splitlines()):
        (tmp_path / "data" / row["image"]).with_suffix(".txt").write_text(", ".join(row["tags"]) + "\nA red circle.\n")
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "broken.txt").write_text("red circle")
    result = zstag(
        "train",
        str(folder),
        "--method",
        "fast0tag",
        "--backbone",
        "small",
        "--semantics",
        str(word_vectors),
        "--epochs",
        "1",
        "--image-size",
        "32",
        *ON_CPU,
        "--val-fraction",
        "0.25",
        "--out",
        str(tmp_path / "model"),
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stderr
    assert (tmp_path / "model" / "config.json").exists()
    assert f"1 training image(s) could not be read and were skipped: '{folder / 'broken.png'}'" in result.stderr
    assert "look like sentences" in result.stderr and "'A red circle.'" in result.stderr
    assert "overflow" not in result.stderr


def test_an_out_folder_with_files_zstag_did_not_write_is_refused_untouched(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "tags": ["cat"]}) + "\n")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"mine": true}\n')
    code, lines = without_torch("train", "m.jsonl", "--method", "lesa", "--out", "notes", cwd=tmp_path)
    assert code == 2 and any("--out notes holds files but no model zstag wrote" in line for line in lines)
    assert (foreign / "config.json").read_text() == '{"mine": true}\n'


def test_a_trained_model_in_out_is_replaced_only_with_force_and_never_a_downloaded_one(tmp_path):
    """A second `zstag train --out M` silently replaced the first model, even one in the download
    cache that `hf://` names; now --force (or --resume) says what to do with it."""
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "tags": ["cat"]}) + "\n")
    model = tmp_path / "m"
    model.mkdir()
    config = '{"zstag_version": "0.1.0", "method": "lesa"}\n'
    (model / "config.json").write_text(config)
    code, lines = without_torch("train", "m.jsonl", "--method", "lesa", "--out", "m", cwd=tmp_path)
    assert code == 2 and any("add --force to replace it, or --resume" in line for line in lines), lines
    assert (model / "config.json").read_text() == config
    cached = tmp_path / "cache" / "hub" / "models--me--t" / "snapshots" / "abc"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text(config)
    result = zstag(
        "train",
        "m.jsonl",
        "--method",
        "lesa",
        "--out",
        str(cached),
        "--force",
        cwd=tmp_path,
        env={"ZSTAG_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 2 and "which train never rewrites" in result.stderr, result.stderr
    assert (cached / "config.json").read_text() == config
