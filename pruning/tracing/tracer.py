"""A torch.fx tracer with leaf modules given by type or instance, and soft tracing.

Soft tracing: when the forward of a submodule cannot be traced symbolically (data-dependent control
flow, unsupported Python), that submodule becomes a leaf (an opaque call in the graph, whose channels
the analysis then treats as unprunable) and a warning names it. Without soft tracing the first such
failure is raised as a :class:`TracingError` naming the module and the reason.
"""
from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch import fx, nn

#: Modules from outside ``torch.nn`` that the rule registry handles as a whole.
_EXTRA_LEAF_TYPES: tuple[type, ...] = ()
try:  # torchvision is optional; its StochasticDepth keeps its train/eval behaviour as a leaf.
    from torchvision.ops import StochasticDepth

    _EXTRA_LEAF_TYPES = (StochasticDepth,)
except ImportError:  # pragma: no cover - torchvision is installed in development
    pass


class TracingError(RuntimeError):
    """The model (or one of its submodules) cannot be traced with torch.fx."""


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...] = (), leaf_ids: set[int] | None = None) -> None:
        super().__init__()
        self.leaf_types = leaf_types + _EXTRA_LEAF_TYPES
        self.leaf_ids = leaf_ids or set()
        self.failed_module: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if id(m) in self.leaf_ids or isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:  # the innermost module sees the error first
                self.failed_module = self.path_of_module(m)
            raise


def trace_model(
    model: nn.Module,
    leaf_modules: Iterable[type | nn.Module] | None = None,
    soft_tracing: bool = True,
) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule whose submodules are the model's own (not copies)."""
    leaf_types: list[type] = []
    leaf_ids: set[int] = set()
    for item in leaf_modules or ():
        if isinstance(item, type) and issubclass(item, nn.Module):
            leaf_types.append(item)
        elif isinstance(item, nn.Module):
            leaf_ids.add(id(item))
        else:
            raise TypeError(
                f"leaf_modules must hold nn.Module subclasses or instances, got {item!r}"
            )
    modules = dict(model.named_modules())
    while True:
        tracer = _Tracer(tuple(leaf_types), leaf_ids)
        try:
            graph = tracer.trace(model)
            break
        except Exception as error:  # noqa: BLE001 - re-raised with context below
            name = tracer.failed_module
            if name is None or not soft_tracing:
                where = f"submodule '{name}' ({type(modules[name]).__name__})" if name else (
                    f"the forward of {type(model).__name__} itself"
                )
                hint = (
                    "pass it in leaf_modules or use soft_tracing=True"
                    if name
                    else "make the top-level forward traceable (no control flow on tensor values)"
                )
                raise TracingError(
                    f"torch.fx cannot trace {where}: {type(error).__name__}: {error}; {hint}"
                ) from error
            leaf_ids.add(id(modules[name]))
            warnings.warn(
                f"soft tracing: submodule '{name}' ({type(modules[name]).__name__}) cannot be "
                f"traced ({type(error).__name__}: {error}); it is kept as a leaf and its channels "
                "are treated as unprunable",
                stacklevel=3,
            )
    graph_module = fx.GraphModule(tracer.root, graph, type(model).__name__)
    graph_module.meta["leaf_ids"] = leaf_ids
    return graph_module
