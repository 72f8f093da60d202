"""Ships the top-level `weights/` folder inside the wheel, as the package data `zstag/weights/`.

`weights/` stays at the repository's top level (the registry of fetchable weights, the bundled
backbone and the default model); every other setting is in pyproject.toml. At run time
`zstag.core.paths.WEIGHTS_DIR` finds `zstag/weights` through `importlib.resources` in an installed
wheel, and the top-level folder in a source checkout or an editable install (where nothing is copied).
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "weights"
SKIP = ("__pycache__", "*.py[co]", ".*")


def weight_files() -> list[Path]:
    """The files of weights/ that ship (relative paths), without caches or hidden files."""
    return sorted(
        p.relative_to(WEIGHTS)
        for p in WEIGHTS.rglob("*")
        if p.is_file() and not any(fnmatch.fnmatch(part, pat) for part in p.relative_to(WEIGHTS).parts for pat in SKIP)
    )


class BuildPyWithWeights(build_py):
    """build_py, then copy weights/ to <build_lib>/zstag/weights (not in editable mode)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the source tree's weights/ directly
        if not WEIGHTS.is_dir():
            raise SystemExit(f"weights/ not found beside setup.py ({WEIGHTS}): it must ship in the wheel")
        target = Path(self.build_lib) / "zstag" / "weights"
        if target.exists():
            shutil.rmtree(target)  # no stale files from an earlier build
        shutil.copytree(WEIGHTS, target, ignore=shutil.ignore_patterns(*SKIP))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False) and WEIGHTS.is_dir():
            target = Path(self.build_lib) / "zstag" / "weights"
            outputs += [str(target / rel) for rel in weight_files()]
        return outputs


setup(cmdclass={"build_py": BuildPyWithWeights})
