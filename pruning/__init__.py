"""Structured (channel) pruning for PyTorch models.

Workflow (the seed API): build a :class:`PruningIR`, collect scores with :class:`LossAwareCriterion`,
select labels with a label selector, and ``ir.prune(labels=...)``.
"""
from .ir import Label, PruningIR, Snapshot
from .tracing import TracingError

__all__ = ["PruningIR", "Snapshot", "Label", "TracingError"]
