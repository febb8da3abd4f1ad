"""Stage `select`: which labels to prune (uniform, global or knapsack), as JSON plus a readable summary.

Uniform and global selection take `select.ratio` (or `select.n`, global only); with `select.ratio: null`
the ratio is found by bisection so that the pruned model meets `select.target`, which makes the three
methods comparable at equal cost. Knapsack always works to `select.target`.

With `select.steps` > 1 the target is reached in that many steps (`pruning.IterativeLabelSelector`): each
step selects with the same method on the model the steps before it pruned, after re-estimating its BatchNorm
statistics (`select.bn_batches` training batches) and re-scoring it as the `calibrate` stage does (the same
`calibrate.*` batches). The labels written are labels of the calibrated IR, so `prune` is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

import torch

from pruning import PruningIR
from pruning.selectors import (ChannelsConstraint, GlobalScoreLabelSelector, IterativeLabelSelector,
                               KnapsackLabelSelector, LabelSelector, UniformLabelSelector)
from stages.artifacts import load_pickled, write_json, write_text
from stages.calibrate import CRITERIA, calibration_batches, score
from stages.costs import COST_FUNCTIONS, cost_function
from stages.data import load_split, make_loader
from stages.errors import StageError
from stages.params import Params
from stages.report import format_summary, layer_channels
from stages.training import recalibrate_batchnorm, seed_everything, setup

METHODS = ("uniform", "global", "knapsack")
_BISECTION_STEPS = 30


def _pruned_cost(ir: PruningIR, labels: list, cost: Callable[[nn.Module], float]) -> float:
    return cost(ir.prune(labels=labels, compensate=False).model)  # the structure's cost: compensation left out


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


class _Step(LabelSelector):
    """One step of `select.steps`: the stage's own selection (`select.method`) to a cost budget."""

    def __init__(self, params: Params, method: str, cost: Callable[[nn.Module], float], budget: float) -> None:
        self.params, self.method, self.cost, self.budget = params, method, cost, budget

    def select(self, ir: PruningIR, snapshot_name: str = "main") -> list:
        return _select(ir, self.params, self.method, self.cost, self.budget)


def batchnorm_reestimation(params: Params, data_dir: Path, seed: int, device: torch.device) -> Callable[[nn.Module], None]:
    """What happens to a model between steps: its BatchNorm statistics re-estimated in place over
    `select.bn_batches` training batches (shuffled by `seed`; 0: nothing), the model back on CPU in eval mode."""
    bn_batches = params.get_int("select.bn_batches", min=0)

    def reestimate(model: nn.Module) -> None:
        if bn_batches:
            seed_everything(seed)
            train = make_loader(load_split(data_dir, "train"), params.get_int("data.batch_size", min=1), shuffle=True,
                                seed=seed)
            recalibrate_batchnorm(model, train, device, bn_batches)
            model.cpu().eval()

    return reestimate


def _select_in_steps(ir: PruningIR, params: Params, method: str, cost: Callable[[nn.Module], float], target: float,
                     steps: int, data_dir: Path, seed: int, device: torch.device) -> list:
    """`steps` selections to `target`, BatchNorm re-estimated and the model re-scored between them."""
    for key in {"uniform": ("select.ratio",), "global": ("select.n", "select.ratio")}.get(method, ()):
        if params.get(key) is not None:
            raise StageError(f"params.yaml: 'select.steps' = {steps} works to 'select.target', but '{key}' is set: "
                             f"set '{key}: null' (or 'select.steps: 1')")
    mode = params.get_str("calibrate.mode", choices=("train", "eval"))
    criterion = params.get_str("calibrate.criterion", choices=CRITERIA)
    batches = list(calibration_batches(params, data_dir, seed))
    selector = IterativeLabelSelector(lambda budget: _Step(params, method, cost, budget), target, cost,
                                      lambda step_ir: score(step_ir, batches, device, mode, criterion=criterion),
                                      steps=steps,
                                      between_steps=batchnorm_reestimation(params, data_dir, seed, device))
    try:
        return selector.select(ir)
    except ValueError as exc:
        raise StageError(f"select ({method}, {steps} steps): {exc}") from exc


def run(params: Params, data_dir: Path, ir_path: Path, labels_path: Path, summary_path: Path) -> None:
    """Select labels on the calibrated IR; write their indices and a per-layer channels summary."""
    seed, device = setup(params)
    method = params.get_str("select.method", choices=METHODS)
    steps = params.get_int("select.steps", min=1)
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
    if steps == 1:
        labels = _select(ir, params, method, cost, target)
    else:
        labels = _select_in_steps(ir, params, method, cost, target, steps, data_dir, seed, device)
    pruned = ir.prune(labels=labels).model
    pruned_cost = cost(pruned)
    snapshot = ir.snapshot("main")
    write_json(
        {"method": method, "labels": [label.index for label in labels],
         "num_prunable": len(snapshot.labels), "num_labels": snapshot.num_labels},
        labels_path,
    )
    header = [
        f"# Selection: {method}" + (f", {steps} steps (re-scored between steps)" if steps > 1 else ""),
        "",
        f"- labels pruned: {len(labels)} of {len(snapshot.labels)} prunable",
        (
            f"- {cost_name} ({COST_FUNCTIONS[cost_name]}): {baseline_cost:.6g} -> {pruned_cost:.6g} "
            f"({pruned_cost / baseline_cost:.1%} of baseline; target {target:.6g})"
        ),
    ]
    write_text(format_summary(layer_channels(ir.model, pruned), header), summary_path)
    print(f"select: {method} pruned {len(labels)} labels, {cost_name} {pruned_cost / baseline_cost:.1%} of baseline")
