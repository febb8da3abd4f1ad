"""Selectors: exact counts and ratios, groups never emptied, errors naming the bad value, knapsack targets."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pruning import PruningIR
from pruning.latency import macs
from pruning.selectors import (
    ChannelsConstraint,
    GlobalScoreLabelSelector,
    KnapsackLabelSelector,
    UniformLabelSelector,
)


class Net(nn.Module):
    """Two plain convs, a residual pair sharing channels, and a head: groups of 24, 40, 48 and 64."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.conv1 = nn.Conv2d(24, 40, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(40, 48, 3, padding=1)
        self.res1 = nn.Conv2d(48, 64, 1)
        self.res2 = nn.Conv2d(48, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.relu(self.res1(x) + self.res2(x))
        return self.fc(x.mean((2, 3)))


INPUT = (1, 3, 16, 16)


@pytest.fixture(scope="module")
def ir() -> PruningIR:
    torch.manual_seed(0)
    ir = PruningIR(Net(), example_input=torch.randn(*INPUT))
    generator = torch.Generator().manual_seed(1)
    ir.snapshot().scores = torch.rand(ir.snapshot().num_labels, generator=generator, dtype=torch.float64)
    return ir


def by_group(ir, labels):
    chosen = set(labels)
    return [[label for label in group if label in chosen] for group in ir.snapshot().groups]


def lowest(group, scores, count):
    return sorted(group, key=lambda label: (scores[label.index].item(), label.index))[:count]


def test_groups_as_designed(ir):
    assert sorted(len(g) for g in ir.snapshot().groups) == [24, 40, 48, 64]


def test_not_calibrated_raises():
    bare = PruningIR(Net(), example_input=torch.randn(*INPUT))
    for selector in (UniformLabelSelector(0.5), GlobalScoreLabelSelector(0.5)):
        with pytest.raises(RuntimeError, match="calibrate with LossAwareCriterion first"):
            selector.select(bare)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.7, 0.99])
def test_uniform_exact_counts_lowest_scores(ir, ratio):
    scores = ir.snapshot().scores
    selected = UniformLabelSelector(ratio).select(ir)
    assert selected == sorted(selected, key=lambda label: label.index)
    for group, chosen in zip(ir.snapshot().groups, by_group(ir, selected)):
        count = min(math.floor(ratio * len(group) + 0.5), len(group) - 1)
        assert set(chosen) == set(lowest(group, scores, count))
    ir.prune(labels=selected)  # a valid selection for the core


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_uniform_bad_ratio(ratio):
    with pytest.raises(ValueError, match=f"pruning_ratio.*{ratio}"):
        UniformLabelSelector(ratio)


def test_global_ratio_and_count_exact(ir):
    scores = ir.snapshot().scores
    groups = ir.snapshot().groups
    total = sum(len(g) for g in groups)
    candidates = [label for g in groups for label in lowest(g, scores, len(g) - 1)]
    for value, count in [(0.5, round(0.5 * total)), (0.1, math.floor(0.1 * total + 0.5)), (17, 17)]:
        selected = GlobalScoreLabelSelector(value).select(ir)
        assert set(selected) == set(lowest(candidates, scores, count))
    everything = GlobalScoreLabelSelector(total - len(groups)).select(ir)
    assert all(len(chosen) == len(g) - 1 for g, chosen in zip(groups, by_group(ir, everything)))
    ir.prune(labels=everything)


def test_global_too_many_names_maximum(ir):
    total = len(ir.snapshot().labels)
    maximum = total - len(ir.snapshot().groups)
    with pytest.raises(ValueError, match=f"at most {maximum}"):
        GlobalScoreLabelSelector(maximum + 1).select(ir)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "half"])
def test_global_bad_value(value):
    with pytest.raises(ValueError, match="n_or_ratio"):
        GlobalScoreLabelSelector(value)


def test_ties_broken_by_index_deterministically():
    tied = PruningIR(Net(), example_input=torch.randn(*INPUT))
    tied.snapshot().scores = torch.ones(tied.snapshot().num_labels, dtype=torch.float64)
    for selector in (UniformLabelSelector(0.5), GlobalScoreLabelSelector(0.3)):
        first = selector.select(tied)
        assert first == selector.select(tied)
    for group, chosen in zip(tied.snapshot().groups, by_group(tied, UniformLabelSelector(0.5).select(tied))):
        assert chosen == sorted(group, key=lambda label: label.index)[: len(chosen)]


@pytest.fixture(scope="module")
def flops():
    return macs(INPUT)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_knapsack_lands_within_two_percent_below_target(ir, flops, fraction):
    target = fraction * flops(ir.model)
    selector = KnapsackLabelSelector(target, flops, verbose=False)
    selected = selector.select(ir)
    achieved = flops(ir.prune(labels=selected).model)
    assert 0.98 * target <= achieved <= target
    assert selected == selector.select(ir)  # determinism
    assert all(len(chosen) < len(g) for g, chosen in zip(ir.snapshot().groups, by_group(ir, selected)))


def test_knapsack_free_label_order_lands(ir, flops):
    target = 0.5 * flops(ir.model)
    selected = KnapsackLabelSelector(target, flops, strict_label_order=False, verbose=False).select(ir)
    assert 0.98 * target <= flops(ir.prune(labels=selected).model) <= target


def test_knapsack_keeps_at_least_uniform_score(ir, flops):
    scores = ir.snapshot().scores
    uniform = UniformLabelSelector(0.5).select(ir)
    achieved = flops(ir.prune(labels=uniform).model)
    knapsack = KnapsackLabelSelector(achieved, flops, verbose=False).select(ir)
    assert flops(ir.prune(labels=knapsack).model) <= achieved
    kept = lambda selected: scores.sum() - scores[[label.index for label in selected]].sum()  # noqa: E731
    assert kept(knapsack) >= kept(uniform)


def test_knapsack_channels_constraint(ir, flops):
    constraint = ChannelsConstraint(multiple_of=8, min_channels=16)
    selected = KnapsackLabelSelector(0.4 * flops(ir.model), flops, channels_constraint=constraint, verbose=False).select(ir)
    for group, chosen in zip(ir.snapshot().groups, by_group(ir, selected)):
        kept = len(group) - len(chosen)
        assert kept == len(group) or (kept % 8 == 0 and kept >= 16)


def test_knapsack_verbose_prints_iterations(ir, flops, capsys):
    KnapsackLabelSelector(0.6 * flops(ir.model), flops).select(ir)
    out = capsys.readouterr().out
    for word in ("iteration 1", "latency", "target", "kept score", "solver Optimal", "time"):
        assert word in out


def test_knapsack_target_above_current_selects_nothing(ir, flops):
    assert KnapsackLabelSelector(2 * flops(ir.model), flops, verbose=False).select(ir) == []


def test_knapsack_unreachable_target_gives_lowest_latency(ir, flops):
    with pytest.raises(ValueError, match=r"unreachable.*latency \d"):
        KnapsackLabelSelector(1.0, flops, verbose=False).select(ir)


@pytest.mark.parametrize("value", [float("nan"), -1.0, "fast", None, torch.ones(2)])
def test_knapsack_bad_latency_value_named(ir, value):
    selector = KnapsackLabelSelector(1.0, lambda model: value, verbose=False)
    with pytest.raises(ValueError, match="latency_calculation_function returned"):
        selector.select(ir)


def test_knapsack_latency_function_raising(ir):
    def broken(model):
        raise RuntimeError("device lost")

    with pytest.raises(ValueError, match="raised RuntimeError: device lost"):
        KnapsackLabelSelector(1.0, broken, verbose=False).select(ir)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"target_latency": 0}, "target_latency"),
        ({"target_latency": float("inf")}, "target_latency"),
        ({"latency_calculation_function": 3}, "latency_calculation_function"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"solver_execution_time_limit": -1}, "solver_execution_time_limit"),
        ({"channels_constraint": 8}, "channels_constraint"),
    ],
)
def test_knapsack_bad_arguments(kwargs, name):
    arguments = {"target_latency": 1.0, "latency_calculation_function": len, **kwargs}
    with pytest.raises(ValueError, match=name):
        KnapsackLabelSelector(**arguments)


@pytest.mark.parametrize("kwargs", [{"multiple_of": 0}, {"min_channels": 2.5}])
def test_channels_constraint_validation(kwargs):
    with pytest.raises(ValueError, match="ChannelsConstraint"):
        ChannelsConstraint(**kwargs)


def test_channels_constraint_counts():
    assert ChannelsConstraint(8, 12).allowed_counts(40) == [16, 24, 32, 40]
    assert ChannelsConstraint(8, 12).allowed_counts(37) == [16, 24, 32, 37]
    assert ChannelsConstraint(1, 64).allowed_counts(10) == [10]
    assert ChannelsConstraint().allowed_counts(3) == [1, 2, 3]


def test_knapsack_with_a_noisy_latency_function_lands(ir, flops, capsys):
    """A latency function that gives two values for one model takes its cost shape from MACs."""
    import random

    jitter = random.Random(0)
    target = 0.5 * flops(ir.model)
    selector = KnapsackLabelSelector(target, lambda m: flops(m) * (1 + jitter.uniform(-0.01, 0.01)))
    achieved = flops(ir.prune(labels=selector.select(ir)).model)
    assert 0.95 * target <= achieved <= 1.02 * target
    assert "latency function is noisy" in capsys.readouterr().out
