"""KnapsackLabelSelector: keep the most score under a latency budget, by iterated multiple-choice knapsack.

Latency is not additive over labels (MACs of a conv are the product of its input and output widths), so
the selector linearises it around an anchor selection and corrects with real measurements:

1. Anchor costs: for every group, prune a chunk (a quarter of its kept labels, the next ones to leave)
   on top of the anchor and measure the real latency; the drop per unit of label weight is that group's
   marginal cost. A label's weight is the number of tensor elements it owns (equal within most groups).
2. Solve a multiple-choice knapsack with PuLP/CBC: per group choose how many labels to keep (only counts
   the ChannelsConstraint allows), maximising the kept score subject to the linear latency estimate being
   within a budget. Labels leave in a fixed order per group (see ``strict_label_order``), so a count is a
   selection.
3. Prune, measure the real latency, and move the budget by a secant step on (budget, real latency) until
   the real latency lands in [0.98, 1.0] x target (aiming at 0.99) or ``max_iterations`` solves are done.
4. Polish once: the landing was planned with costs measured at the anchor, possibly far away; re-measure
   the costs at the landing and search again from there, which moves labels to where they now cost less.

A latency function that returns two different values for the same model (measured time) is noisy: a
quarter of one group changes it by less than the noise, so the marginal costs then take their shape from
MACs (``pruning.latency.macs`` on the snapshot's example input), scaled to the measured latency at the
anchor; the real measurements still steer the budget. CPU kernels run slower at odd channel counts, so
measured latency is not monotone in the kept channels: use ``ChannelsConstraint(multiple_of=16)`` (or 8)
with it.

Large reductions go in steps (as ENOT ``pruning_v2``'s ``max_relative_latency_step=0.5``): while the target is
below half the anchor latency, one solve aims at half of it and the result becomes the new anchor, whose
costs are re-measured. The best feasible selection found (highest kept score with latency <= target) is
returned. A target at or above the unpruned latency selects nothing; a target below the latency of the
smallest allowed model raises ValueError with that latency.
"""
from __future__ import annotations

import math
import numbers
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pulp
import torch.nn as nn

from ..latency import macs
from .base import LabelSelector, removal_order, snapshot_scores
from .width_cost import width_cost

__all__ = ["ChannelsConstraint", "KnapsackLabelSelector"]

_MAX_RELATIVE_STEP = 0.5  # one solve aims at most this fraction below the anchor latency
_CHUNK_FRACTION = 0.25  # share of a group's kept labels pruned to measure its marginal cost
_AIM = 0.99  # aim at the middle of the accepted window [_LOW, 1] x target
_LOW = 0.98


@dataclass(frozen=True)
class ChannelsConstraint:
    """Label counts a group may keep: multiples of ``multiple_of``, at least ``min_channels``.

    Counts are of labels kept per group (channels, features or heads, whatever the group's labels are).
    Keeping the whole group is always allowed, even if its size is not a multiple, so a layer can stay
    unpruned; a group smaller than ``min_channels`` is left as it is. The default, ``None`` in the
    selector, is ``ChannelsConstraint(1, 1)``: any count from 1 to the group size.
    """

    multiple_of: int = 1
    min_channels: int = 1

    def __post_init__(self) -> None:
        for field in ("multiple_of", "min_channels"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"ChannelsConstraint.{field} must be an integer >= 1, got {value!r}")

    def allowed_counts(self, group_size: int) -> list[int]:
        """Ascending kept counts allowed for a group of ``group_size`` labels; ends with ``group_size``."""
        start = math.ceil(self.min_channels / self.multiple_of) * self.multiple_of
        return list(range(start, group_size, self.multiple_of)) + [group_size]


class _Group:
    """A prunable group: labels in leaving order, allowed kept counts, kept score and weight by count."""

    def __init__(self, order: list, scores: np.ndarray, weights: np.ndarray, counts: list[int]) -> None:
        self.order = order
        self.counts = counts
        self.indices = np.array([label.index for label in order], dtype=np.int64)
        kept_first = self.indices[::-1]  # the last to leave are kept first
        self.kept_score = np.concatenate([[0.0], np.cumsum(scores[kept_first])])
        self.kept_weight = np.concatenate([[0.0], np.cumsum(weights[kept_first])])

    def pruned(self, kept: int) -> list:
        return self.order[: len(self.order) - kept]


class KnapsackLabelSelector(LabelSelector):
    """Maximise the kept score subject to ``latency_calculation_function(pruned_model) <= target_latency``.

    ``latency_calculation_function(model) -> float`` is any monotone cost in the units of the target
    (``pruning.latency.macs``, ``parameters``, ``measured_latency`` or your own). With
    ``strict_label_order=True`` the labels of a group leave in ascending score order (a prefix);
    with ``False`` in ascending score per unit of latency weight, which differs only where labels of a
    group own different numbers of elements. ``channels_constraint`` restricts kept counts per group
    (``ChannelsConstraint``). ``max_iterations`` bounds the knapsack solves (each followed by a real
    measurement); ``solver_execution_time_limit`` is CBC's time limit per solve in seconds; ``verbose``
    prints one line per iteration; ``history`` keeps those records (latency, kept score, solver status,
    seconds) of the last ``select``. See the module docstring for the algorithm.

    What the cost function costs: [`latency.macs`][pruning.latency.macs] (for models whose MACs are all in
    convolutions and linear layers) and [`latency.parameters`][pruning.latency.parameters] are computed from
    the widths a selection leaves ([`width_cost`][pruning.selectors.width_cost.width_cost]), with one real
    prune and count to check it; then the MILP solves take most of the time. Any other function is called
    on a pruned copy of the model for every estimate: one prune and call per group at each anchor (one to
    three anchors) and one per solve, so a function of your own that takes a second on a 50-group model
    adds about a minute.
    """

    def __init__(
        self,
        target_latency: float,
        latency_calculation_function: Callable[[nn.Module], float],
        strict_label_order: bool = True,
        channels_constraint: ChannelsConstraint | None = None,
        max_iterations: int = 15,
        solver_execution_time_limit: float = 60,
        verbose: bool = True,
    ) -> None:
        if not _is_number(target_latency) or not 0 < target_latency < math.inf:
            raise ValueError(f"target_latency must be a positive finite number, got {target_latency!r}")
        if not callable(latency_calculation_function):
            raise ValueError(f"latency_calculation_function must be callable, got {latency_calculation_function!r}")
        if channels_constraint is not None and not isinstance(channels_constraint, ChannelsConstraint):
            raise ValueError(f"channels_constraint must be a ChannelsConstraint or None, got {channels_constraint!r}")
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, numbers.Integral) or max_iterations < 1:
            raise ValueError(f"max_iterations must be an integer >= 1, got {max_iterations!r}")
        if not _is_number(solver_execution_time_limit) or not solver_execution_time_limit > 0:
            raise ValueError(f"solver_execution_time_limit must be a positive number, got {solver_execution_time_limit!r}")
        self.target_latency = float(target_latency)
        self.latency_calculation_function = latency_calculation_function
        self.strict_label_order = strict_label_order
        self.channels_constraint = channels_constraint or ChannelsConstraint()
        self.max_iterations = int(max_iterations)
        self.solver_execution_time_limit = float(solver_execution_time_limit)
        self.verbose = verbose
        self.history: list[dict[str, Any]] = []

    def select(self, ir: Any, snapshot_name: str = "main") -> list:
        snapshot = ir.snapshot(snapshot_name)
        scores = snapshot_scores(snapshot)
        groups = self._groups(snapshot, scores)
        target = self.target_latency
        cache: dict[tuple[int, ...], float] = {}
        self.history = []

        def removed(kept: tuple[int, ...]) -> np.ndarray:
            mask = np.zeros(snapshot.num_labels, dtype=bool)
            for group, k in zip(groups, kept):
                mask[group.indices[: len(group.order) - k]] = True
            return mask

        def pruned_model(kept: tuple[int, ...]) -> nn.Module:
            labels = [label for group, k in zip(groups, kept) for label in group.pruned(k)]
            # the cost of the structure: mean compensation (up to half the time of a prune) is left out
            return ir.prune(snapshot_name, labels=labels, compensate=False).model if labels else snapshot.model

        def by_pruning(function: Callable[[nn.Module], float]) -> Callable[[tuple[int, ...]], float]:
            return lambda kept: _call_latency(function, pruned_model(kept))

        def from_widths(function: Callable[[nn.Module], float]) -> Callable[[tuple[int, ...]], float] | None:
            """The cost computed from the widths a selection leaves, for the ready-made cost functions."""
            fast = width_cost(snapshot, function)
            return None if fast is None else (lambda kept: fast(removed(kept)))

        cost = from_widths(self.latency_calculation_function)
        widths = cost is not None
        cost = cost or by_pruning(self.latency_calculation_function)

        def measure(kept: tuple[int, ...]) -> float:
            if kept not in cache:
                cache[kept] = cost(kept)
            return cache[kept]

        proxy_cache: dict[tuple[int, ...], float] = {}
        proxy_cost: list[Callable[[tuple[int, ...]], float]] = []

        def proxy(kept: tuple[int, ...]) -> float:
            """MACs of a selection: a deterministic stand-in for a noisy latency function's shape."""
            if kept not in proxy_cache:
                if not proxy_cost:
                    count = macs(snapshot.example_args())
                    proxy_cost.append(from_widths(count) or by_pruning(count))
                proxy_cache[kept] = proxy_cost[0](kept)
            return proxy_cache[kept]

        def kept_score(kept: tuple[int, ...]) -> float:
            return float(sum(group.kept_score[k] for group, k in zip(groups, kept)))

        def kept_share(kept: tuple[int, ...]) -> float:
            return kept_score(kept) / (kept_score(full) or 1.0)

        full = tuple(len(group.order) for group in groups)
        anchor, anchor_latency = full, measure(full)
        if anchor_latency <= target:
            self._log(f"unpruned latency {anchor_latency:.6g} is within target {target:.6g}: nothing to prune")
            return []
        minimal = tuple(group.counts[0] for group in groups)
        if widths and not math.isclose(measure(minimal), real := _call_latency(
                self.latency_calculation_function, pruned_model(minimal)), rel_tol=1e-9):
            warnings.warn(f"the cost computed from the widths ({measure(minimal):.6g}) differs from the pruned "
                          f"model's ({real:.6g}) on {type(snapshot.root).__name__}: measuring by pruning instead "
                          "(slower; please report the model)", RuntimeWarning, stacklevel=2)
            cost, widths = by_pruning(self.latency_calculation_function), False
            cache.clear()
        if measure(minimal) > target:
            raise ValueError(
                f"target_latency={target:.6g} is unreachable: the smallest allowed model (one label per group, "
                f"or the ChannelsConstraint minimum) has latency {measure(minimal):.6g}; raise the target"
            )
        # A latency function that gives two values for the same model is noisy (measured time): its
        # per-group differences drown in the noise, so the costs take their shape from MACs, scaled to
        # the measured latency at the anchor; real measurements still steer the budget.
        noisy = not widths and _call_latency(self.latency_calculation_function, snapshot.model) != anchor_latency
        if noisy:
            self._log("latency function is noisy: marginal costs from MACs scaled to measured latency")
        best = minimal
        iteration, polished = 0, False
        while iteration < self.max_iterations:
            started = time.perf_counter()
            if noisy:
                scale = anchor_latency / (proxy(anchor) or 1.0)
                costs = self._marginal_costs(groups, anchor, anchor_latency,
                                             lambda kept, scale=scale: proxy(kept) * scale)
            else:
                costs = self._marginal_costs(groups, anchor, anchor_latency, measure)
            self._log(f"anchor latency {anchor_latency:.6g}: marginal costs of {len(groups)} groups "
                      f"measured in {time.perf_counter() - started:.1f}s")
            final = anchor_latency * (1 - _MAX_RELATIVE_STEP) <= target
            goal = target * _AIM if final else anchor_latency * (1 - _MAX_RELATIVE_STEP)
            # Budget == anchor latency selects the anchor, except when polishing, where the solver reallocates.
            search = _BudgetSearch(goal, *(() if polished else (anchor_latency, anchor_latency)))
            budget = goal
            while iteration < self.max_iterations:
                iteration += 1
                started = time.perf_counter()
                kept, status = self._solve(groups, costs, anchor, anchor_latency, budget, polished)
                latency = measure(kept)
                if latency <= target and kept_score(kept) > kept_score(best):
                    best = kept
                self.history.append({"iteration": iteration, "latency": latency, "target": target,
                                     "kept_score": kept_score(kept), "status": status,
                                     "seconds": time.perf_counter() - started})
                self._log(
                    f"iteration {iteration}: latency {latency:.6g} target {target:.6g} ({latency / target:.3f}) "
                    f"kept score {kept_share(kept):.2%} solver {status} "
                    f"time {time.perf_counter() - started:.1f}s"
                )
                if not final or _LOW * target <= latency <= target:
                    break
                budget = search.next(budget, latency)
                if budget is None:
                    self._log("no selection between the nearest budgets meets the window; stopping")
                    break
            landed = final and _LOW * target <= latency <= target
            if final and (polished or not landed):
                break
            # A landing was solved with costs linearised far from it: re-linearise there once and re-solve.
            polished = landed
            anchor, anchor_latency = kept, latency
        self._log(f"selected: latency {measure(best):.6g} target {target:.6g} ({measure(best) / target:.3f}), "
                  f"kept score {kept_share(best):.2%}")
        return sorted((label for group, k in zip(groups, best) for label in group.pruned(k)), key=lambda l: l.index)

    def _groups(self, snapshot: Any, scores: np.ndarray) -> list[_Group]:
        weights = _label_weights(snapshot)
        groups = []
        for labels in snapshot.groups:
            index = np.array([label.index for label in labels])
            group_weights = weights[index]
            mean = group_weights.mean()
            weights[index] = group_weights / mean if mean > 0 else 1.0
            if self.strict_label_order:
                order = removal_order(labels, scores)
            else:
                density = {label: scores[label.index] / max(weights[label.index], 1e-12) for label in labels}
                order = sorted(labels, key=lambda label: (density[label], label.index))
            groups.append(_Group(order, scores, weights, self.channels_constraint.allowed_counts(len(labels))))
        return groups

    def _marginal_costs(self, groups, anchor, anchor_latency, measure) -> np.ndarray:
        """Latency drop per unit of kept label weight for each group, measured by pruning a chunk of it."""
        costs = np.zeros(len(groups))
        for g, (group, kept) in enumerate(zip(groups, anchor)):
            size = len(group.order)
            if size == 1:
                continue
            if kept > 1:
                other = kept - min(kept - 1, max(1, round(_CHUNK_FRACTION * kept)))
            else:
                other = kept + max(1, round(_CHUNK_FRACTION * (size - kept)))
            probe = anchor[:g] + (other,) + anchor[g + 1:]
            delta_weight = group.kept_weight[kept] - group.kept_weight[other]
            if delta_weight != 0:  # zero only for a chunk of labels that own no tensor element
                costs[g] = max(0.0, (anchor_latency - measure(probe)) / delta_weight)
        return costs

    def _solve(self, groups, costs, anchor, anchor_latency, budget, local) -> tuple[tuple[int, ...], str]:
        """Multiple-choice knapsack: one kept count per group, linear latency estimate <= budget.

        ``local`` keeps each count within the chunk used to measure its cost, where the linear estimate holds.
        """
        total_score = sum(group.kept_score[-1] for group in groups) or 1.0
        prob = pulp.LpProblem("knapsack", pulp.LpMaximize)
        choices, value, weight = [], [], []
        minimum = 0.0
        for g, (group, cost, kept) in enumerate(zip(groups, costs, anchor)):
            reach = max(1.0, _CHUNK_FRACTION * kept) if local else math.inf
            counts = [k for k in group.counts if abs(k - kept) <= reach]
            options = {k: prob.add_variable(f"g{g}_k{k}", cat=pulp.LpBinary) for k in counts}
            prob += pulp.lpSum(options.values()) == 1
            delta = {k: cost * (group.kept_weight[k] - group.kept_weight[kept]) / anchor_latency for k in options}
            minimum += min(delta.values())
            # (variable, coefficient) terms: building expressions term by term costs more than the solve
            value += [(var, group.kept_score[k] / total_score * len(groups)) for k, var in options.items()]
            weight += [(var, delta[k]) for k, var in options.items()]
            choices.append(options)
        prob += pulp.LpAffineExpression(value)
        # A budget below the estimated smallest model is infeasible: ask for the smallest model instead.
        prob += pulp.LpAffineExpression(weight) <= max(budget / anchor_latency - 1, minimum)
        prob.solve(_make_solver(self.solver_execution_time_limit))
        status = pulp.LpStatus[prob.status]
        kept = []
        for options in choices:
            chosen = [k for k, var in options.items() if (var.value() or 0) > 0.5]
            if len(chosen) != 1:
                raise RuntimeError(f"knapsack solver returned no solution (status {status}); "
                                   f"raise solver_execution_time_limit (now {self.solver_execution_time_limit}s)")
            kept.append(chosen[0])
        return tuple(kept), status

    def _log(self, message: str) -> None:
        if self.verbose:
            print(f"[KnapsackLabelSelector] {message}", flush=True)


def _make_solver(time_limit: float) -> pulp.LpSolver:
    """The one place that picks the MILP solver.

    A system CBC through ``COIN_CMD`` when one is installed (``pip install pulp[cbc]``), else the CBC
    bundled in the PuLP wheel via ``PULP_CBC_CMD``, whose deprecation notice (PuLP 3.3, towards 4.0) is
    silenced here only.
    """
    solver = pulp.COIN_CMD(msg=False, timeLimit=time_limit)
    if solver.available():
        return solver
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PULP_CBC_CMD is deprecated", category=DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit)


class _BudgetSearch:
    """Finds the knapsack budget whose selection's real latency hits ``goal``.

    Real latency is a non-decreasing step function of the budget. Keep the closest budgets below and
    above the goal, step by secant between them (clamped to the middle half of the bracket so it shrinks
    by at least a quarter), or extrapolate by secant from the last two points before a bracket exists.
    """

    def __init__(self, goal: float, *point: float) -> None:
        self.goal = goal
        self.low: tuple[float, float] | None = None
        self.high: tuple[float, float] | None = None
        self.last: list[tuple[float, float]] = []
        if point:
            self._add(*point)

    def _add(self, budget: float, latency: float) -> None:
        if latency <= self.goal and (self.low is None or budget > self.low[0]):
            self.low = (budget, latency)
        if latency > self.goal and (self.high is None or budget < self.high[0]):
            self.high = (budget, latency)
        self.last = (self.last + [(budget, latency)])[-2:]

    def next(self, budget: float, latency: float) -> float | None:
        """The next budget to try, or None when the bracket has collapsed (no selection in between)."""
        self._add(budget, latency)
        if self.low and self.high:
            (b0, l0), (b1, l1) = self.low, self.high
            width = b1 - b0
            if width <= 1e-4 * self.goal:  # budgets this close select the same labels
                return None
            guess = b0 + (self.goal - l0) * width / (l1 - l0) if l1 != l0 else b0 + width / 2
            return min(max(guess, b0 + width / 4), b1 - width / 4)
        (b0, l0), (b1, l1) = self.last if len(self.last) == 2 else (self.last[0], self.last[0])
        slope = (b1 - b0) / (l1 - l0) if l1 != l0 and b1 != b0 else 1.0
        return b1 + (self.goal - l1) * slope


def _label_weights(snapshot: Any) -> np.ndarray:
    """Tensor elements owned by each label, over all parameter and buffer sites of the snapshot."""
    weights = np.zeros(snapshot.num_labels)
    tensors = dict(snapshot.model.named_parameters())
    tensors.update(snapshot.model.named_buffers())
    for site in snapshot.param_sites:
        tensor = tensors.get(site.name)
        if tensor is not None and tensor.dim() > 0:
            per_slice = tensor.numel() // max(tensor.shape[site.dim], 1)
            weights += np.bincount(site.label_index, minlength=snapshot.num_labels) * per_slice
    return weights


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _call_latency(function: Callable[[nn.Module], float], model: nn.Module) -> float:
    """Call the user's latency function and insist on a finite non-negative number."""
    try:
        value = function(model)
    except Exception as error:
        raise ValueError(f"latency_calculation_function raised {type(error).__name__}: {error}") from error
    try:
        latency = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"latency_calculation_function returned {value!r}, expected a number") from None
    if isinstance(value, (str, bytes, bool)) or not math.isfinite(latency) or latency < 0:
        raise ValueError(f"latency_calculation_function returned {value!r}, expected a finite number >= 0")
    return latency
