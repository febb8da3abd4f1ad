"""Structured (channel) pruning for PyTorch models.

Workflow (the seed API): build a :class:`PruningIR`, collect scores with :class:`LossAwareCriterion`,
select labels with a label selector, and ``ir.prune(labels=...)``.
"""
from . import latency
from .criterion import LossAwareCriterion
from .ir import Label, PruningIR, Snapshot
from .selectors import (ChannelsConstraint, GlobalScoreLabelSelector, IterativeLabelSelector,
                        KnapsackLabelSelector, UniformLabelSelector)
from .tracing import TracingError

__all__ = [
    "PruningIR",
    "Snapshot",
    "Label",
    "LossAwareCriterion",
    "UniformLabelSelector",
    "GlobalScoreLabelSelector",
    "KnapsackLabelSelector",
    "IterativeLabelSelector",
    "ChannelsConstraint",
    "TracingError",
    "latency",
]
