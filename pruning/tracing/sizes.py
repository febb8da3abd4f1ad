"""Branches on tensor sizes during tracing, decided for the example input and guarded in the graph.

torch.fx cannot branch on a traced value (``if x.shape[-1] % self.window:`` fails), so soft tracing used
to keep any module that pads, crops or pools by the input's size opaque, and its channels unprunable.
When the IR is built with an example input, every traced value computed only from tensor sizes
(``x.shape``, ``x.size(d)``, ``x.dim()``, ``x.numel()`` and plain arithmetic on them) or dtypes
(``if x.dtype != self.proj.weight.dtype: x = x.to(...)``) has a known value for that input:
:class:`SizeOracle` computes it on fake copies of the inputs (no arithmetic on data), the tracer takes
the branch the example takes, and a ``torch._assert`` in the graph checks the condition on every later
call. So the graph never silently computes another branch's function: an input that would
take the other branch (another resolution or batch size, where the model's code depends on it) raises an
``AssertionError`` naming the module. Likewise ``len()`` of a traced shape and unpacking it
(``(*x.shape[:-1], -1, head_dim)``, as Hugging Face attention does) take the example's number of dims, with
an assert on it; the sizes themselves stay traced. Conditions on values (``if x.sum() > 0``) stay
untraceable. A dtype condition decided for a float32 example may come out otherwise under autocast or
for inputs of another dtype; its guard then raises: build the IR with inputs of the dtype the model will see.

The guards' ``len`` and ``not`` are the graph ops :func:`size_count` and :func:`negated`, which the tracer
records in every trace: fx traces a GraphModule's generated code again when unpickling it, and a plain
``len()`` of a traced value cannot be traced.

A condition on a channel count reads that channel dim's size, so the analysis keeps those channels
(a size consumed by an op without a size-aware rule blocks its channels): pruning never flips a guard.

Sizes that depend on the data are not decided: the number of boxes a score threshold keeps, the rows of
a ``nonzero`` or an NMS, anything after a ``.item()`` (:meth:`SizeOracle.data_dependent`). A guard on one
would hold for the example's values only, so the traced graph would fail on most other inputs; such a
branch fails to trace as before (soft tracing keeps its module or function opaque).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode
from torch.fx._symbolic_trace import _maybe_revert_all_patches
from torch.utils import _pytree as pytree

from ..registry import registered
from .shapes import bind_inputs, evaluate
from .state import eval_mode

#: Tensor methods and attributes whose result depends only on the tensor's shape (or its dtype).
SIZE_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement", "is_floating_point", "is_complex"})
SIZE_ATTRIBUTES = frozenset({"shape", "ndim", "dtype"})
#: Those that read only the rank or dtype, which no tensor data changes (a box count does not change a rank).
_RANK_METHODS = frozenset({"dim", "ndimension", "is_floating_point", "is_complex"})
_RANK_ATTRIBUTES = frozenset({"ndim", "dtype"})


def size_count(sizes: Any) -> int:
    """``len()`` of a traced shape, as a graph op. Python's ``len`` must return an int, so fx cannot trace a
    ``len`` call again when it rebuilds a GraphModule from its code (unpickling); the tracer auto-wraps
    this function instead, in both traces."""
    return len(sizes)


def negated(condition: Any) -> bool:
    """``not condition`` as a graph op (the guard of a branch not taken), for the reason of :func:`size_count`."""
    return not condition


#: Functions the tracer records as graph ops, whenever it traces (also when unpickling a GraphModule).
GUARD_FUNCTIONS = (size_count, negated)


class SizeOracle:
    """Values of the nodes of a graph under construction, for fake copies of the example inputs.

    Nodes are evaluated once, in graph order, as the tracer asks (``value``); nothing runs until a
    branch needs it, so a model without size branches pays nothing. When an op has no fake-tensor
    kernel (the grouped matmul of a mixture of experts), the oracle starts again on the real example
    inputs, as the shape pass does: otherwise that one op would leave every later size unknown, and every
    later block with a size branch opaque.

    ``as_before``: a context in which the model's modules hold the attributes they had before tracing
    (:meth:`pruning.tracing.state.SavedAttributes.as_before`): a forward that reassigns ``self.table`` leaves a
    Proxy there while it is traced, which the oracle must not run on.
    """

    def __init__(self, root: nn.Module, graph: fx.Graph, args: tuple,
                 as_before: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
        self.root, self.graph, self.args, self._as_before = root, graph, args, as_before
        self._busy = False
        self._mode: FakeTensorMode | contextlib.nullcontext | None = None
        self._env: dict[fx.Node, Any] = {}
        self._modules = dict(root.named_modules())
        self._from_sizes: dict[fx.Node, bool] = {}
        self._data_dependent: dict[fx.Node, bool] = {}
        self._checker: FakeTensorMode | None = None  # for data_dependent
        self._fake = True

    def from_sizes(self, node: fx.Node) -> bool:
        """Whether the node's value is computed from tensor sizes and constants only."""
        known = self._from_sizes.get(node)
        if known is None:
            if node.op == "call_method" and node.target in SIZE_METHODS or (
                    node.op == "call_function" and node.target is getattr and node.args[1] in SIZE_ATTRIBUTES):
                known = True
            elif node.op in ("call_function", "call_method") and node.all_input_nodes:
                known = all(self.from_sizes(n) for n in node.all_input_nodes)
            else:
                known = False
            self._from_sizes[node] = known
        return known

    def value(self, node: fx.Node) -> Any:
        """The node's value for the example inputs (evaluating the nodes before it that are not yet)."""
        try:
            return self._evaluated(node)
        except Exception:  # noqa: BLE001 - an op without a fake kernel, or one that fails for real too
            if not self._fake:
                raise
            self._fake, self._mode = False, None
            self._env.clear()
            return self._evaluated(node)

    def data_dependent(self, node: fx.Node) -> bool:
        """Whether the node's value (evaluated) comes after an op whose output shape or value depends on
        tensor data (a boolean mask, ``nonzero``, an NMS, ``.item()``): fake tensors refuse such ops, so
        while the oracle runs on them no value does; after a restart on the real example, each op before
        ``node`` is tried once on fake copies of its inputs."""
        if self._fake:
            return False
        with _maybe_revert_all_patches(), eval_mode(self.root), self._as_before():
            for current in self.graph.nodes:
                if current not in self._data_dependent:
                    self._data_dependent[current] = not _rank_or_dtype(current) and (
                        any(self._data_dependent.get(n, False) for n in current.all_input_nodes)
                        or self._refused(current))
                if current is node:
                    break
        return self._data_dependent[node]

    def _refused(self, node: fx.Node) -> bool:
        """Whether fake tensors refuse the node's op as data-dependent, given its real input values. Only ops
        without a rule, and ruled ones that say their shape may follow values (``Rule.shaped_by_values``),
        are tried: the others are shaped by their inputs' shapes."""
        if node.op not in ("call_function", "call_method", "call_module"):
            return False
        rule = registered(node, self._modules.get(node.target) if node.op == "call_module" else None)
        if rule is not None and not rule.shaped_by_values(node):
            return False
        if self._checker is None:
            self._checker = FakeTensorMode(allow_non_fake_inputs=True)
        with self._checker:
            env = {n: pytree.tree_map_only(torch.Tensor, self._checker.from_tensor, self._env[n])
                   for n in node.all_input_nodes}
            try:
                evaluate(node, env, self.root, self._modules, fake=True)
            except (DynamicOutputShapeException, DataDependentOutputException):
                return True
            except Exception:  # noqa: BLE001 - no fake kernel (grouped matmul): not a data-dependent shape
                return False
        return False

    def _evaluated(self, node: fx.Node) -> Any:
        if node in self._env:
            return self._env[node]
        if self._busy:  # the model's code, run here, reached a traced value (and the tracer asked again)
            raise RuntimeError("the size oracle's evaluation reached a value being traced")
        if self._mode is None:
            placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
            inputs = bind_inputs(self.graph, self.args, {})
            if self._fake:
                self._mode = FakeTensorMode(allow_non_fake_inputs=True)
                with self._mode:
                    inputs = pytree.tree_map_only(torch.Tensor, self._mode.from_tensor, inputs)
            else:
                self._mode = contextlib.nullcontext()
            self._env.update(zip(placeholders, inputs))
        # Outside the tracer's patches (module calls and attributes would be traced again), in eval mode as
        # the shape pass, on the model's attributes as they were before tracing.
        self._busy = True
        try:
            with _maybe_revert_all_patches(), eval_mode(self.root), self._as_before(), self._mode:
                for current in self.graph.nodes:
                    if current not in self._env:
                        self._env[current] = evaluate(current, self._env, self.root, self._modules, fake=self._fake)
                    if current is node:
                        break
        finally:
            self._busy = False
        return self._env[node]


def _rank_or_dtype(node: fx.Node) -> bool:
    """Whether the node reads only a tensor's rank or dtype (``x.dim()``, ``len(x.shape)``), which are known
    even where its sizes depend on data."""
    if node.op == "call_method":
        return node.target in _RANK_METHODS
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return node.args[1] in _RANK_ATTRIBUTES
    shape = node.args[0] if node.target is size_count and node.args else None
    return isinstance(shape, fx.Node) and (
        shape.op == "call_function" and shape.target is getattr and shape.args[1] == "shape"
        or shape.op == "call_method" and shape.target == "size" and len(shape.args) == 1 and not shape.kwargs)
