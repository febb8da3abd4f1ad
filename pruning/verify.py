"""Check that pruning computes what the math says, on any model.

``equivalence_error`` zeroes every parameter element owned by the chosen labels (making them dead:
their weights, biases, norm scales and the consumers' input columns are all zero), then prunes
exactly those labels and compares the outputs of the zeroed model and the pruned one. Removing dead
channels must not change the outputs; a non-zero error means an op was sliced wrongly. Labels
flagged ``normalized`` (inside a LayerNorm's statistics) are not exact removals and are rejected.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils import _pytree as pytree

from .ir import Label, PruningIR
from .nodes import get_tensor


def zero_labels(ir: PruningIR, labels: Sequence[Label], name: str = "main") -> None:
    """Zero, in place, every parameter/buffer element owned by ``labels`` in snapshot ``name``."""
    snapshot = ir.snapshot(name)
    chosen = np.zeros(snapshot.num_labels, dtype=bool)
    chosen[[label.index for label in labels]] = True
    with torch.no_grad():
        for site in snapshot.param_sites:
            mask = chosen[site.label_index]
            if mask.any():
                tensor = get_tensor(snapshot.model, site.name)
                index = torch.from_numpy(np.flatnonzero(mask)).to(tensor.device)
                tensor.index_fill_(site.dim, index, 0.0)


def _leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _leaves(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _leaves(v)]
    return []


def equivalence_error(ir: PruningIR, labels: Sequence[Label], *inputs: Any,
                      dtype: torch.dtype | None = None) -> float:
    """Relative max difference between the model with ``labels`` dead and with them pruned.

    Works on a copy: ``ir``'s model is left as it was. ``dtype=torch.float64`` runs both models in
    double precision, which separates a slicing error from float32 rounding in very deep models.
    """
    snapshot = ir.snapshot()
    normalized = [label for label in labels if snapshot.analysis.normalized[label.index]]
    if normalized:
        raise ValueError(f"{normalized[0]!r} enters a LayerNorm's statistics: removing it is not exact, "
                         "so it cannot be checked for equivalence")
    work = ir.prune(labels=[])  # a copy
    zero_labels(work, [work.snapshot().label(label.index) for label in labels])
    pruned = work.prune(labels=[work.snapshot().label(label.index) for label in labels])
    if dtype is not None:
        work.model.to(dtype)
        pruned.model.to(dtype)
        inputs = pytree.tree_map_only(torch.Tensor, lambda t: t.to(dtype) if t.is_floating_point() else t, inputs)
    with torch.no_grad():
        before = _leaves(work.model.eval()(*inputs))
        after = _leaves(pruned.model.eval()(*inputs))
    worst = 0.0
    for a, b in zip(before, after, strict=True):
        if a.shape != b.shape:
            raise AssertionError(f"output shape changed from {tuple(a.shape)} to {tuple(b.shape)}")
        if a.numel() == 0:  # nothing to differ (a detector that found no box)
            continue
        scale = a.abs().max().item() or 1.0
        worst = max(worst, (a - b).abs().max().item() / scale)
    return worst


def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add small seeded noise to every floating parameter, in place, and return the model.

    Freshly initialised models often have all-zero layers (a zero classifier head, zero-init
    residual branches) that make any two models look equivalent; noise makes the check meaningful.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point():
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.add_(noise.to(parameter.device), alpha=scale)
    return model
