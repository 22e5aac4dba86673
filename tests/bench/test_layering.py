"""The core never imports a plugin: no module of src/bench (outside methods/, refiners/, datasets/)
imports bench.methods, bench.refiners or bench.datasets (an AST scan of every import)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bench

ROOT = Path(bench.__file__).parent
PLUGINS = ("bench.methods", "bench.refiners", "bench.datasets")
ALLOWED: tuple[Path, ...] = ()  # folders of the core allowed to import a plugin: none


def core_modules() -> list[Path]:
    plugin_dirs = [ROOT / name.split(".")[1] for name in PLUGINS]
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(d in p.parents for d in plugin_dirs) and not any(a in p.parents for a in ALLOWED))


def imported(path: Path, source: str | None = None) -> list[str]:
    """Every module name ``path`` (or ``source`` as if it were there) imports, relative imports
    resolved against its package."""
    package = ".".join(("bench", *path.relative_to(ROOT).parent.parts))
    names = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def plugin_imports(path: Path, source: str | None = None) -> list[str]:
    return sorted({n for n in imported(path, source) if any(n == p or n.startswith(p + ".") for p in PLUGINS)})


def test_the_scan_sees_the_core_and_finds_plugin_imports():
    names = {p.relative_to(ROOT).as_posix() for p in core_modules()}
    assert {"api.py", "cli/__init__.py", "cli/_run.py", "plan.py", "runner.py", "registry.py", "embedded/__init__.py"} <= names
    assert not any(n.startswith(("methods/", "refiners/", "datasets/")) for n in names)
    source = "from bench import methods\nimport bench.refiners.ard\nfrom ..datasets import folder\n"
    tree_names = plugin_imports(ROOT / "embedded" / "probe.py", source)  # parsed, never written
    assert tree_names == ["bench.datasets", "bench.datasets.folder", "bench.methods", "bench.refiners.ard"]


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_core_module_imports_a_plugin(path):
    assert plugin_imports(path) == [], f"{path.relative_to(ROOT)} imports a plugin"
