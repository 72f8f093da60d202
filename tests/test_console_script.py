"""The command line as users meet it: the installed `zstag` console script, in a subprocess.

An in-process runner maps exceptions itself and hid exit-code bugs; these run the real entry point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
ZSTAG = shutil.which("zstag")
pytestmark = pytest.mark.skipif(ZSTAG is None, reason="the zstag console script is not installed")


def zstag(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ZSTAG, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


@pytest.mark.parametrize(
    "args, names",
    [
        (["tagg"], ["No such command 'tagg'", "Did you mean 'tag'"]),
        (["tag", str(EXAMPLES / "photos"), "--labels", str(EXAMPLES / "vocab.txt"), "--top-k", "-1"], ["'--top-k'"]),
        (
            ["tag", str(EXAMPLES / "photos"), "--labels", str(EXAMPLES / "vocab.txt"), "--threshold", "1.5"],
            ["'--threshold'"],
        ),
        (
            ["tag", str(EXAMPLES / "photos"), "--labels", str(EXAMPLES / "vocab.txt"), "--batch-size", "0"],
            ["'--batch-size'"],
        ),
        (["train"], ["Missing argument", "data"]),
        (["tag", "x.jpg", "--labels", "v.txt", "--no-such-option"], ["No such option: --no-such-option"]),
        (["tag", str(EXAMPLES / "photos"), "--labels", "missing.txt"], ["missing.txt"]),
        (["eval", "--truth", "t.jsonl", "--k", "x"], ["--k"]),
        (
            ["tag", str(EXAMPLES / "photos"), "--labels", str(EXAMPLES / "vocab.txt"), "-f", "xmp", "-o", "t.xmp"],
            ["--output does not apply to --format xmp"],
        ),
    ],
)
def test_bad_usage_exits_2_with_one_line_naming_the_option(args, names, tmp_path):
    result = zstag(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0]
    assert "Error" not in lines[0].split(":", 1)[1]  # no class names such as BadParameter or UsageError
    assert result.stdout == ""


def test_bare_zstag_prints_help_and_exits_0(tmp_path):
    result = zstag(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: zstag") and "tag" in result.stdout and result.stderr == ""


def test_quiet_and_verbose_work_after_the_command(tmp_path):
    # The session's cache (the label vectors of the examples' vocabulary are computed once for the
    # tests here); the quiet run goes first, so that it is the one computing them when none are cached.
    args = ["tag", str(EXAMPLES / "photos" / "car.jpg"), "--labels", str(EXAMPLES / "vocab.txt"), "--top-k", "1"]
    quiet = zstag(*args, "-q", cwd=tmp_path)
    loud = zstag(*args, cwd=tmp_path)
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "tagged 1 image" in loud.stderr and quiet.stderr == ""
    assert quiet.stdout == loud.stdout and '"image"' in quiet.stdout


@pytest.mark.parametrize(
    "words, expected",
    [
        ("zstag train d --method ", {"lesa", "sgma", "rgcn-posvae", "ml2p", "fast0tag", "conse"}),
        ("zstag tag x --format ", {"jsonl", "csv", "tsv", "txt", "xmp"}),
        ("zstag tag x --device ", {"auto", "cpu", "cuda"}),
        ("zstag train d --backbone res", {"resnet50", "resnet101"}),
        ("zstag tag x --model ", {"default"}),
    ],
)
def test_shell_completion_offers_values(words, expected, tmp_path):
    current = len(words.split()) - (0 if words.endswith(" ") else 1)  # the index of the word being completed
    env = {"_ZSTAG_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(current)}
    result = zstag(cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert expected <= set(result.stdout.split()), result.stdout


def test_a_threshold_nothing_reaches_says_so(tmp_path):
    """Empty tags for every image, exit 0 and silence used to be all a new user saw."""
    args = ["tag", str(EXAMPLES / "photos" / "car.jpg"), "--labels", str(EXAMPLES / "vocab.txt"), "--top-k", "0"]
    result = zstag(*args, "--threshold", "0.999", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"tags": []' in result.stdout
    assert "1 of 1 image(s) got no tag" in result.stderr and "the highest was 0." in result.stderr


def test_a_per_label_threshold_outside_0_1_is_refused_for_a_calibrated_model(tmp_path):
    (tmp_path / "strict.tsv").write_text("horse\t30\n")  # meant 30%
    args = [
        "tag",
        str(EXAMPLES / "photos" / "horse.jpg"),
        "--labels",
        str(EXAMPLES / "vocab.txt"),
        "--thresholds",
        "strict.tsv",
    ]
    refused = zstag(*args, cwd=tmp_path)
    assert refused.returncode == 2 and "'horse' has 30, not a probability in [0, 1]" in refused.stderr
    assert refused.stdout == ""
    assert zstag(*args, "--raw-scores", cwd=tmp_path).returncode == 0


def test_help_names_every_backbone_semantics_and_registry_entry(tmp_path):
    """The help texts listed neither small-resnet nor the CLIP models the README recommends."""
    import json
    import re

    from zstag.backbones import BACKBONES
    from zstag.store import SEMANTICS_NAMES

    def text(*args: str) -> str:  # help wraps lines, also after a hyphen ("clip-\n vit-b32")
        return re.sub(r"-\s+", "-", " ".join(zstag(*args, "--help", cwd=tmp_path).stdout.split()))

    train_help = text("train")
    assert all(name in train_help for name in (*BACKBONES, *SEMANTICS_NAMES))
    fetch_help = text("fetch")
    assert all(name in fetch_help for name in json.loads((ROOT / "weights" / "registry.json").read_text()))


def test_a_reader_that_stops_early_ends_the_run_quietly_with_141(tmp_path):
    """`zstag tag ... | head -1`: exit 141 (as SIGPIPE would end `cat`) and nothing on stderr; it was 1."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(48):
        shutil.copy(EXAMPLES / "photos" / "car.jpg", photos / f"c{i:02d}.jpg")
    run = subprocess.Popen(
        [ZSTAG, "tag", str(photos), "--labels", str(EXAMPLES / "vocab.txt"), "--batch-size", "4"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.stdout is not None and run.stderr is not None
    assert run.stdout.readline().startswith(b'{"image"')
    run.stdout.close()
    assert run.wait(timeout=120) == 141
    assert run.stderr.read().decode() == ""
