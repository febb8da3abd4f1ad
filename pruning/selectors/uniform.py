"""UniformLabelSelector: the same fraction of labels leaves every prunable group."""
from __future__ import annotations

from typing import Any

from .base import LabelSelector, removal_order, round_half_up, snapshot_scores

__all__ = ["UniformLabelSelector"]


class UniformLabelSelector(LabelSelector):
    """Remove ``pruning_ratio`` of the labels of every group, lowest scores first.

    A group of ``n`` labels loses ``round(pruning_ratio * n)`` (nearest integer, halves up, so the
    network-wide fraction stays close to the ratio rather than drifting down as ``floor`` would on many
    small groups), capped at ``n - 1`` so no group is emptied.
    """

    def __init__(self, pruning_ratio: float) -> None:
        if not 0.0 <= pruning_ratio < 1.0:
            raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio!r}")
        self.pruning_ratio = float(pruning_ratio)

    def select(self, ir: Any, snapshot_name: str = "main") -> list:
        snapshot = ir.snapshot(snapshot_name)
        scores = snapshot_scores(snapshot)
        selected = []
        for group in snapshot.groups:
            count = min(round_half_up(self.pruning_ratio * len(group)), len(group) - 1)
            selected.extend(removal_order(group, scores)[:count])
        return sorted(selected, key=lambda label: label.index)
