"""``benchmarks`` is a package run as ``python -m benchmarks.NAME`` from the repository root: its modules
import one another as ``benchmarks.*`` without touching ``sys.path``, and none is named like an installed
or widely installed top-level package (a script directory on ``sys.path`` made ``import coverage`` pick
``benchmarks/coverage.py`` over coverage.py)."""
from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
MODULES = sorted(path.stem for path in BENCHMARKS.glob("*.py") if path.stem != "__init__")
#: Top-level names of tools found in most Python environments though not installed here (coverage.py comes
#: with pytest-cov and most CI images).
WIDELY_INSTALLED = {"coverage"}

IMPORT_ALL = """
import importlib, json, sys
before = list(sys.path)
for name in {modules!r}:
    importlib.import_module("benchmarks." + name)
print(json.dumps({{"path_changed": sys.path != before,
                  "top_level": sorted(set({modules!r}) & set(sys.modules))}}))
"""


def test_every_benchmark_imports_as_a_package_module() -> None:
    """In a fresh interpreter, importing every ``benchmarks.NAME`` leaves ``sys.path`` as it was and loads
    no benchmark as a top-level module (as ``import peer`` after a path insert did)."""
    assert len(MODULES) >= 18, MODULES
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL.format(modules=MODULES)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"path_changed": False, "top_level": []}


def _nodes() -> list[tuple[str, ast.AST]]:
    return [(path.name, node) for path in sorted(BENCHMARKS.glob("*.py")) for node in ast.walk(ast.parse(path.read_text()))]


def test_no_benchmark_touches_sys_path() -> None:
    """Not at import time, nor in a function (a child process's entry point, a lazy import)."""
    touching = [f"{name}:{node.lineno}" for name, node in _nodes()
                if isinstance(node, ast.Attribute) and node.attr == "path"
                and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert touching == []


def test_benchmarks_import_one_another_within_the_package() -> None:
    """Every import of a benchmark module, in a function too (which importing the modules does not run), goes
    through the package: ``from .zoo import ...``, not ``from zoo import ...``."""
    bare = [f"{name}:{node.lineno}" for name, node in _nodes()
            if isinstance(node, ast.Import) and any(alias.name.split(".")[0] in MODULES for alias in node.names)
            or isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in MODULES]
    assert bare == []


def test_no_benchmark_module_shadows_a_package() -> None:
    installed = set(importlib.metadata.packages_distributions())
    taken = installed | set(sys.stdlib_module_names) | WIDELY_INSTALLED
    assert sorted(taken & {*MODULES, "benchmarks"}) == []
