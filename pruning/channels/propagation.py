"""Propagate channel ids through a traced graph, node by node, with the rule registry.

The value of a tensor node is a tuple with one entry per dimension: an array of channel ids (one per
element along that dimension, ids may repeat, e.g. after a flatten) or None where the dimension
carries no prunable channels (batch, spatial, tokens...). Tuples/lists of tensors get lists of such
values; anything else gets None.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import registry
from ..nodes import flatten_args, get_tensor, is_size
from ..tracing.recorded import helper_call
from .space import ChannelSpace
from .values import SizeOf


@dataclass(frozen=True)
class ParamSite:
    """A dimension of a parameter or buffer that pruning slices.

    ``label_index[i]`` is the label owning element ``i`` along ``dim``.
    """

    name: str
    dim: int
    label_index: np.ndarray


@dataclass
class Analysis:
    """The result of propagation: labels, their flags and groups, and what surgery needs.

    ``normalized[i]`` is True when label ``i`` enters statistics over channels (a LayerNorm over the
    channel dim): pruning it is valid but changes the statistics, so it is not an exact removal even
    when the channel is dead.
    """

    label_of_id: np.ndarray
    num_labels: int
    prunable: np.ndarray
    normalized: np.ndarray
    sites: list[ParamSite]
    groups: list[np.ndarray]
    node_ids: dict[str, Any] = field(repr=False)
    shapes: dict[str, Any] = field(repr=False)
    rewrites: list[tuple[str, registry.Rule]] = field(repr=False)
    module_rules: dict[str, registry.Rule] = field(repr=False)
    #: Ops no rule understands that channels reached (each blocked them), and such layers with
    #: parameters (their own channels stay), as 'node (op)'.
    opaque: list[str] = field(default_factory=list)
    #: Per label, the index in ``blockers`` of what first fixed it (-1: not fixed by a block; such a label
    #: may still be unprunable, living only in a parameter dim no rule understood): the op whose rule
    #: fixed it, as ``Snapshot.opaque_ops`` names ops, or 'model output'.
    blocked_by: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    blockers: list[str] = field(default_factory=list)


def named_tensors(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``modules`` (``dict(root.named_modules())``) by qualified name,
    in one walk of the module tree."""
    known = {}
    for prefix, owner in modules.items():
        for table in (owner._parameters, owner._buffers):
            for name, tensor in table.items():
                if tensor is not None:
                    known[f"{prefix}.{name}" if prefix else name] = tensor
    return known


def tensor_lookup(module: nn.Module, modules: dict[str, nn.Module] | None = None,
                  known: dict[str, torch.Tensor] | None = None) -> Callable[[str], torch.Tensor]:
    """``get_tensor`` for many names: parameters and buffers come from ``known`` (or one walk of
    ``modules``, ``dict(module.named_modules())`` if the caller has it); other tensor attributes are
    looked up by name."""
    if known is None:
        known = named_tensors(modules if modules is not None else dict(module.named_modules()))
    return lambda name: known[name] if name in known else get_tensor(module, name)


def tensor_aliases(known: dict[str, torch.Tensor]) -> dict[str, str]:
    """Every name in ``known`` -> the first name of the same tensor (tied weights, such as an embedding
    reused by the output layer, are one tensor under several names)."""
    first: dict[int, str] = {}
    return {name: first.setdefault(id(tensor), name) for name, tensor in known.items()}


class Context:
    """What rules see while propagating: values of earlier nodes, shapes and the channel space."""

    def __init__(self, root: nn.Module, graph: fx.Graph | None = None) -> None:
        """``root`` is a GraphModule, or with ``graph`` the module whose submodules its targets name."""
        self.graph = root.graph if graph is None else graph
        self.space = ChannelSpace()
        self.values: dict[fx.Node, Any] = {}
        self._sites: dict[tuple[str, int], np.ndarray] = {}
        self._flow: list[np.ndarray] = []
        self._opaque: list[str] = []
        self._modules = dict(root.named_modules(remove_duplicate=False))
        self._paths: dict[int, str] | None = None  # module id -> qualified name, made when needed
        known = named_tensors(self._modules)
        self._tensor = tensor_lookup(root, known=known)
        self._alias = tensor_aliases(known)

    # --- reading -------------------------------------------------------------------------
    def value(self, a: Any) -> Any:
        """The channel value of an argument (None for constants)."""
        if isinstance(a, fx.Node):
            return self.values.get(a)
        if isinstance(a, (tuple, list)):
            return [self.value(x) for x in a]
        return None

    @staticmethod
    def shape(a: Any) -> Any:
        """The recorded shape of an argument (None for constants)."""
        if isinstance(a, fx.Node):
            return a.meta.get("pruning_shape")
        if isinstance(a, (tuple, list)):
            return [Context.shape(x) for x in a]
        return None

    def input_values(self, node: fx.Node) -> list[Any]:
        return [self.values.get(a) for a in flatten_args((node.args, node.kwargs))
                if isinstance(a, fx.Node)]

    def tensor_inputs(self, node: fx.Node) -> list[tuple[Any, torch.Size]]:
        """(value, shape) of every tensor argument, in argument order."""
        out = []
        for a in flatten_args((node.args, node.kwargs)):
            if isinstance(a, fx.Node) and is_size(self.shape(a)):
                out.append((self.values.get(a) or (None,) * len(self.shape(a)), self.shape(a)))
        return out

    def module(self, node: fx.Node) -> nn.Module:
        return self._modules[node.target]

    @property
    def modules(self) -> dict[str, nn.Module]:
        """The traced model's modules by qualified name."""
        return self._modules

    def attribute(self, node: fx.Node) -> Any:
        """What a ``get_attr`` node reads: a module, tensor or other attribute of the traced model."""
        if node.target in self._modules:
            return self._modules[node.target]
        return get_tensor(self._modules[""], node.target)

    # --- writing -------------------------------------------------------------------------
    def param_axis(self, name: str, dim: int, tied: np.ndarray | None = None) -> np.ndarray:
        """Channel ids of dimension ``dim`` of parameter/buffer ``name`` (created on first use).

        ``tied``: ids (one per element of the dim) that this dim is pruned with. On first use they
        become the dim's ids, which saves allocating fresh ids and merging them (most parameter dims
        follow a tensor: norms, biases, a layer's input dim); on later uses they are merged.

        A tensor shared by several names (tied weights) is one site, under its first name, so every
        use of it prunes the same elements.
        """
        name = self._alias.get(name, name)
        key = (name, dim)
        if key not in self._sites:
            size = self._tensor(name).shape[dim]
            if tied is not None and tied.ndim == 1 and len(tied) == size:
                self._sites[key] = tied
                return tied
            self._sites[key] = self.space.fresh(size)
        if tied is not None:
            self.space.merge(self._sites[key], tied)
        return self._sites[key]

    def block_value(self, value: Any) -> None:
        """Block every channel id in a value."""
        if isinstance(value, np.ndarray):
            self.space.block(value)
        elif isinstance(value, SizeOf):
            self.block_value(value.ids)
        elif isinstance(value, (tuple, list)):
            for v in value:
                self.block_value(v)

    def keep_tensors_of(self, module: nn.Module, name: str | None = None) -> None:
        """Block every dim of ``module``'s parameter or buffer ``name``, or of all those of ``module`` and its
        submodules (an opaque call reads them), wherever the graph uses them."""
        if self._paths is None:
            self._paths = {id(m): path for path, m in self._modules.items()}
        prefix = self._paths.get(id(module), "")
        owners = [(prefix, module)] if name else module.named_modules(prefix=prefix)
        for prefix, owner in owners:
            for table in (owner._parameters, owner._buffers):
                for key, tensor in table.items():
                    if tensor is not None and (name is None or key == name):
                        for d in range(tensor.dim()):
                            self.space.block(self.param_axis(f"{prefix}.{key}" if prefix else key, d))

    def internal(self, ids: np.ndarray) -> None:
        """Declare channel ids that live inside a leaf module (attention features) as understood by
        its rule, like ids that flow between nodes; unclaimed parameter ids are never pruned."""
        self._flow.append(ids)

    def report_opaque(self, node: fx.Node) -> None:
        """Note an op no rule understands (see ``Snapshot.opaque_ops``), if channels reach it or it is a
        layer with parameters (whose own channels then stay)."""
        module = self._modules[node.target] if node.op == "call_module" else None
        if any(_has_ids(v) for v in self.input_values(node)) or (
                module is not None and next(module.parameters(), None) is not None):
            self._opaque.append(f"{node.name} ({_op_name(node, module)})")

    def untracked(self, shape: Any) -> Any:
        """A value with no channels for the given recorded shape."""
        if is_size(shape):
            return (None,) * len(shape)
        if isinstance(shape, list):
            return [self.untracked(s) for s in shape]
        return None

    def _record_flow(self, value: Any) -> None:
        if isinstance(value, np.ndarray):
            self._flow.append(value)
        elif isinstance(value, (tuple, list)):
            for v in value:
                self._record_flow(v)

    # --- driver --------------------------------------------------------------------------
    def run(self) -> Analysis:
        rewrites: list[tuple[str, registry.Rule]] = []
        module_rules: dict[str, registry.Rule] = {}
        for node in self.graph.nodes:
            shape = node.meta.get("pruning_shape")
            if node.op == "placeholder":
                value = self.untracked(shape)
            elif node.op == "get_attr":
                value = self._get_attr(node, shape)
            elif node.op == "output":
                self.space.current = node
                for v in self.input_values(node):
                    self.block_value(v)
                continue
            else:
                module = self.module(node) if node.op == "call_module" else None
                rule = registry.lookup(node, module)
                self.space.current = node
                value = rule.propagate(self, node)
                if not rule.reads_sizes:
                    for a in flatten_args((node.args, node.kwargs)):
                        if isinstance(self.values.get(a) if isinstance(a, fx.Node) else None, SizeOf):
                            self.block_value(self.values[a])
                if value is None:
                    value = self.untracked(shape)
                self._record_flow(value)
                if registry.overrides(rule, "rewrite"):
                    rewrites.append((node.name, rule))
                if module is not None and registry.overrides(rule, "update_module"):
                    module_rules[node.target] = rule
            self.values[node] = value
        return self._finish(rewrites, module_rules)

    def _cause_name(self, node: fx.Node | None) -> str:
        """What a block's node is: its op as ``Snapshot.opaque_ops`` names ops, and for a function or method
        the class of the module whose forward called it; 'model output' for the output node."""
        if node is None:
            return "unknown"
        if node.op == "output":
            return "model output"
        if node.op == "call_module":
            return _op_name(node, self._modules[node.target])
        stack = node.meta.get("nn_module_stack")
        owner = next(reversed(stack.values()))[1] if stack else None
        where = f" in {getattr(owner, '__qualname__', owner)}" if owner is not None else ""
        return _op_name(node, None) + where

    def _get_attr(self, node: fx.Node, shape: Any) -> Any:
        if not is_size(shape):
            return None
        return tuple(self.param_axis(node.target, d) if size > 1 else None for d, size in enumerate(shape))

    def _finish(self, rewrites: list[tuple[str, registry.Rule]], module_rules: dict[str, registry.Rule]) -> Analysis:
        label_of_id, count, blocked, normalized = self.space.components()
        flow = label_of_id[np.concatenate(_distinct(self._flow))] if self._flow else np.zeros(0, dtype=np.int64)
        in_flow = np.zeros(count, dtype=bool)
        in_flow[flow] = True
        # A label that never reaches a tensor flowing through the graph only lives in some parameter
        # dimension no rule understood: never prune it.
        prunable = ~blocked & in_flow
        # A place's labels matter, not which node or parameter it is: most places repeat another's
        # labels (a convolution's output, its weight and the batch norm after it), so group over
        # distinct places only (the same groups, a tenth of the work on CNNs), and let parameter
        # dims with the same labels share one array (surgery computes its kept indices once).
        places: dict[bytes, np.ndarray] = {}
        sites = []
        for (name, dim), ids in self._sites.items():
            labels = label_of_id[ids]
            sites.append(ParamSite(name, dim, places.setdefault(labels.tobytes(), labels)))
        for ids in _distinct(self._flow):
            labels = label_of_id[ids]
            places.setdefault(labels.tobytes(), labels)
        groups = _groups(count, prunable, np.concatenate([np.zeros(0, np.int64), *places.values()]),
                         [len(labels) for labels in places.values()])
        node_ids = {n.name: self.values.get(n) for n in self.graph.nodes}
        shapes = {n.name: n.meta.get("pruning_shape") for n in self.graph.nodes}
        blockers: dict[str, int] = {}  # the name of each op that blocked, numbered
        number = {node: blockers.setdefault(self._cause_name(node), len(blockers))
                  for node in dict.fromkeys(self.space.block_causes)}
        # the block call that first fixed each label -> its op's number (-1: none, the appended last entry)
        blocked_by = np.array([number[node] for node in self.space.block_causes] + [-1], dtype=np.int64)[
            self.space.first_blocks(label_of_id, count)]
        return Analysis(label_of_id, count, prunable, normalized, sites, groups, node_ids, shapes,
                        rewrites, module_rules, self._opaque, blocked_by, list(blockers))


def _has_ids(value: Any) -> bool:
    """True if a value carries any channel ids."""
    if isinstance(value, np.ndarray):
        return True
    if isinstance(value, SizeOf):
        return any(ids is not None for ids in value.ids)
    return isinstance(value, (tuple, list)) and any(_has_ids(v) for v in value)


def _op_name(node: fx.Node, module: nn.Module | None) -> str:
    """What a node calls, as a user would look it up: module class, function or Tensor method."""
    if module is not None:
        return f"{type(module).__module__}.{type(module).__qualname__}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.target is helper_call and getattr(node.args[0], "op", None) == "get_attr":  # soft tracing's opaque method
        return f"{node.args[0].target}.{node.args[1]}"
    target, name = node.target, getattr(node.target, "__name__", "")
    for prefix, namespace in (("torch", torch), ("torch.nn.functional", F), ("operator", operator)):
        if getattr(namespace, name, None) is target:
            return f"{prefix}.{name}"
    return f"{getattr(target, '__module__', None) or 'builtins'}.{getattr(target, '__qualname__', repr(target))}"


def _distinct(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """``arrays`` without repeats of the same object (a value passed on unchanged by many nodes)."""
    return list({id(array): array for array in arrays}.values())


def _groups(count: int, prunable: np.ndarray, labels: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """Group labels that appear in exactly the same parameter dimensions and tensor dimensions.

    ``labels`` holds the labels of every place (parameter dim or tensor dim) one after another,
    ``lengths`` how many belong to each place. Keeping at least one label per group therefore keeps
    every such dimension non-empty. The signature of a label is a sum of random 64-bit keys of the
    places it appears in.
    """
    candidates = np.flatnonzero(prunable)
    if len(candidates) == 0:
        return []
    n = len(lengths)
    keys = np.random.default_rng(0).integers(1, 2**62, size=n, dtype=np.int64).astype(np.uint64)
    places = np.repeat(np.arange(n, dtype=np.int64), lengths)
    # (label, place) pairs packed in one int64 with shifts (int64 division is slow), sorted and
    # de-duplicated (sort-based: np.unique hashes slowly here); a label's signature is then the sum of
    # its run of keys.
    bits = max(1, (n - 1).bit_length())
    pairs = np.sort((labels << bits) | places)
    pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
    owner = pairs >> bits
    starts = np.flatnonzero(np.concatenate(([True], owner[1:] != owner[:-1])))
    signature = np.zeros(count, dtype=np.uint64)
    signature[owner[starts]] = np.add.reduceat(keys[pairs & ((1 << bits) - 1)], starts)
    order = np.argsort(signature[candidates], kind="stable")
    bounds = np.flatnonzero(np.diff(signature[candidates][order])) + 1
    groups = np.split(candidates[order], bounds)
    groups.sort(key=lambda g: int(g[0]))
    return groups
