"""What the README promises a new user, kept true to the project's own files."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_the_cpu_only_install_uses_the_pinned_torch_pair():
    """Issue 18 item 9: the README shows the CPU-only torch install, with the versions constraints.txt pins
    (a README that drifted from the pins would install a pair the tests never ran)."""
    command = next(line for line in README.splitlines() if "download.pytorch.org/whl/cpu" in line)
    wanted = pins()
    assert f"torch=={wanted['torch']}" in command and f"torchvision=={wanted['torchvision']}" in command
    assert "pip install -c constraints.txt -e ." in command


def test_the_readme_test_command_is_what_ci_runs():
    """Issue 23: .ci/run runs exactly the README's test command, no extra step."""
    ci = [
        line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines() if line and line[0] not in "#"
    ]
    command = ci[-1]
    assert command in README and "python -m pytest -q" in command
    assert [line for line in ci[:-1] if not line.startswith(("set ", "cd "))] == []


def test_every_documented_subcommand_exists():
    from zstag.commands import COMMANDS

    names = {module.NAME for module in COMMANDS}
    used = set(re.findall(r"^zstag (\w+)", README, flags=re.M))
    assert used and used <= names, used - names
