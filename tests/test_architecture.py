"""The layering of docs/architecture.md, checked on the source: who may import whom, and no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zstag"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """zstag modules imported by a file (`from zstag.x import y` counts x.y when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also imports under `if TYPE_CHECKING:` are not run: leave them out
        nodes = [n for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("zstag")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zstag"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in MODULES}
    return {name for name in found if name in MODULES}


FILES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
MODULES = set(FILES)


def test_no_library_module_imports_the_command_layer():
    library = {
        name: path
        for name, path in FILES.items()
        if not name.startswith(("zstag.commands", "zstag.cli", "zstag.__main__"))
    }
    offenders = {
        name: sorted(i for i in imports(path, top_level_only=False) if i.startswith(("zstag.commands", "zstag.cli")))
        for name, path in library.items()
    }
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("zstag.core", ("zstag.",)),  # the floor: nothing of zstag beneath it but itself
        ("zstag.store.hub", ("zstag.methods", "zstag.training", "zstag.engine")),  # files and checksums only
        ("zstag.methods", ("zstag.training", "zstag.engine", "zstag.jobs", "zstag.store")),
        ("zstag.engine", ("zstag.training", "zstag.jobs", "zstag.store")),
    ],
)
def test_lower_layers_do_not_reach_up(package, forbidden):
    for name, path in FILES.items():
        if name != package and not name.startswith(package + "."):
            continue
        reached = {i for i in imports(path, top_level_only=False) if i.startswith(forbidden)}
        if package == "zstag.core":
            reached = {i for i in reached if not i.startswith("zstag.core")}
        if package == "zstag.methods":  # a method may reach its own package's modules, nothing above
            reached = {i for i in reached if not i.startswith("zstag.methods")}
        assert not reached, f"{name} imports {sorted(reached)}"


def test_no_import_cycle_at_module_level():
    graph = {name: imports(path, top_level_only=True) - {name} for name, path in FILES.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(name) :] + [name]))
        if name in done:
            return
        for other in sorted(graph.get(name, ())):
            if other.startswith(name + "."):
                continue  # a package importing its own submodules in __init__ is not a cycle
            visit(other, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
