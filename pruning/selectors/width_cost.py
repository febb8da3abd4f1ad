"""The cost of a selection from the widths it leaves, without pruning, for the ready-made cost functions.

Channel pruning slices parameters along the dims the analysis lists (``snapshot.param_sites``), so a
parameter keeps ``prod(kept elements of each dim)`` elements: that gives
[`parameters`][pruning.latency.parameters] of any selection. The MACs of a convolution or linear layer
are its weight's size times the positions it is applied at, which channel pruning leaves as they are, so
[`macs`][pruning.latency.macs] of any selection follows from the weights' kept sizes too, for models
whose counted MACs all happen inside such layers (convolutions, linear layers; not attention's products
of activations or recurrent layers: those get no width cost and are measured by pruning).

A selector evaluates the cost of many selections; this spares it pruning a copy of the model and running
it for each (``python -m benchmarks.knapsack`` times the selector).

    cost = width_cost(snapshot, latency.macs((1, 3, 224, 224)))
    cost(removed)   # == macs(ir.prune(labels=<the labels where removed is True>, compensate=False).model)
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..latency import MACs, Parameters

__all__ = ["width_cost"]


class _KeptSizes:
    """Kept element count of each of the snapshot model's parameters, as a function of the removed labels."""

    def __init__(self, snapshot: Any) -> None:
        model = snapshot.model
        tensors = dict(model.named_parameters(remove_duplicate=False))
        self.names: list[str] = []  # one name per distinct parameter
        self.sizes: list[torch.Size] = []
        index: dict[int, int] = {}
        for name, tensor in model.named_parameters():
            index[id(tensor)] = len(self.names)
            self.names.append(name)
            self.sizes.append(tensor.shape)
        self.sites: list[list[tuple[int, np.ndarray]]] = [[] for _ in self.names]
        seen: set[tuple[int, int]] = set()
        for site in snapshot.param_sites:
            tensor = tensors.get(site.name)
            if tensor is None or (id(tensor), site.dim) in seen:  # a buffer, or a tied parameter's other name
                continue
            seen.add((id(tensor), site.dim))
            self.sites[index[id(tensor)]].append((site.dim, site.label_index))
        #: every name of a parameter (tied ones have several) -> its place in ``names``
        self.position = {name: index[id(tensor)] for name, tensor in tensors.items()}

    def __call__(self, removed: np.ndarray) -> np.ndarray:
        """Kept elements of each parameter (in ``names`` order) when the labels where ``removed`` is True go."""
        kept = np.empty(len(self.names))
        for i, (size, sites) in enumerate(zip(self.sizes, self.sites)):
            dims = list(size)
            for dim, labels in sites:
                dims[dim] -= int(np.count_nonzero(removed[labels]))
            kept[i] = float(np.prod(dims)) if dims else 1.0
        return kept


def width_cost(snapshot: Any, function: Callable[[nn.Module], float]) -> Callable[[np.ndarray], float] | None:
    """``cost(removed)``: what ``function`` gives for the snapshot's model without the labels where the
    bool array ``removed`` is True, computed from the widths they leave; None where ``function`` is not
    one of the ready-made cost functions or its count is not all in weighted layers (then prune and call it).
    """
    if isinstance(function, Parameters):
        kept = _KeptSizes(snapshot)
        return lambda removed: float(kept(removed).sum())
    if isinstance(function, MACs):
        total, layers = function.per_layer(snapshot.model)
        if not np.isclose(sum(layers.values()), total, rtol=1e-9, atol=0.0):
            return None  # MACs outside weighted layers (attention's products, recurrent layers): not linear in a weight
        kept = _KeptSizes(snapshot)
        rows = [kept.position[f"{name}.weight" if name else "weight"] for name in layers]
        positions = np.array([macs / float(np.prod(kept.sizes[row])) for macs, row in zip(layers.values(), rows)])
        return lambda removed: float(positions @ kept(removed)[rows])
    return None
