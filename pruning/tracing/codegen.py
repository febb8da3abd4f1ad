"""Faster generated code for our GraphModules: each submodule path the forward reaches more than once is
looked up once per call.

fx writes every ``call_module`` as the full path from ``self`` (``self.layer1.conv1(x)``,
``getattr(self.features, "0")(x)``), so a block's five calls repeat five lookups of the block through
``nn.Module.__getattr__`` that the eager forward does once (``self.conv1`` inside the block). At batch 1
that Python overhead is a few percent of the forward of a small model (DigitsResNet, ResNet-18 at 64x64,
DenseNet-121: 2-5%, ``benchmarks/forward_overhead.py``), which a pruned model should not pay. The body
transformer below binds each such path to a local at the top of the forward and writes the calls through
it (``_layer1 = self.layer1`` ... ``_layer1.conv1(x)``).

What the code computes is unchanged: the lookups still happen on every call (a submodule replaced between
calls is the one used), only leaf targets' containers are bound (never a parameter or buffer read by a
``get_attr``), and the graph itself is untouched, so analysis, pickling (fx re-traces the code) and
``torch.jit.script`` see the same model. A body line that does not parse on its own leaves the code as
fx wrote it.
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from typing import Callable

from torch import fx

_COUNTER = re.compile(r"^\s*# COUNTER: \d+$")  # fx's node-index markers, removed after the transformer
Path = tuple[str, ...]


def hoist_module_lookups(graph: fx.Graph) -> None:
    """Make code generated from ``graph`` look up repeated submodule paths once per call (idempotent)."""
    graph.on_generate_code(lambda previous: previous if isinstance(previous, ModuleLookups)
                           else ModuleLookups(previous))


class ModuleLookups:
    """fx body transformer (``Graph.on_generate_code``) that binds repeated submodule paths to locals.

    A module-level class rather than a closure: the graph's code generator, and so this object, is
    deep-copied with the graph and pickled with an IR snapshot.
    """

    def __init__(self, previous: Callable[[list[str]], list[str]] | None = None) -> None:
        self.previous = previous

    def __call__(self, body: list[str]) -> list[str]:
        if self.previous is not None:
            body = self.previous(body)
        lines = "".join(body).split("\n")
        occurrences: dict[int, list[tuple[ast.AST, Path]]] = {}
        for number, line in enumerate(lines):
            if line.strip() and not _COUNTER.match(line):
                try:
                    occurrences[number] = _paths_in(ast.parse(line))
                except SyntaxError:
                    return body
        uses = Counter(path[:k] for found in occurrences.values() for _, path in found for k in range(1, len(path)))
        shared = sorted(path for path, count in uses.items() if count > 1)
        if not shared:
            return body
        taken = set(re.findall(r"[A-Za-z_]\w*", "".join(body)))
        local: dict[Path, str] = {}
        for path in shared:  # sorted, so a path's containers are named before it
            name = "_" + "_".join(re.sub(r"\W", "_", part) for part in path)
            while name in taken:
                name += "_"
            taken.add(name)
            local[path] = name

        def expression(path: Path) -> str:
            """``path`` written from its longest bound container (not itself)."""
            for k in range(len(path) - 1, 0, -1):
                if path[:k] in local:
                    return _format(local[path[:k]], path[k:])
            return _format("self", path)

        for number, found in occurrences.items():
            code = lines[number].encode()  # ast offsets count UTF-8 bytes
            for node, path in sorted(found, key=lambda item: -item[0].col_offset):
                code = code[:node.col_offset] + expression(path).encode() + code[node.end_col_offset:]
            lines[number] = code.decode()
        bindings = "; ".join(f"{local[path]} = {expression(path)}" for path in shared)
        return [bindings + "\n", "\n".join(lines)]


def _format(base: str, path: Path) -> str:
    """``base`` followed by ``path`` the way fx writes a target (``getattr`` for non-identifiers)."""
    for part in path:
        base = f"{base}.{part}" if part.isidentifier() else f'getattr({base}, "{part}")'
    return base


def _path(node: ast.AST) -> Path | None:
    """The attribute path from ``self`` that ``node`` reads (``()`` for ``self``), or None."""
    if isinstance(node, ast.Name):
        return () if node.id == "self" else None
    if isinstance(node, ast.Attribute):
        base = _path(node.value)
        return None if base is None else (*base, node.attr)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            and len(node.args) == 2 and not node.keywords and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)):
        base = _path(node.args[0])
        return None if base is None else (*base, node.args[1].value)
    return None


def _paths_in(tree: ast.AST) -> list[tuple[ast.AST, Path]]:
    """The outermost expressions in ``tree`` that read a path from ``self``, with their paths."""
    found = []
    stack = [tree]
    while stack:
        node = stack.pop()
        path = _path(node)
        if path:
            found.append((node, path))
        else:
            stack.extend(ast.iter_child_nodes(node))
    return found
