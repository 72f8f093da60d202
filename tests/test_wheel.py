"""A non-editable install works: the wheel carries weights/ as zstag/weights (the registry, the bundled
backbone, the default model) and nothing else beside the package, and an installed copy lists the
registry and tags offline from a directory outside the source tree.

The source tree is copied first (without build outputs), so that a stale build/ folder cannot leak
into the wheel and the build writes nothing into the checkout; the wheel is installed with
`pip install --target` and run with that target first on PYTHONPATH and cwd outside the source.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("setuptools")  # the build runs without isolation, on the installed setuptools

REPO = Path(__file__).resolve().parent.parent
SHIPPED = (
    "zstag/weights/registry.json",
    "zstag/weights/bundled/model.safetensors",
    "zstag/weights/bundled/config.json",
    "zstag/weights/default/model.safetensors",
    "zstag/weights/default/config.json",
)
NOT_COPIED = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "*.py[co]",
    ".venv",
    ".pytest_cache",
    ".device",
    ".whl",
    "bench-data",
)


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            *args,
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--no-input",
            "-q",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"pip {args[0]} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build the wheel from a copy of the source tree and install it into a fresh target folder."""
    base = tmp_path_factory.mktemp("wheel")
    src, dist, target, work = base / "src", base / "dist", base / "target", base / "work"
    shutil.copytree(REPO, src, ignore=NOT_COPIED, symlinks=True)
    _pip("wheel", "-w", str(dist), str(src), cwd=base)
    wheels = sorted(dist.glob("zstag-*.whl"))
    assert len(wheels) == 1, wheels
    _pip("install", "--target", str(target), str(wheels[0]), cwd=base)
    work.mkdir()
    shutil.copytree(REPO / "docs" / "examples" / "photos", work / "photos")
    shutil.copy(REPO / "docs" / "examples" / "vocab.txt", work / "vocab.txt")
    return {"wheel": wheels[0], "target": target, "work": work, "cache": base / "cache"}


def _run(installed: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZSTAG_REGISTRY", "PYTHONHOME", "PYTHONSAFEPATH")
    }
    env.update(
        PYTHONPATH=str(installed["target"]),
        HF_HUB_OFFLINE="1",
        ZSTAG_CACHE=str(installed["cache"]),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return subprocess.run(
        [sys.executable, *args], cwd=installed["work"], env=env, capture_output=True, text=True, timeout=300
    )


def test_wheel_ships_weights_inside_the_package_only(installed):
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        names = wheel.namelist()
    for name in SHIPPED:
        assert name in names, f"{name} missing from the wheel"
    tops = {name.split("/", 1)[0] for name in names}
    assert all(top == "zstag" or top.endswith(".dist-info") for top in tops), tops  # no top-level weights/
    assert not any(n.startswith(("weights/", "tools/", "tests/")) for n in names)
    assert not (installed["target"] / "weights").exists()
    assert not (installed["target"] / "tools").exists()
    assert not (installed["target"] / "tests").exists()


def test_installed_copy_imports_from_the_target(installed):
    done = _run(
        installed,
        "-c",
        "import json, zstag, zstag.core.paths as p; print(json.dumps([zstag.__file__, str(p.WEIGHTS_DIR)]))",
    )
    assert done.returncode == 0, done.stderr
    module, weights = json.loads(done.stdout)
    target = installed["target"].resolve()
    assert Path(module).resolve().is_relative_to(target), module
    assert Path(weights).resolve() == target / "zstag" / "weights", weights


def test_installed_fetch_list(installed):
    done = _run(installed, "-m", "zstag", "fetch", "--list")
    assert done.returncode == 0, done.stderr
    names = {line.split("\t", 1)[0] for line in done.stdout.splitlines() if line.strip()}
    assert {"vgg19", "minilm"} <= names, done.stdout


def test_installed_tag_offline(installed):
    done = _run(installed, "-m", "zstag", "tag", "photos", "--labels", "vocab.txt", "--top-k", "3")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    photos = sorted(p.name for p in (installed["work"] / "photos").iterdir())
    assert sorted(Path(r["image"]).name for r in rows) == photos
    labels = {
        line.strip()
        for line in (installed["work"] / "vocab.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    for row in rows:
        assert 1 <= len(row["tags"]) <= 3
        assert all(tag["label"] in labels and 0.0 <= tag["score"] <= 1.0 for tag in row["tags"])
