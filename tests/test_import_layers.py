"""The package's modules import in one direction, and each imports on its own.

Layers, lowest first: foundations (modules that import nothing else from the package), the rule registry,
tracing, channel propagation, the rules themselves, surgery and compensation, the IR, then criteria,
selectors and what uses the IR. A module may import its own layer and the layers below it, at module
level; the package's ``__init__`` gathers the public names from all of them.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pruning"

LAYERS: list[tuple[str, ...]] = [
    ("pruning.nodes", "pruning.pruned_modules", "pruning.labels", "pruning.latency"),
    ("pruning.registry",),
    ("pruning.tracing",),
    ("pruning.channels",),
    ("pruning.rules",),
    ("pruning.compensation", "pruning.surgery"),
    ("pruning.ir",),
    ("pruning.criterion", "pruning.magnitude", "pruning.selectors", "pruning.replay", "pruning.verify"),
]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} has no layer: add it to LAYERS in {Path(__file__).name}")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    # ``from . import rules`` imports a module; ``from .x import name`` imports x
    names = [f"{base}.{a.name}" for a in node.names] if node.module is None else [base]
    return [n for n in names if n == "pruning" or n.startswith("pruning.")]


def module_level_imports(module: str, path: Path) -> set[str]:
    """The package's modules that ``module`` imports when it is executed (not under TYPE_CHECKING, not
    inside functions)."""
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for st in statements:
            if isinstance(st, ast.If) and "TYPE_CHECKING" in ast.unparse(st.test):
                continue
            if isinstance(st, ast.ImportFrom):
                found.update(_resolve(module, path.name == "__init__.py", st))
            elif isinstance(st, ast.Import):
                found.update(a.name for a in st.names if a.name.startswith("pruning"))
            elif isinstance(st, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for item in getattr(st, block, []):
                        visit(item.body if isinstance(item, ast.ExceptHandler) else [item])
    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m != module}


def test_every_module_has_a_layer_and_foundations_import_nothing_from_the_package():
    for module, path in modules().items():
        if module == "pruning":
            continue
        if layer(module) == 0:
            assert not module_level_imports(module, path), f"{module} is a foundation and imports the package"


def test_module_level_imports_go_down_the_layers():
    wrong = []
    for module, path in modules().items():
        if module == "pruning":
            continue
        for target in module_level_imports(module, path):
            if target != "pruning" and layer(target) > layer(module):
                wrong.append(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_module_level_imports_have_no_cycle():
    graph = {m: {t for t in module_level_imports(m, p) if t != "pruning"} for m, p in modules().items()
             if m != "pruning"}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_library_never_imports_the_pipeline():
    for module, path in modules().items():
        imported = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in imported if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in imported if isinstance(n, ast.ImportFrom) and n.level == 0]
        assert not [n for n in names if n == "stages" or n.startswith("stages.")], module


# Each module imported in a fresh copy of an interpreter that has loaded torch (a forked child): once
# as users do (``import pruning.x``, which runs the package's __init__ first), once on its own, with the
# package's __init__ bypassed, so that a module that works only because __init__ imported something
# else first fails here.
_IMPORT_EACH = r"""
import importlib, os, sys, types
import torch, torch.fx, torchvision  # noqa: F401  (loaded once, shared by the children)
root, names = sys.argv[1], sys.argv[2:]
failed = []
for name in names:
    for bypass in (False, True):
        pid = os.fork()
        if pid == 0:
            try:
                if bypass:
                    stub = types.ModuleType("pruning")
                    stub.__path__ = [os.path.join(root, "pruning")]
                    sys.modules["pruning"] = stub
                importlib.import_module(name)
                os._exit(0)
            except BaseException as e:
                print(f"{name} ({'on its own' if bypass else 'as users import it'}): {type(e).__name__}: {e}",
                      flush=True)
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        if status:
            failed.append(name)
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks one child per module")
def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(modules())
    result = subprocess.run([sys.executable, "-c", _IMPORT_EACH, str(ROOT), *names], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
