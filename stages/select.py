"""Stage `select`: which labels to prune (uniform, global or knapsack), as JSON plus a readable summary.

Uniform and global selection take `select.ratio` (or `select.n`, global only); with `select.ratio: null`
the ratio is found by bisection so that the pruned model meets `select.target`, which makes the three
methods comparable at equal cost. Knapsack always works to `select.target`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from pruning import PruningIR
from pruning.selectors import ChannelsConstraint, GlobalScoreLabelSelector, KnapsackLabelSelector, UniformLabelSelector
from stages.artifacts import load_pickled, write_json, write_text
from stages.costs import COST_FUNCTIONS, cost_function
from stages.data import load_split
from stages.errors import StageError
from stages.params import Params
from stages.report import format_summary, layer_channels
from stages.training import setup

METHODS = ("uniform", "global", "knapsack")
_BISECTION_STEPS = 30


def _pruned_cost(ir: PruningIR, labels: list, cost: Callable[[nn.Module], float]) -> float:
    return cost(ir.prune(labels=labels).model)


def _smallest_meeting_target(
    ir: PruningIR, choose: Callable[[float], list], low: float, high: float, integer: bool,
    cost: Callable[[nn.Module], float], target: float,
) -> list:
    """Bisection for the smallest amount of pruning in [low, high] whose pruned cost is <= target."""
    best = choose(high)
    lowest = _pruned_cost(ir, best, cost)
    if lowest > target:
        raise StageError(
            f"params.yaml: 'select.target' cannot be met by this method: pruning as much as allowed still costs "
            f"{lowest:.6g} > target {target:.6g} (raise 'select.target' or use knapsack)"
        )
    for _ in range(_BISECTION_STEPS):
        if (high - low <= 1) if integer else (high - low < 1e-4):
            break
        middle = (low + high) // 2 if integer else (low + high) / 2
        labels = choose(middle)
        if _pruned_cost(ir, labels, cost) <= target:
            high, best = middle, labels
        else:
            low = middle
    return best


def _channels_constraint(params: Params) -> ChannelsConstraint | None:
    """`select.channels_constraint`: null, or {multiple_of: int, min_channels: int} (kept labels per group)."""
    spec = params.get_mapping("select.channels_constraint", optional=True)
    if spec is None:
        return None
    unknown = set(spec) - {"multiple_of", "min_channels"}
    if unknown:
        raise StageError(f"params.yaml: 'select.channels_constraint' has unknown keys {sorted(unknown)} "
                         "(allowed: multiple_of, min_channels)")
    try:
        return ChannelsConstraint(**spec)
    except ValueError as exc:
        raise StageError(f"params.yaml: 'select.channels_constraint': {exc}") from None


def _select(ir: PruningIR, params: Params, method: str, cost: Callable[[nn.Module], float], target: float) -> list:
    ratio = params.get_float("select.ratio", min=0.0, max=1.0, optional=True)
    try:
        if method == "knapsack":
            return KnapsackLabelSelector(
                target_latency=target,
                latency_calculation_function=cost,
                strict_label_order=params.get_bool("select.strict_label_order"),
                channels_constraint=_channels_constraint(params),
                max_iterations=params.get_int("select.max_iterations", min=1),
                solver_execution_time_limit=params.get_float("select.solver_time_limit", min=0.0, min_inclusive=False),
                verbose=False,
            ).select(ir)
        if method == "uniform":
            if ratio is not None:
                return UniformLabelSelector(ratio).select(ir)
            return _smallest_meeting_target(ir, lambda r: UniformLabelSelector(r).select(ir), 0.0, 0.999, False, cost, target)
        n = params.get_int("select.n", min=1, optional=True)
        if n is not None:
            return GlobalScoreLabelSelector(n).select(ir)
        if ratio is not None:
            return GlobalScoreLabelSelector(ratio).select(ir) if ratio > 0 else []
        snapshot = ir.snapshot("main")

        def lowest_scored(count: float) -> list:
            return GlobalScoreLabelSelector(int(count)).select(ir) if count >= 1 else []

        most = len(snapshot.labels) - len(snapshot.groups)
        return _smallest_meeting_target(ir, lowest_scored, 0, most, True, cost, target)
    except (ValueError, RuntimeError) as exc:
        raise StageError(f"select ({method}): {exc} (check the 'select.*' keys in params.yaml)") from exc


def run(params: Params, data_dir: Path, ir_path: Path, labels_path: Path, summary_path: Path) -> None:
    """Select labels on the calibrated IR; write their indices and a per-layer channels summary."""
    _, device = setup(params)
    method = params.get_str("select.method", choices=METHODS)
    cost_name = params.get_str("select.latency", choices=tuple(COST_FUNCTIONS))
    target_value = params.get_float("select.target", min=0.0, min_inclusive=False)
    target_mode = params.get_str("select.target_mode", choices=("relative", "absolute"))
    if target_mode == "relative" and target_value > 1.0:
        raise StageError(f"params.yaml: 'select.target' = {target_value:g} is a fraction of the baseline "
                         "with 'select.target_mode: relative', so it must be in (0, 1]")
    ir = load_pickled(ir_path, PruningIR)
    example = load_split(data_dir, "val").tensors[0][:1]
    cost = cost_function(cost_name, params, example, device)
    baseline_cost = cost(ir.model)
    target = target_value * baseline_cost if target_mode == "relative" else target_value
    labels = _select(ir, params, method, cost, target)
    pruned = ir.prune(labels=labels).model
    pruned_cost = cost(pruned)
    snapshot = ir.snapshot("main")
    write_json(
        {"method": method, "labels": [label.index for label in labels],
         "num_prunable": len(snapshot.labels), "num_labels": snapshot.num_labels},
        labels_path,
    )
    header = [
        f"# Selection: {method}",
        "",
        f"- labels pruned: {len(labels)} of {len(snapshot.labels)} prunable",
        (
            f"- {cost_name} ({COST_FUNCTIONS[cost_name]}): {baseline_cost:.6g} -> {pruned_cost:.6g} "
            f"({pruned_cost / baseline_cost:.1%} of baseline; target {target:.6g})"
        ),
    ]
    write_text(format_summary(layer_channels(ir.model, pruned), header), summary_path)
    print(f"select: {method} pruned {len(labels)} labels, {cost_name} {pruned_cost / baseline_cost:.1%} of baseline")
