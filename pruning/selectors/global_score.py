"""GlobalScoreLabelSelector: the lowest-scored labels across the whole network."""
from __future__ import annotations

import numbers
from typing import Any

from .base import LabelSelector, removal_order, round_half_up, snapshot_scores

__all__ = ["GlobalScoreLabelSelector"]


class GlobalScoreLabelSelector(LabelSelector):
    """Remove the globally lowest-scored labels, never emptying a group.

    ``n_or_ratio`` in (0, 1) is a fraction of all prunable labels (rounded to the nearest count, halves
    up); ``>= 1`` is an integer count. The highest-scored label of each group (ties: the highest index)
    always stays, so at most ``len(labels) - len(groups)`` labels can go; asking for more is an error.
    Ties in score are broken by label index, so the same scores always give the same labels.
    """

    def __init__(self, n_or_ratio: float) -> None:
        if isinstance(n_or_ratio, bool) or not isinstance(n_or_ratio, numbers.Real):
            raise ValueError(f"n_or_ratio must be a number, got {n_or_ratio!r}")
        if not (0 < n_or_ratio < 1 or (n_or_ratio >= 1 and float(n_or_ratio).is_integer())):
            raise ValueError(
                f"n_or_ratio must be a ratio in (0, 1) or an integer count >= 1, got {n_or_ratio!r}"
            )
        self.n_or_ratio = n_or_ratio

    def select(self, ir: Any, snapshot_name: str = "main") -> list:
        snapshot = ir.snapshot(snapshot_name)
        scores = snapshot_scores(snapshot)
        total = sum(len(group) for group in snapshot.groups)
        count = round_half_up(self.n_or_ratio * total) if self.n_or_ratio < 1 else int(self.n_or_ratio)
        candidates = [label for group in snapshot.groups for label in removal_order(group, scores)[:-1]]
        if count > len(candidates):
            raise ValueError(
                f"cannot prune {count} labels (n_or_ratio={self.n_or_ratio!r}): at most {len(candidates)} of "
                f"{total} prunable labels can go, since each of the {len(snapshot.groups)} groups keeps one"
            )
        candidates.sort(key=lambda label: (scores[label.index], label.index))
        return sorted(candidates[:count], key=lambda label: label.index)
