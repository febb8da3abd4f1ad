"""The cost of a selection computed from the widths it leaves equals the pruned model's, and the knapsack
selects the same labels with it as by pruning and counting."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pruning import KnapsackLabelSelector, MagnitudeCriterion, PruningIR, latency
from pruning.selectors.width_cost import width_cost

from models import SDPA, Concat, Grouped, Residual, SqueezeExcite


class TiedHead(nn.Module):
    """A small language-model shape: the output layer shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        return self.head(x + self.mlp(x))


MODELS = {
    "residual": (lambda: Residual(), lambda: torch.randn(2, 3, 8, 8)),
    "concat": (lambda: Concat(), lambda: torch.randn(2, 3, 8, 8)),
    "grouped": (lambda: Grouped(), lambda: torch.randn(2, 3, 8, 8)),
    "squeeze-excite": (lambda: SqueezeExcite(), lambda: torch.randn(2, 3, 8, 8)),
    "mobilenet_v2 (depthwise)": (lambda: torchvision.models.mobilenet_v2(num_classes=10), lambda: torch.randn(1, 3, 32, 32)),
    "tied head": (lambda: TiedHead(), lambda: torch.randint(0, 50, (2, 7))),
}


def random_removals(snapshot, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Bool masks removing a random share of each group's labels, never a whole group."""
    masks = []
    for _ in range(count):
        mask = np.zeros(snapshot.num_labels, dtype=bool)
        for group in snapshot.groups:
            indices = np.array([label.index for label in group])
            mask[rng.choice(indices, size=rng.integers(0, len(indices)), replace=False)] = True
        masks.append(mask)
    return masks


@pytest.mark.parametrize("name", list(MODELS))
def test_the_width_cost_of_a_selection_is_the_pruned_models(name):
    build, example = MODELS[name]
    torch.manual_seed(0)
    x = example()
    ir = PruningIR(build().eval(), example_input=x)
    snapshot = ir.snapshot()
    functions = {"parameters": latency.parameters(), "macs": latency.macs(x)}
    costs = {key: width_cost(snapshot, function) for key, function in functions.items()}
    assert all(cost is not None for cost in costs.values())
    for mask in random_removals(snapshot, np.random.default_rng(0), 4):
        pruned = ir.prune(labels=[snapshot.label(i) for i in np.flatnonzero(mask)], compensate=False).model
        for key, function in functions.items():
            assert costs[key](mask) == pytest.approx(function(pruned), rel=1e-12), key


def test_macs_outside_weighted_layers_get_no_width_cost():
    """Attention multiplies activations by activations: its MACs are not a weight's size times positions."""
    model = SDPA().eval()
    x = torch.randn(2, 5, 16)
    snapshot = PruningIR(model, example_input=x).snapshot()
    assert width_cost(snapshot, latency.macs(x)) is None
    assert width_cost(snapshot, latency.parameters()) is not None
    assert width_cost(snapshot, lambda m: 1.0) is None  # a function of the user's own: measured by pruning


@pytest.mark.parametrize("cost", ["macs", "parameters"])
def test_the_knapsack_selects_the_same_labels_from_widths_as_by_pruning(cost):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    ir = PruningIR(torchvision.models.resnet18(num_classes=10).eval(), example_input=x)
    with MagnitudeCriterion(ir):
        pass
    function = latency.macs(x) if cost == "macs" else latency.parameters()
    counted = lambda model: function(model)  # noqa: E731  (not a ready-made function: prunes and counts)
    target = 0.5 * function(ir.model)
    fast = KnapsackLabelSelector(target, function, verbose=False)
    slow = KnapsackLabelSelector(target, counted, verbose=False)
    assert fast.select(ir) == slow.select(ir)
    for key in ("latency", "kept_score"):
        assert [h[key] for h in fast.history] == pytest.approx([h[key] for h in slow.history], rel=1e-12)
