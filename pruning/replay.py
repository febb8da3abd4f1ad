"""Save a pruning as plain data and rebuild the pruned model without unpickling anything.

A pruned model is the unpruned architecture plus the labels removed: labels are numbered
deterministically from the traced graph, so tracing the same architecture again and pruning the same
label indices rebuilds the same pruned structure. With a weights-only ``state_dict``
(``torch.load(..., weights_only=True)``) this loads a pruned model without running pickled code,
unlike dill files of IRs or whole models.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvTransposeNd

from .compensation import add_to_bias, method, plan
from .ir import Label, PruningIR, fingerprint
from .labels import check_selection
from .registry import Rule

FORMAT = 1


def pruning_record(ir: PruningIR, labels: Sequence[Label], compensate: bool | str | None = None) -> dict[str, Any]:
    """Plain JSON-able data describing ``ir.prune(labels=labels, compensate=compensate)`` of the
    ``'main'`` snapshot: the structure, inputs and labels, and the layers that compensation gives a
    bias they did not have (``biases_added``; their values, like the compensated weights, come with the
    state_dict)."""
    snapshot = ir.snapshot()
    args = snapshot.example_args()
    indices = check_selection(snapshot, list(labels))
    added = []
    if method(snapshot, compensate):
        keep = np.ones(snapshot.num_labels, dtype=bool)
        keep[indices] = False
        modules = dict(snapshot.model.named_modules())
        # where a bias change goes does not depend on the method: the mean's plan names the same layers
        # without the regression's solves
        added = sorted(target for target, attribute, _ in plan(snapshot, keep, "mean").shifts
                       if attribute == "bias" and modules[target].bias is None)
    return {
        "format": FORMAT,
        "structure": fingerprint(snapshot.model, values=False),
        "inputs": [{"shape": list(a.shape), "dtype": str(a.dtype).removeprefix("torch.")} for a in args],
        "labels": sorted(int(i) for i in indices),
        "biases_added": added,
    }


def replay(model: nn.Module, record: Mapping[str, Any],
           state_dict: Mapping[str, torch.Tensor] | None = None, *,
           leaf_modules: Sequence[type | nn.Module] | None = None,
           rules: dict[type | Callable | str, Rule] | None = None) -> nn.Module:
    """Rebuild the pruned model described by ``record`` from a fresh, unpruned ``model``.

    ``model`` must have the architecture the record was made from (built by your own code, e.g.
    the same factory) and the IR's ``leaf_modules`` and ``rules``; a different architecture is a ``ValueError``. Layers the original pruning gave
    a bias (``biases_added``) get a zero one here. ``state_dict`` (optional) is loaded strictly into the
    pruned model: without it the compensated biases stay zero.
    """
    if record.get("format") != FORMAT:
        raise ValueError(f"unknown pruning record format {record.get('format')!r}; expected {FORMAT}")
    example = tuple(torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"])) for spec in record["inputs"])
    ir = PruningIR(model, leaf_modules=leaf_modules, example_input=example, rules=rules)
    found = fingerprint(ir.model, values=False)
    if found != record["structure"]:
        raise ValueError(f"the model's structure ({found[:12]}) is not the one the record was made from "
                         f"({record['structure'][:12]}); build the same architecture (and leaf_modules, rules)")
    snapshot = ir.snapshot()
    pruned = ir.prune(labels=[snapshot.label(i) for i in record["labels"]], compensate=False).model
    for target in record.get("biases_added", []):  # filled by the state_dict
        module = pruned.get_submodule(target)
        add_to_bias(module, torch.zeros(module.weight.shape[1 if isinstance(module, _ConvTransposeNd) else 0]))
    if state_dict is not None:
        pruned.load_state_dict(state_dict, strict=True)
    return pruned
