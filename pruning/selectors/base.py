"""LabelSelector interface and the helpers the selectors share."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = ["LabelSelector"]


class LabelSelector(ABC):
    """Chooses which prunable labels of a calibrated snapshot to remove."""

    @abstractmethod
    def select(self, ir: Any, snapshot_name: str = "main") -> list:
        """Return the labels to prune (ascending index); every group keeps at least one label."""


def snapshot_scores(snapshot: Any) -> np.ndarray:
    """The snapshot's scores as float64 numpy, or a clear error when it was not calibrated."""
    scores = snapshot.scores
    if scores is None:
        raise RuntimeError(
            f"snapshot {snapshot.name!r} has no scores: calibrate with LossAwareCriterion first "
            "(with LossAwareCriterion(ir) as collector: loss_fn(collector(x), y).backward()), or score "
            "the weights without data (with MagnitudeCriterion(ir): pass)"
        )
    values = np.asarray(scores.detach().cpu().double() if hasattr(scores, "detach") else scores, dtype=np.float64)
    if values.shape != (snapshot.num_labels,):
        raise ValueError(f"scores have shape {values.shape}, expected ({snapshot.num_labels},): recalibrate")
    if not np.isfinite(values).all():
        bad = values[~np.isfinite(values)][0]
        raise ValueError(f"scores contain a non-finite value ({bad}): recalibrate with a finite loss")
    return values


def removal_order(group: list, scores: np.ndarray) -> list:
    """Labels of a group in the order they leave: ascending score, ties by ascending label index."""
    return sorted(group, key=lambda label: (scores[label.index], label.index))


def round_half_up(x: float) -> int:
    """Nearest integer, halves up; absorbs float noise such as 0.7 * 10 = 7.000000000000001."""
    return math.floor(x + 0.5)
