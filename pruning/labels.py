"""Labels: the unit of pruning, and the checks a selection of labels must pass."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Snapshot


@dataclass(frozen=True, order=True, init=False)
class Label:
    """One prunable unit: a set of channels (in every tensor and parameter they reach) that must be
    removed together. ``index`` numbers the labels of one snapshot of one IR."""

    ir_uid: str
    snapshot: str
    index: int

    def __init__(self, ir_uid: str, snapshot: str, index: int) -> None:
        # Frozen like the dataclass default, but filled through __dict__: the generated __init__
        # calls object.__setattr__ per field, which is most of the cost of making the thousands of
        # labels of a model.
        fields = self.__dict__
        fields["ir_uid"], fields["snapshot"], fields["index"] = ir_uid, snapshot, index

    def __repr__(self) -> str:
        return f"Label({self.index}, snapshot={self.snapshot!r}, ir={self.ir_uid[:8]})"


def check_selection(snapshot: "Snapshot", labels: Iterable[object]) -> np.ndarray:
    """Validate labels to prune from ``snapshot``; return their indices.

    Raises ``TypeError`` for non-labels and ``ValueError`` for labels of another IR or snapshot,
    duplicates, unprunable labels, and selections that would empty a group.
    """
    labels = list(labels)
    # Set-based checks run at C speed on the common, valid selection; the first offender is named.
    if set(map(type, labels)) - {Label}:
        bad = next((label for label in labels if not isinstance(label, Label)), None)
        if bad is not None:
            raise TypeError(f"labels must be pruning.Label objects from this IR, got {bad!r}")
    if labels and ({label.ir_uid for label in labels} != {snapshot.ir_uid}
                   or {label.snapshot for label in labels} != {snapshot.name}):
        for label in labels:
            if label.ir_uid != snapshot.ir_uid:
                raise ValueError(f"{label!r} belongs to another PruningIR (uid {label.ir_uid[:8]}, this one "
                                 f"is {snapshot.ir_uid[:8]}); select labels from the IR you prune")
            if label.snapshot != snapshot.name:
                raise ValueError(f"{label!r} belongs to snapshot {label.snapshot!r}, not {snapshot.name!r}; "
                                 f"pass name={label.snapshot!r} or select labels of this snapshot")
    indices = np.fromiter((label.index for label in labels), dtype=np.int64, count=len(labels))
    out_of_range = np.flatnonzero((indices < 0) | (indices >= snapshot.num_labels))
    if len(out_of_range):
        raise ValueError(f"{labels[out_of_range[0]]!r} is out of range: this snapshot has "
                         f"{snapshot.num_labels} labels")
    order = np.argsort(indices, kind="stable")
    repeats = order[1:][indices[order][1:] == indices[order][:-1]]
    if len(repeats):
        raise ValueError(f"{labels[repeats.min()]!r} is selected twice; pass each label once")
    unprunable = np.flatnonzero(~snapshot.analysis.prunable[indices])
    if len(unprunable):
        raise ValueError(f"{labels[unprunable[0]]!r} is unprunable (its channels reach a model input or "
                         "output, or an op the IR does not understand); select from snapshot.labels only")
    chosen = np.zeros(snapshot.num_labels, dtype=bool)
    chosen[indices] = True
    for number, group in enumerate(snapshot.analysis.groups):
        if chosen[group].all():
            raise ValueError(f"the selection removes all {len(group)} labels of group {number} "
                             f"(labels {group[:5].tolist()}...); keep at least one label of every group")
    return indices


def trace_back(before: "Snapshot", removed: np.ndarray, after: "Snapshot") -> np.ndarray:
    """For each label of ``after``, the label of ``before`` whose channels it holds (-1: none).

    ``after`` is the snapshot of ``before``'s model pruned by the label indices ``removed``. Surgery keeps
    node names and the order of the surviving channels, so each node output dim and parameter dim of
    ``after`` lists the kept channels of the same dim of ``before`` in order; pairing them maps labels.
    This lets a selection made on a pruned model be stated in the labels of the model it came from.
    """
    old, new = before.analysis, after.analysis
    keep = np.ones(old.num_labels, dtype=bool)
    keep[removed] = False
    origin = np.full(new.num_labels, -1, dtype=np.int64)

    def pair(old_labels: np.ndarray, new_labels: np.ndarray, where: str) -> None:
        kept = old_labels[keep[old_labels]]
        if len(kept) != len(new_labels):
            raise ValueError(f"{where}: {len(new_labels)} channels after pruning, {len(kept)} kept before; "
                             "'after' is not this pruning of 'before'")
        known = origin[new_labels]
        if ((known >= 0) & (known != kept)).any():
            raise ValueError(f"{where}: a label of the pruned model holds channels of two labels of the original")
        origin[new_labels] = kept

    def walk(old_ids: Any, new_ids: Any, where: str) -> None:
        if isinstance(old_ids, np.ndarray) and isinstance(new_ids, np.ndarray):
            pair(old.label_of_id[old_ids], new.label_of_id[new_ids], where)
        elif isinstance(old_ids, (tuple, list)) and isinstance(new_ids, (tuple, list)):
            for o, n in zip(old_ids, new_ids):
                walk(o, n, where)

    for name, ids in old.node_ids.items():
        if name in new.node_ids:
            walk(ids, new.node_ids[name], f"node {name!r}")
    new_sites = {(site.name, site.dim): site for site in new.sites}
    for site in old.sites:
        if (site.name, site.dim) in new_sites:
            pair(site.label_index, new_sites[site.name, site.dim].label_index, f"{site.name} dim {site.dim}")
    missing = np.flatnonzero(new.prunable & (origin < 0))
    if len(missing):
        raise ValueError(f"labels {missing[:5].tolist()} of the pruned model trace back to no label of the original")
    return origin
