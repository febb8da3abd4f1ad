"""Structured (channel) pruning for PyTorch models.

The workflow follows the interface of ENOT's ``enot.pruning_v2``: build a [`PruningIR`][],
collect scores with [`LossAwareCriterion`][] (or, without a loss or data,
[`MagnitudeCriterion`][]), select labels with a label selector, and
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
