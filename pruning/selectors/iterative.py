"""Iterative selection: reach a cost target in steps, re-scoring the pruned model between them."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..labels import trace_back
from .base import LabelSelector, snapshot_scores

__all__ = ["IterativeLabelSelector"]

_RETRIES = 8


class IterativeLabelSelector(LabelSelector):
    """Select labels to meet ``target_latency`` in ``steps`` steps, re-calibrating between steps.

    Loss-aware scores are first-order estimates of removing one label at a time; when a target removes
    most of a group at once they rank worse the further the model moves from where they were measured.
    This selector moves in steps: step ``k`` of ``steps`` selects, with ``make_selector(budget_k)``, on
    the model pruned by the steps before it, where ``budget_k`` goes linearly (in the cost's units) from
    the unpruned cost to ``target_latency``; after each step but the last the pruned model goes to
    ``between_steps`` (for example BatchNorm re-estimation, which changes the next scores) and its new IR
    to ``calibrate`` (which must fill its scores, e.g. with [`LossAwareCriterion`][] over the
    same batches as the first calibration, or [`MagnitudeCriterion`][], whose relative norms
    change as the layers around a channel lose theirs).

    Step 1 uses the scores ``ir`` already has (calibrate it first, as for any selector). The result is a
    list of labels *of ``ir``*: ``ir.prune(labels=...)`` gives in one go the architecture that the steps
    reached, and ``ir``'s unchanged weights, because every step's labels are traced back to the labels of
    ``ir`` whose channels they hold. What ``between_steps`` did to the intermediate models (BatchNorm
    statistics) is not carried over: re-estimate BatchNorm after pruning, as before fine-tuning anyway.
    Intermediate models are pruned without mean compensation (``compensate=False``), so that one prune
    of the result equals the steps; ``ir.prune`` of the result compensates with ``ir``'s own means.
    With ``steps=1`` this is ``make_selector(target_latency).select(ir)``. Where a pruned model has finer
    labels than ``ir`` (a grouped convolution left with one group prunes per channel), a step keeps only
    what it selects of whole labels of ``ir``, so the steps can then differ from pruning step by step.

    Args:
        make_selector: builds the selector of one step from its cost budget, e.g.
            ``lambda budget: KnapsackLabelSelector(budget, latency_calculation_function=macs)``.
        target_latency: the final cost, in the units of ``latency_calculation_function``; must be below
            the cost of ``ir``'s model.
        latency_calculation_function: the cost of a model (any monotone cost: MACs, measured latency...).
        calibrate: fills the scores of an intermediate IR (called ``steps - 1`` times).
        steps: number of selection steps (>= 1).
        between_steps: optional; called with each intermediate pruned model before it is calibrated,
            may change it in place (not its structure).
        verbose: show a progress bar over the steps.
    """

    def __init__(
        self,
        make_selector: Callable[[float], LabelSelector],
        target_latency: float,
        latency_calculation_function: Callable[[nn.Module], float],
        calibrate: Callable[[Any], None],
        steps: int = 3,
        between_steps: Callable[[nn.Module], None] | None = None,
        verbose: bool = True,
    ) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if not target_latency > 0:
            raise ValueError(f"target_latency must be > 0, got {target_latency!r}")
        self.make_selector = make_selector
        self.target_latency = float(target_latency)
        self.latency_calculation_function = latency_calculation_function
        self.calibrate = calibrate
        self.steps = steps
        self.between_steps = between_steps
        self.verbose = verbose

    def select(self, ir: Any, snapshot_name: str = "main") -> list:
        snapshot = ir.snapshot(snapshot_name)
        start = float(self.latency_calculation_function(snapshot.model))
        if self.target_latency >= start:
            raise ValueError(f"target_latency {self.target_latency:.6g} is not below the model's cost {start:.6g}: "
                             "there is nothing to select (lower the target)")
        current, name = ir, snapshot_name
        origin = np.arange(snapshot.num_labels)  # label of `current` -> label of `ir`
        removed: set[int] = set()
        for step in tqdm(range(1, self.steps + 1), desc="iterative selection", unit="step", disable=not self.verbose):
            budget = start - (start - self.target_latency) * step / self.steps
            indices = self._select_step(current, name, origin, budget, last=step == self.steps)
            removed.update(origin[indices].tolist())
            if step == self.steps:
                break
            before = current.snapshot(name)
            current, name = current.prune(name, labels=[before.label(i) for i in indices], compensate=False), "main"
            after = current.snapshot("main")
            back = trace_back(before, indices, after)
            origin = np.where(back >= 0, origin[back], -1)
            if self.between_steps is not None:
                self.between_steps(after.model)
            self.calibrate(current)
        return [snapshot.label(index) for index in sorted(removed)]

    def _select_step(self, ir: Any, name: str, origin: np.ndarray, budget: float, last: bool) -> np.ndarray:
        """Label indices of ``ir`` to remove at this step, in whole labels of the original model.

        A pruned model can have finer labels than the original (a grouped convolution left with one group
        prunes per channel, not per group). Of the labels that share an original label, a selection keeps
        only those it takes all of. At the last step, where nothing comes after to make up for the dropped
        ones, the shared labels it took part of are scored above every other label (in this intermediate
        IR only) and the selection is made again, at most ``_RETRIES`` times.
        """
        snapshot = ir.snapshot(name)
        sizes = np.bincount(origin[origin >= 0], minlength=int(origin.max()) + 1)
        for _ in range(_RETRIES):
            chosen = np.asarray([label.index for label in self.make_selector(budget).select(ir, name)], dtype=np.int64)
            whole = np.bincount(origin[chosen], minlength=len(sizes))[origin[chosen]] == sizes[origin[chosen]]
            if not last or whole.all():
                return chosen[whole]
            scores = torch.from_numpy(snapshot_scores(snapshot))
            partial = np.isin(origin, origin[chosen[~whole]])
            scores[torch.from_numpy(partial)] = scores.abs().sum() + 1
            snapshot.scores = scores
        raise ValueError(f"the last step keeps selecting part of a label of the original model (labels "
                         f"{sorted(set(origin[chosen[~whole]].tolist()))[:5]}) after {_RETRIES} tries: "
                         "use fewer steps")
