"""Record the shape of every value in a traced graph with one forward pass."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from ..nodes import get_tensor
from ..registry import CONSERVATIVE, overrides, registered, rule_for
from .recorded import helper_call
from .state import evaluated


def shape_of(value: Any) -> Any:
    """``torch.Size`` for a tensor, a list for a tuple/list of values, None otherwise."""
    if isinstance(value, (torch.Tensor, _Shaped)):
        return value.shape
    if isinstance(value, (tuple, list)):
        return [shape_of(v) for v in value]
    return None


def bind_inputs(graph: fx.Graph, args: tuple, kwargs: dict) -> tuple:
    """Order positional and keyword inputs as the graph's placeholders expect them."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    values, rest = [], list(args)
    for node in placeholders:
        name = str(node.target).lstrip("*")
        if name in kwargs:
            values.append(kwargs[name])
        elif rest:
            values.append(rest.pop(0))
        elif node.args:
            values.append(node.args[0])
        else:
            raise TypeError(f"the model's forward is missing its input '{name}'")
    if rest:
        raise TypeError(f"the model's forward takes {len(placeholders)} inputs, got {len(args)}")
    return tuple(values)


class _Shaped:
    """A tensor known only by its shape, dtype and device: what a module with ``Rule.output_shape``
    returns in the fake pass. It becomes an empty fake tensor only when an op needs a tensor, so a chain
    of such modules (conv, norm, activation...) creates none."""

    __slots__ = ("shape", "dtype", "device", "_tensor")

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.shape, self.dtype, self.device = torch.Size(shape), dtype, device
        self._tensor: torch.Tensor | None = None

    def materialize(self) -> torch.Tensor:
        # One tensor per value, as in a real run: ops that test identity (attention called with the
        # same tensor as query, key and value takes its packed path) see what they would see.
        if self._tensor is None:
            self._tensor = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        return self._tensor


def _materialize(value: Any) -> Any:
    """``value`` with its shape placeholders made tensors, in the plain containers of node arguments; any other
    object is passed as it is (a Hugging Face ``ModelOutput`` a leaf returned stays one, not a plain dict)."""
    if isinstance(value, _Shaped):
        return value.materialize()
    kind = type(value)
    if kind in (tuple, list, fx.immutable_collections.immutable_list):
        return tuple(_materialize(v) for v in value) if kind is tuple else [_materialize(v) for v in value]
    if kind in (dict, fx.immutable_collections.immutable_dict):
        return {k: _materialize(v) for k, v in value.items()}
    return value


def _last_uses(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the values whose last reader it is (they can be dropped once it ran)."""
    seen: set[fx.Node] = set()
    out: dict[fx.Node, list[fx.Node]] = {}
    for node in reversed(graph.nodes):
        for used in node.all_input_nodes:
            if used not in seen:
                seen.add(used)
                out.setdefault(node, []).append(used)
    return out


def _run(root: nn.Module, graph: fx.Graph, inputs: tuple, fake: bool) -> None:
    """Run the graph node by node and store every node's output shape in ``node.meta``.

    A lean interpreter (the pass's cost is per node). On fake tensors it avoids fake-tensor dispatch
    where it can, since that dominates: a module whose rule knows its output shape
    (``Rule.output_shape``) is not run and returns a ``_Shaped``, and so do function and method
    calls whose rule knows theirs (``Rule.call_shape``) and parameters read by ``get_attr``; ``_Shaped`` values become fake tensors only when an op needs them. Values are dropped
    after their last use, so a real run holds no more activations than the model's own forward.
    """
    modules = dict(root.named_modules())
    last_uses = _last_uses(graph)
    env: dict[fx.Node, Any] = {}
    positional = iter(inputs)
    for node in graph.nodes:
        value = next(positional) if node.op == "placeholder" else evaluate(node, env, root, modules, fake)
        node.meta["pruning_shape"] = shape_of(value)
        if type(value) is int:  # a dim computed from sizes (``x.dim()``) read by a rule's normalize_dim
            node.meta["pruning_int"] = value
        env[node] = value
        for done in last_uses.get(node, ()):
            del env[done]


def evaluate(node: fx.Node, env: dict[fx.Node, Any], root: nn.Module, modules: dict[str, nn.Module],
             fake: bool) -> Any:
    """The value of one node (not a placeholder) given the values ``env`` of the nodes it reads."""
    if node.op == "get_attr":
        value = get_tensor(root, node.target)
        if fake and isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
            value = _Shaped(value.shape, value.dtype, value.device)
        return value
    args = fx.node.map_arg(node.args, env.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
    if node.op == "output":
        return args[0]
    if node.op == "call_module":
        return _call_module(modules[node.target], args, kwargs, fake)
    if fake and (shaped := _call_shape(node, args, kwargs)) is not None:
        return shaped
    if registered(node, None) is not None and node.target is not helper_call:
        return _call(node, args, kwargs)
    # An opaque call: the model's tensors and submodules it uses (pruning.registry.keep_read). Only here: replacing
    # nn.Module.__getattr__ invalidates the attribute caches of every module class.
    with module_reads() as reads:
        value = _call(node, args, kwargs)
    paths = {id(m): path for path, m in modules.items()} if reads else {}
    node.meta["pruning_module_reads"] = sorted({f"{paths[id(m)]}.{name}".lstrip(".") for m, name in reads
                                                if id(m) in paths})
    return value


def _call(node: fx.Node, args: tuple, kwargs: dict) -> Any:
    if node.op == "call_function":
        return node.target(*_materialize(args), **_materialize(kwargs))
    obj, *rest = _materialize(args)
    return getattr(obj, node.target)(*rest, **_materialize(kwargs))


@contextlib.contextmanager
def module_reads() -> Iterator[list[tuple[nn.Module, str]]]:
    """The parameters, buffers and submodules read through ``module.name`` for the duration, as (module,
    name): ``nn.Module.__getattr__`` serves exactly those (other attributes are found without it)."""
    reads: list[tuple[nn.Module, str]] = []
    original = nn.Module.__getattr__

    def __getattr__(module: nn.Module, name: str) -> Any:
        value = original(module, name)
        reads.append((module, name))
        return value

    nn.Module.__getattr__ = __getattr__
    try:
        yield reads
    finally:
        nn.Module.__getattr__ = original


def _call_shape(node: fx.Node, args: tuple, kwargs: dict) -> "_Shaped | None":
    """A function or method call's output as a ``_Shaped``, when its rule knows the shape
    (``Rule.call_shape``) and its tensor arguments share one dtype and device."""
    rule = rule_for(node.target, by_name=False)
    if rule is None or not overrides(rule, "call_shape"):
        return None
    tensors = [a for a in args if isinstance(a, (torch.Tensor, _Shaped))]
    if not tensors or any(isinstance(v, (torch.Tensor, _Shaped)) for v in kwargs.values()) or \
            len({(t.dtype, t.device) for t in tensors}) != 1:
        return None
    shape = rule.call_shape(node.target, args, kwargs)
    return None if shape is None else _Shaped(shape, tensors[0].dtype, tensors[0].device)


def _call_module(module: nn.Module, args: tuple, kwargs: dict, fake: bool) -> Any:
    if fake and len(args) == 1 and not kwargs and isinstance(args[0], (torch.Tensor, _Shaped)):
        x = args[0]
        shape = (rule_for(type(module), by_name=False) or CONSERVATIVE).output_shape(module, x.shape)
        # A dtype or device mismatch would fail for real: run the module to raise its own error. Hooks
        # may change inputs or outputs: run the module so that they do.
        if shape is not None and not module._forward_hooks and not module._forward_pre_hooks \
                and all(p.dtype == x.dtype and p.device == x.device
                        for p in module._parameters.values() if p is not None):
            return x if tuple(shape) == tuple(x.shape) else _Shaped(shape, x.dtype, x.device)
    return module(*_materialize(args), **_materialize(kwargs))


def record_shapes(root: nn.Module, args: tuple, kwargs: dict, graph: fx.Graph | None = None) -> None:
    """Run the graph once without gradients and in eval mode, storing shapes in ``node.meta``.

    ``root`` is a GraphModule, or with ``graph`` the module whose submodules the graph's targets name.

    The pass runs on fake tensors (shapes only, no arithmetic), skipping modules whose output shape
    their rule computes, which makes it nearly free; an op without a fake-tensor implementation
    makes it run again on the real inputs. Eval mode keeps
    BatchNorm statistics untouched and lets batch-size-1 inputs through; the modes of all modules are
    restored afterwards (a model already in eval mode is left as it is), and so is whatever the
    forwards assign to their modules (see :mod:`pruning.tracing.state`).
    """
    graph = root.graph if graph is None else graph
    inputs = bind_inputs(graph, args, kwargs)
    with evaluated(root):
        try:
            with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                fake_inputs = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in inputs)
                _run(root, graph, fake_inputs, fake=True)
        except Exception:  # noqa: BLE001 - some op has no fake kernel: measure for real
            _run(root, graph, inputs, fake=False)
