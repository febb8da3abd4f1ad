"""Structured (channel) pruning for PyTorch models.

Workflow (the seed API): build a :class:`PruningIR`, collect scores with :class:`LossAwareCriterion`
(or, without a loss or data, :class:`MagnitudeCriterion`), select labels with a label selector, and
``ir.prune(labels=...)``.
"""
from . import latency
from .criterion import LossAwareCriterion
from .ir import Label, PruningIR, Snapshot
from .magnitude import MagnitudeCriterion
from .selectors import (ChannelsConstraint, GlobalScoreLabelSelector, IterativeLabelSelector,
                        KnapsackLabelSelector, UniformLabelSelector)
from .tracing import TracingError

__all__ = [
    "PruningIR",
    "Snapshot",
    "Label",
    "LossAwareCriterion",
    "MagnitudeCriterion",
    "UniformLabelSelector",
    "GlobalScoreLabelSelector",
    "KnapsackLabelSelector",
    "IterativeLabelSelector",
    "ChannelsConstraint",
    "TracingError",
    "latency",
]
