"""Save a pruning as plain data and rebuild the pruned model without unpickling anything.

A pruned model is the unpruned architecture plus the labels removed: labels are numbered
deterministically from the traced graph, so tracing the same architecture again and pruning the same
label indices rebuilds the same pruned structure. With a weights-only ``state_dict``
(``torch.load(..., weights_only=True)``) this loads a pruned model without running pickled code,
unlike dill files of IRs or whole models.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

import torch
from torch import fx, nn

from .ir import Label, PruningIR

FORMAT = 1


def structure_fingerprint(model: fx.GraphModule) -> str:
    """A hash of the traced code and of every parameter's and buffer's name and shape (not values)."""
    digest = hashlib.sha1(model.code.encode())
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
    return digest.hexdigest()


def pruning_record(ir: PruningIR, labels: Sequence[Label]) -> dict[str, Any]:
    """Plain JSON-able data describing ``ir.prune(labels=labels)`` of the ``'main'`` snapshot."""
    snapshot = ir.snapshot()
    args, kwargs = snapshot._example if snapshot._example is not None else ((), {})
    if kwargs or not all(isinstance(a, torch.Tensor) for a in args):
        raise ValueError("pruning_record needs the IR to have been analysed with positional tensor inputs")
    return {
        "format": FORMAT,
        "structure": structure_fingerprint(snapshot.model),
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
    found = structure_fingerprint(ir.model)
    if found != record["structure"]:
        raise ValueError(f"the model's structure ({found[:12]}) is not the one the record was made from "
                         f"({record['structure'][:12]}); build the same architecture (and leaf_modules)")
    snapshot = ir.snapshot()
    pruned = ir.prune(labels=[snapshot.label(i) for i in record["labels"]]).model
    if state_dict is not None:
        pruned.load_state_dict(state_dict, strict=True)
    return pruned
