"""Physically remove pruned channels from a traced model.

Parameters and buffers are sliced with one ``index_select`` per sliced dimension; module attributes
(``out_channels``, ``num_features``...) and literal sizes in the graph (reshape sizes, split sizes,
slice bounds, ``groups``) are updated by the rules that own them.
"""
from __future__ import annotations

import copy
from collections import OrderedDict, defaultdict
from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from .channels.propagation import Analysis, tensor_lookup
from .compensation import Compensation
from .compensation import apply as apply_compensation


class Rewriter:
    """What a rule's ``rewrite`` sees: old and new shapes and which channel ids survive."""

    def __init__(self, analysis: Analysis, keep_label: np.ndarray, module_of: Callable[[str], nn.Module]) -> None:
        self.analysis = analysis
        self.keep_id = keep_label[analysis.label_of_id]
        self._module_of = module_of

    def kept(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of these channel ids survive."""
        return self.keep_id[ids]

    def ids(self, node: fx.Node) -> Any:
        return self.analysis.node_ids[node.name]

    def old_shape(self, node: fx.Node) -> Any:
        return self.analysis.shapes[node.name]

    def new_shape(self, node: fx.Node) -> Any:
        """The node's output shape after pruning (a tuple, or a list of them)."""
        return self._resize(self.analysis.shapes[node.name], self.analysis.node_ids[node.name])

    def _resize(self, shape: Any, value: Any) -> Any:
        if isinstance(shape, torch.Size):
            return tuple(size if ids is None else int(self.keep_id[ids].sum())
                         for size, ids in zip(shape, value or (None,) * len(shape)))
        if isinstance(shape, list):
            return [self._resize(s, v) for s, v in zip(shape, value or [None] * len(shape))]
        return shape

    def module(self, node: fx.Node) -> nn.Module:
        """The pruned model's module that ``node`` calls (already sliced)."""
        return self._module_of(node.target)


def sliced_tensors(root: nn.Module, analysis: Analysis, keep_label: np.ndarray,
                   modules: dict[str, nn.Module] | None = None, replaced: dict[str, torch.Tensor] | None = None
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(old tensor, new value) of every parameter/buffer that loses elements, by qualified name
    (``modules`` is ``dict(root.named_modules())`` if the caller has it); a tensor named in ``replaced`` is
    sliced from that value (same shape, cast to the tensor's dtype) instead of its own."""
    replaced = replaced or {}
    unsliced = set(replaced) - {site.name for site in analysis.sites} if replaced else set()
    if unsliced:  # an internal error: compensation replaces only weights that lose input channels
        raise RuntimeError(f"new values for {sorted(unsliced)}, which pruning does not slice")
    by_name: dict[str, list] = defaultdict(list)
    for site in analysis.sites:
        by_name[site.name].append(site)
    tensor_of = tensor_lookup(root, modules)
    kept: dict[tuple[int, torch.device], torch.Tensor | None] = {}  # sites often share label arrays
    out = {}
    for name, sites in by_name.items():
        tensor = tensor_of(name)
        new = replaced[name].to(tensor) if name in replaced else tensor.detach()
        for site in sites:
            key = (id(site.label_index), tensor.device)
            if key not in kept:
                mask = keep_label[site.label_index]
                kept[key] = None if mask.all() else torch.from_numpy(np.flatnonzero(mask)).to(tensor.device)
            if kept[key] is not None:
                new = new.index_select(site.dim, kept[key])
        if new.shape != tensor.shape or name in replaced:
            out[name] = (tensor, new)
    return out


def prune_graph_module(root: nn.Module, graph: fx.Graph, analysis: Analysis, keep_label: np.ndarray,
                       inplace: bool, compensation: Compensation | None = None) -> fx.GraphModule:
    """Return the pruned model as a GraphModule of ``graph``.

    ``root`` holds what the graph's targets name: the snapshot's GraphModule, or the model it was
    traced from. Unless ``inplace``, the result shares nothing with ``root`` or ``graph``: only the
    modules and tensors the graph uses are copied (with the sliced tensors in place of the old ones),
    the graph is copied, rewritten, and compiled once into a new GraphModule. With ``inplace`` the
    tensors of ``root`` are replaced and ``graph`` itself is rewritten. ``compensation`` (a
    ``pruning.compensation.plan``): its weights are sliced in place of the old ones, its shifts added to
    the modules once they are sliced.
    """
    modules = dict(root.named_modules())
    new_values = sliced_tensors(root, analysis, keep_label, modules,
                                compensation.weights if compensation else None)
    if inplace:
        replaced = {}
        for name, (old, value) in new_values.items():
            replaced[id(old)] = _like(old, value)
            _set_tensor(root, name, replaced[id(old)], modules)
        _replace_aliases(modules, replaced)
        module_of: Callable[[str], Any] = root.get_submodule
    else:
        memo: dict[int, Any] = {id(old): _like(old, value) for old, value in new_values.values()}
        copies = _copy_targets(root, graph, memo, modules)
        graph = copy.deepcopy(graph, memo)
        module_of = copies.__getitem__
    for target, rule in analysis.module_rules.items():
        rule.update_module(module_of(target))
    apply_compensation(compensation.shifts if compensation else [], module_of)
    rewriter = Rewriter(analysis, keep_label, module_of)
    nodes = {n.name: n for n in graph.nodes}
    changed = False
    for name, rule in analysis.rewrites:
        node = nodes[name]
        before = (node.args, node.kwargs)
        rule.rewrite(rewriter, node)
        changed = changed or (node.args, node.kwargs) != before
    if inplace and isinstance(root, fx.GraphModule) and root.graph is graph:
        if changed:  # the generated code only depends on the graph
            root.recompile()
        return root
    return graph_module(root if inplace else _copied_root(root, copies), graph, root, None if inplace else memo)


def graph_module(source: nn.Module, graph: fx.Graph, root: nn.Module,
                 memo: dict[int, Any] | None = None) -> fx.GraphModule:
    """``fx.GraphModule(source, graph)``, named after ``root``'s class, with what fx's copy of the graph's
    targets loses restored from ``root`` (``source`` is ``root`` or holds copies of its targets; ``memo``
    as in ``add_tied_names``): the other names of tied tensors, and buffers' persistence (torch 2.11,
    seen on a device, registers every buffer it copies as persistent, so a non-persistent mask or position
    table would enter the state dict)."""
    module = fx.GraphModule(source, graph, type(root).__name__)
    for name, owner in root.named_modules():
        for buffer in owner._non_persistent_buffers_set:
            try:
                copy_owner = module.get_submodule(name)
            except AttributeError:  # not read by the graph
                continue
            if buffer in copy_owner._buffers:
                copy_owner._non_persistent_buffers_set.add(buffer)
    add_tied_names(module, root, memo)
    return module


def add_tied_names(module: nn.Module, root: nn.Module, memo: dict[int, Any] | None = None) -> None:
    """Give ``module`` (a GraphModule built from ``root``'s graph targets) the other names ``root`` has for a
    tied tensor it holds: fx copies only the targets, so BERT's LM head bias, read by the graph as the
    decoder's bias, would lose its first name, the one the analysis, ``state_dict`` and a later prune use.
    ``memo`` maps ``id`` of ``root``'s tensors to their copies in ``module`` (None: ``module`` shares them)."""
    names: dict[int, list[tuple[str, torch.Tensor]]] = defaultdict(list)
    for name, tensor in (*root.named_parameters(remove_duplicate=False), *root.named_buffers(remove_duplicate=False)):
        names[id(tensor)].append((name, tensor))
    held = None
    for tied in (entries for entries in names.values() if len(entries) > 1):
        if held is None:
            held = {id(t) for t in (*module.parameters(), *module.buffers())}
        copied = tied[0][1] if memo is None else memo.get(id(tied[0][1]))
        if copied is None or id(copied) not in held:
            continue
        for name, tensor in tied:
            owner_name, _, attr = name.rpartition(".")
            owner = module
            for part in owner_name.split(".") if owner_name else ():
                owner = owner._modules.setdefault(part, nn.Module())
            if attr not in owner._parameters and attr not in owner._buffers:
                (owner._parameters if isinstance(tensor, nn.Parameter) else owner._buffers)[attr] = copied


def _copied_root(root: nn.Module, copies: dict[str, Any]) -> nn.Module:
    """A module holding the copies at their qualified names, with empty modules on the way (what
    ``fx.GraphModule`` copies the graph's targets from, as it would from ``root``). A target inside
    another copied target (a parameter the graph reads of a module it also calls) is reached
    through that copy; a buffer keeps its persistence."""
    holder = nn.Module()
    holder.training = root.training
    for target, value in copies.items():
        parts = target.split(".")
        if any(".".join(parts[:i]) in copies for i in range(1, len(parts))):
            continue
        owner, old_owner = holder, root
        for part in parts[:-1]:
            if part not in owner._modules:
                owner._modules[part] = nn.Module()
            owner, old_owner = owner._modules[part], getattr(old_owner, part)
        name = parts[-1]
        if isinstance(value, nn.Module):
            owner._modules[name] = value
        elif name in old_owner._buffers:
            owner._buffers[name] = value
            if name in old_owner._non_persistent_buffers_set:
                owner._non_persistent_buffers_set.add(name)
        else:
            setattr(owner, name, value)
    return holder


def _copy_targets(root: nn.Module, graph: fx.Graph, memo: dict[int, Any],
                  modules: dict[str, nn.Module]) -> dict[str, Any]:
    """Copies of the modules and attributes the graph's nodes name, by target (one memo, so a tensor
    reached twice is copied once, and the sliced tensors already in it are used); ``modules`` is
    ``dict(root.named_modules())``."""
    copies: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr") and node.target not in copies:
            owner, _, attr = node.target.rpartition(".")
            value = getattr(modules[owner] if owner in modules else root.get_submodule(owner), attr)
            copies[node.target] = (_copy_module(value, memo) if isinstance(value, nn.Module)
                                   else copy.deepcopy(value, memo))
    return copies


_ATOMIC = (type(None), bool, int, float, str)
_plain_types: dict[type, bool] = {}


def _is_plain(cls: type) -> bool:
    """True if deepcopy copies ``cls`` like ``nn.Module`` itself: a new object whose
    ``__setstate__`` receives a copy of ``__dict__`` (no own ``__deepcopy__``, reduce or getstate)."""
    if cls not in _plain_types:
        _plain_types[cls] = (getattr(cls, "__deepcopy__", None) is None
                             and cls.__reduce_ex__ is object.__reduce_ex__ and cls.__reduce__ is object.__reduce__
                             and cls.__getstate__ is nn.Module.__getstate__)
    return _plain_types[cls]


def _copy_module(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """``copy.deepcopy(module, memo)``, several times faster for plain modules.

    deepcopy's generic reduce/reconstruct path dominates pruning small models: every module carries
    about twenty attributes, most of them empty hook dicts. Plain modules are rebuilt attribute by
    attribute instead (atomic values and tuples of them shared, empty containers recreated, submodules recursed into,
    everything else deep-copied with the same memo, so sliced tensors placed in it are used); modules
    with their own copy protocol go through deepcopy itself.
    """
    if id(module) in memo:
        return memo[id(module)]
    cls = type(module)
    if not _is_plain(cls):
        return copy.deepcopy(module, memo)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state = {}
    for key, value in module.__dict__.items():
        kind = type(value)
        if key == "_compiled_call_impl":  # dropped by nn.Module.__getstate__ as well
            continue
        if kind in _ATOMIC or (kind is tuple and all(type(v) in _ATOMIC for v in value)):
            state[key] = value
        elif key == "_modules":
            state[key] = kind((name, None if child is None else _copy_module(child, memo))
                              for name, child in value.items())
        elif key in ("_parameters", "_buffers") and kind is dict:  # sliced tensors are in the memo
            state[key] = {name: memo[id(t)] if id(t) in memo else copy.deepcopy(t, memo)
                          for name, t in value.items()}
        elif kind in (dict, OrderedDict, set, list) and not value:
            state[key] = kind()
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__setstate__(state)
    return new


def _like(old: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` as the same kind of tensor as ``old`` (a Parameter stays a Parameter)."""
    value = value.contiguous()
    if isinstance(old, nn.Parameter):
        return nn.Parameter(value, requires_grad=old.requires_grad)
    return value


def _replace_aliases(modules: dict[str, nn.Module], replaced: dict[int, torch.Tensor]) -> None:
    """Point every other name of a replaced parameter/buffer (tied weights) at its replacement."""
    for owner in modules.values():
        for table in (owner._parameters, owner._buffers):
            for key, tensor in table.items():
                if tensor is not None and id(tensor) in replaced:
                    table[key] = replaced[id(tensor)]


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor, modules: dict[str, nn.Module]) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = modules[owner_name] if owner_name in modules else module.get_submodule(owner_name)
    if attr in owner._parameters:
        owner._parameters[attr] = value
    elif attr in owner._buffers:
        owner._buffers[attr] = value
    else:
        setattr(owner, attr, value)
