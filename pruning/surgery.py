"""Physically remove pruned channels from a traced model.

Parameters and buffers are sliced with one ``index_select`` per sliced dimension; module attributes
(``out_channels``, ``num_features``...) and literal sizes in the graph (reshape sizes, split sizes,
slice bounds, ``groups``) are updated by the rules that own them.
"""
from __future__ import annotations

import copy
from collections import OrderedDict, defaultdict
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from .channels.propagation import Analysis, tensor_lookup


class Rewriter:
    """What a rule's ``rewrite`` sees: old and new shapes and which channel ids survive."""

    def __init__(self, analysis: Analysis, keep_label: np.ndarray, graph_module: fx.GraphModule) -> None:
        self.analysis = analysis
        self.keep_id = keep_label[analysis.label_of_id]
        self.graph_module = graph_module

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
        return self.graph_module.get_submodule(node.target)


def sliced_tensors(graph_module: fx.GraphModule, analysis: Analysis,
                   keep_label: np.ndarray) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(old tensor, new value) of every parameter/buffer that loses elements, by qualified name."""
    by_name: dict[str, list] = defaultdict(list)
    for site in analysis.sites:
        by_name[site.name].append(site)
    tensor_of = tensor_lookup(graph_module)
    out = {}
    for name, sites in by_name.items():
        tensor = tensor_of(name)
        new = tensor.detach()
        for site in sites:
            mask = keep_label[site.label_index]
            if not mask.all():
                index = torch.from_numpy(np.flatnonzero(mask)).to(tensor.device)
                new = new.index_select(site.dim, index)
        if new.shape != tensor.shape:
            out[name] = (tensor, new)
    return out


def prune_graph_module(graph_module: fx.GraphModule, analysis: Analysis, keep_label: np.ndarray,
                       inplace: bool) -> fx.GraphModule:
    """Return the pruned model: a copy (sharing nothing with the input) unless ``inplace``."""
    new_values = sliced_tensors(graph_module, analysis, keep_label)
    if inplace:
        pruned = graph_module
        for name, (old, value) in new_values.items():
            _set_tensor(pruned, name, _like(old, value))
    else:
        memo: dict[int, Any] = {id(old): _like(old, value) for old, value in new_values.values()}
        for child in graph_module.children():
            _copy_module(child, memo)
        pruned = copy.deepcopy(graph_module, memo)
    for target, rule in analysis.module_rules.items():
        rule.update_module(pruned.get_submodule(target))
    rewriter = Rewriter(analysis, keep_label, pruned)
    nodes = {n.name: n for n in pruned.graph.nodes}
    changed = False
    for name, rule in analysis.rewrites:
        node = nodes[name]
        before = (node.args, node.kwargs)
        rule.rewrite(rewriter, node)
        changed = changed or (node.args, node.kwargs) != before
    if changed:  # the generated code only depends on the graph
        pruned.recompile()
    return pruned


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


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if attr in owner._parameters:
        owner._parameters[attr] = value
    elif attr in owner._buffers:
        owner._buffers[attr] = value
    else:
        setattr(owner, attr, value)
