"""Small helpers on fx call nodes and the values the shape pass records: arguments, dims, sizes and the
tensors that ``get_attr`` targets name.

Every layer needs these (tracing, channel propagation, rules, compensation), so this module imports
nothing else from the package.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import fx, nn


def target_name(node: fx.Node) -> str:
    """The name of what a call node calls: a method name, or a function's ``__name__``."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def normalize_dim(dim: int | fx.Node, ndim: int) -> int:
    """A non-negative dimension index; a dim computed at run time (``torch.stack(xs, dim=x.dim())``) is the
    example input's, which pruning does not change (the shape pass records it)."""
    if isinstance(dim, fx.Node):
        if "pruning_int" not in dim.meta:
            raise TypeError(f"the dim argument {dim.name} has no recorded value: run the shape pass first")
        dim = dim.meta["pruning_int"]
    return dim + ndim if dim < 0 else dim


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Positional-or-keyword argument of a call node."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def flatten_args(values: Iterable[Any]) -> list[Any]:
    """All leaves of nested tuples/lists/dicts of arguments."""
    out: list[Any] = []
    for v in values:
        if isinstance(v, (tuple, list)):
            out.extend(flatten_args(v))
        elif isinstance(v, dict):
            out.extend(flatten_args(v.values()))
        else:
            out.append(v)
    return out


def is_size(shape: Any) -> bool:
    """True if a recorded shape is a tensor's shape."""
    return isinstance(shape, torch.Size)


def get_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter, buffer or tensor attribute at a qualified name."""
    owner, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)
