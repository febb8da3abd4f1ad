"""Physically remove pruned channels from a traced model.

Parameters and buffers are sliced with one ``index_select`` per sliced dimension; module attributes
(``out_channels``, ``num_features``...) and literal sizes in the graph (reshape sizes, split sizes,
slice bounds, ``groups``) are updated by the rules that own them.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from .channels.propagation import Analysis, get_tensor


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
                   keep_label: np.ndarray) -> dict[str, torch.Tensor]:
    """New values of every parameter/buffer that loses elements, by qualified name."""
    by_name: dict[str, list] = defaultdict(list)
    for site in analysis.sites:
        by_name[site.name].append(site)
    out = {}
    for name, sites in by_name.items():
        tensor = get_tensor(graph_module, name)
        new = tensor.detach()
        for site in sites:
            mask = keep_label[site.label_index]
            if not mask.all():
                index = torch.from_numpy(np.flatnonzero(mask)).to(tensor.device)
                new = new.index_select(site.dim, index)
        if new.shape != tensor.shape:
            out[name] = new
    return out


def prune_graph_module(graph_module: fx.GraphModule, analysis: Analysis, keep_label: np.ndarray,
                       inplace: bool) -> fx.GraphModule:
    """Return the pruned model: a copy (sharing nothing with the input) unless ``inplace``."""
    new_values = sliced_tensors(graph_module, analysis, keep_label)
    if inplace:
        pruned = graph_module
        replacements = {name: get_tensor(graph_module, name) for name in new_values}
    else:
        memo: dict[int, Any] = {}
        replacements = {}
        for name, value in new_values.items():
            old = get_tensor(graph_module, name)
            replacements[name] = old
            memo[id(old)] = _like(old, value)
        pruned = copy.deepcopy(graph_module, memo)
    if inplace:
        for name, value in new_values.items():
            _set_tensor(pruned, name, _like(replacements[name], value))
    for target, rule in analysis.module_rules.items():
        rule.update_module(pruned.get_submodule(target))
    rewriter = Rewriter(analysis, keep_label, pruned)
    nodes = {n.name: n for n in pruned.graph.nodes}
    for name, rule in analysis.rewrites:
        rule.rewrite(rewriter, nodes[name])
    pruned.recompile()
    return pruned


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
