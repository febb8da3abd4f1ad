"""Save a pruning as plain data and rebuild the pruned model without unpickling anything.

A pruned model is the unpruned architecture plus the labels removed: labels are numbered
deterministically from the traced graph, so tracing the same architecture again and pruning the same
label indices rebuilds the same pruned structure. With a weights-only ``state_dict``
(``torch.load(..., weights_only=True)``) this loads a pruned model without running pickled code,
unlike dill files of IRs or whole models.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .ir import Label, PruningIR, fingerprint

FORMAT = 1


def pruning_record(ir: PruningIR, labels: Sequence[Label]) -> dict[str, Any]:
    """Plain JSON-able data describing ``ir.prune(labels=labels)`` of the ``'main'`` snapshot."""
    snapshot = ir.snapshot()
    args = snapshot.example_args()
    return {
        "format": FORMAT,
        "structure": fingerprint(snapshot.model, values=False),
        "inputs": [{"shape": list(a.shape), "dtype": str(a.dtype).removeprefix("torch.")} for a in args],
        "labels": sorted(label.index for label in labels),
    }


def replay(model: nn.Module, record: Mapping[str, Any],
           state_dict: Mapping[str, torch.Tensor] | None = None, *,
           leaf_modules: Sequence[type | nn.Module] | None = None) -> nn.Module:
    """Rebuild the pruned model described by ``record`` from a fresh, unpruned ``model``.

    ``model`` must have the architecture the record was made from (built by your own code, e.g.
    the same factory); a different architecture is a ``ValueError``. ``state_dict`` (optional) is
    loaded strictly into the pruned model.
    """
    if record.get("format") != FORMAT:
        raise ValueError(f"unknown pruning record format {record.get('format')!r}; expected {FORMAT}")
    example = tuple(torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"])) for spec in record["inputs"])
    ir = PruningIR(model, leaf_modules=leaf_modules, example_input=example)
    found = fingerprint(ir.model, values=False)
    if found != record["structure"]:
        raise ValueError(f"the model's structure ({found[:12]}) is not the one the record was made from "
                         f"({record['structure'][:12]}); build the same architecture (and leaf_modules)")
    snapshot = ir.snapshot()
    pruned = ir.prune(labels=[snapshot.label(i) for i in record["labels"]]).model
    if state_dict is not None:
        pruned.load_state_dict(state_dict, strict=True)
    return pruned
