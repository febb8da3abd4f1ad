"""IterativeLabelSelector: labels of the original IR that rebuild, in one prune, what the steps pruned."""
import pytest
import torch
import torch.nn.functional as F

from models import Attention, Concat, Grouped, Residual, Shuffle, SplitChunk, conv_bn
from pruning import GlobalScoreLabelSelector, IterativeLabelSelector, KnapsackLabelSelector, LossAwareCriterion, PruningIR
from pruning.labels import trace_back
from pruning.latency import macs
from torch import nn

CASES = [
    (Residual, (2, 3, 12, 12)),
    (Concat, (2, 3, 12, 12)),
    (SplitChunk, (2, 3, 12, 12)),
    (Shuffle, (2, 3, 12, 12)),
    (Grouped, (2, 3, 12, 12)),
]


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def calibrator(shape, device="cpu"):
    """Loss-aware scores over one fixed batch: deterministic, and different for every pruned model."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(*shape, generator=generator).to(device)
    y = torch.randint(0, 10, (shape[0],), generator=generator).to(device)

    def calibrate(ir: PruningIR) -> None:
        ir.model.eval()
        with LossAwareCriterion(ir) as collector:
            F.cross_entropy(collector(x), y).backward()
        ir.model.zero_grad(set_to_none=True)

    return calibrate


def knapsack(cost):
    return lambda budget: KnapsackLabelSelector(budget, latency_calculation_function=cost, verbose=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("factory, shape", CASES, ids=[case[0].__name__ for case in CASES])
def test_one_prune_rebuilds_the_steps(factory, shape, device):
    """Pruning the returned labels of the original IR gives the model the steps reached, weight for weight."""
    torch.manual_seed(0)
    model = factory().eval().to(device)
    example = torch.randn(1, *shape[1:], device=device)
    calibrate, cost = calibrator(shape, device), macs(example)
    ir = PruningIR(model, example_input=example)
    calibrate(ir)
    target = 0.4 * cost(ir.model)

    stepped, budgets = ir, [cost(ir.model) * (1 - 0.6 * k / 3) for k in (1, 2, 3)]
    for k, budget in enumerate(budgets):
        stepped = stepped.prune(labels=knapsack(cost)(budget).select(stepped), compensate=False)
        if k < 2:
            calibrate(stepped)
    labels = IterativeLabelSelector(knapsack(cost), target, cost, calibrate, steps=3, verbose=False).select(ir)
    once = ir.prune(labels=labels, compensate=False).model

    assert cost(once) <= target
    assert cost(once) == cost(stepped.model)
    got, want = dict(once.named_parameters()), dict(stepped.model.named_parameters())
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    x = torch.randn(*shape, device=device)
    torch.testing.assert_close(once(x), stepped.model(x), rtol=0, atol=0)


def test_attention_steps_match():
    """Heads and features of a written-out attention block trace back through reshapes and permutes."""
    torch.manual_seed(0)
    model = Attention().eval()
    example = torch.randn(1, 5, 12)
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(4, 5, 12, generator=generator), torch.randint(0, 10, (4,), generator=generator)

    def calibrate(ir):
        with LossAwareCriterion(ir) as collector:
            F.cross_entropy(collector(x), y).backward()
        ir.model.zero_grad(set_to_none=True)

    ir = PruningIR(model, example_input=example)
    calibrate(ir)
    cost = macs(example)
    labels = IterativeLabelSelector(knapsack(cost), 0.5 * cost(ir.model), cost, calibrate, steps=2,
                                    verbose=False).select(ir)
    stepped = ir.prune(labels=knapsack(cost)(0.75 * cost(ir.model)).select(ir), compensate=False)
    calibrate(stepped)
    stepped = stepped.prune(labels=knapsack(cost)(0.5 * cost(ir.model)).select(stepped), compensate=False)
    torch.testing.assert_close(ir.prune(labels=labels, compensate=False).model(x), stepped.model(x), rtol=0, atol=0)


def calibrated_residual():
    """A calibrated IR of the Residual model and its MACs function."""
    torch.manual_seed(0)
    example = torch.randn(1, 3, 12, 12)
    ir = PruningIR(Residual().eval(), example_input=example)
    calibrator((2, 3, 12, 12))(ir)
    return ir, macs(example)


def test_one_step_is_the_plain_selector():
    ir, cost = calibrated_residual()
    target = 0.5 * cost(ir.model)
    calls = []
    labels = IterativeLabelSelector(knapsack(cost), target, cost, calls.append, steps=1, verbose=False).select(ir)
    assert labels == knapsack(cost)(target).select(ir)
    assert calls == []


def test_between_steps_sees_each_intermediate_model_before_calibration():
    torch.manual_seed(0)
    example = torch.randn(1, 3, 12, 12)
    ir = PruningIR(Concat().eval(), example_input=example)
    calibrate = calibrator((2, 3, 12, 12))
    calibrate(ir)
    cost = macs(example)
    events = []

    def between(model):
        events.append(("between", cost(model)))

    def recalibrate(step_ir):
        events.append(("calibrate", cost(step_ir.model)))
        calibrate(step_ir)

    IterativeLabelSelector(lambda b: GlobalScoreLabelSelector(3), 0.1 * cost(ir.model), cost, recalibrate,
                           steps=3, between_steps=between, verbose=False).select(ir)
    assert [kind for kind, _ in events] == ["between", "calibrate"] * 2
    assert events[0][1] == events[1][1] > events[2][1] == events[3][1]


class GroupsToOne(nn.Module):
    """A grouped convolution with two groups of 8: labels are whole groups until one group is left, after
    which the convolution is an ordinary one with per-channel labels (finer than the original's)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.grouped = conv_bn(16, 16, groups=2)
        self.out = conv_bn(16, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.out(self.grouped(self.stem(x))).mean((2, 3)))


def test_finer_labels_after_pruning_are_kept_whole():
    torch.manual_seed(0)
    example = torch.randn(1, 3, 12, 12)
    ir = PruningIR(GroupsToOne().eval(), example_input=example)
    snapshot = ir.snapshot()

    def in_grouped(step):
        return [label.index for label in step.labels if 0 in dict(step.slices(label).get("grouped.0.weight", []))]

    grouped = in_grouped(snapshot)
    assert len(grouped) == 2  # one label per convolution group
    one_group = ir.prune(labels=[snapshot.label(grouped[0])]).snapshot()
    assert (trace_back(snapshot, [grouped[0]], one_group)[in_grouped(one_group)] == grouped[1]).all()
    assert len(in_grouped(one_group)) == 8  # an ordinary convolution now: per-channel labels

    def calibrate(step_ir):  # the 8 channels score lowest: a knapsack takes some, never all, of them
        step = step_ir.snapshot()
        step.scores = torch.ones(step.num_labels, dtype=torch.float64)
        step.scores[in_grouped(step)] = 0.0

    calibrate(ir)
    cost = macs(example)
    target = 0.9 * cost(one_group.model)
    stepped = ir.prune(labels=[snapshot.label(grouped[0])])
    calibrate(stepped)
    plain = knapsack(cost)(target).select(stepped)
    assert 0 < len(set(label.index for label in plain) & set(in_grouped(stepped.snapshot()))) < 8

    def make_selector(budget):
        return GlobalScoreLabelSelector(1) if budget > target else knapsack(cost)(budget)

    labels = IterativeLabelSelector(make_selector, target, cost, calibrate, steps=2, verbose=False).select(ir)
    indices = [label.index for label in labels]
    assert grouped[0] in indices and grouped[1] not in indices
    assert cost(ir.prune(labels=labels).model) <= target


def test_errors_name_the_bad_value():
    ir, cost = calibrated_residual()
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        IterativeLabelSelector(knapsack(cost), 1.0, cost, print, steps=0)
    with pytest.raises(ValueError, match="is not below the model's cost"):
        IterativeLabelSelector(knapsack(cost), 2 * cost(ir.model), cost, print, verbose=False).select(ir)


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0"])
def test_torchvision_models_one_prune_rebuilds_the_steps(name):
    """Inverted residuals, squeeze-excitation and depthwise convolutions, with global selection in 3 steps."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    example = torch.randn(1, 3, 32, 32)
    calibrate, cost = calibrator((2, 3, 32, 32)), macs(example)
    ir = PruningIR(model, example_input=example)
    calibrate(ir)

    def select(budget):
        return GlobalScoreLabelSelector(0.15)

    stepped = ir
    for k in range(3):
        stepped = stepped.prune(labels=select(0).select(stepped), compensate=False)
        if k < 2:
            calibrate(stepped)
    labels = IterativeLabelSelector(select, 1.0, cost, calibrate, steps=3, verbose=False).select(ir)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ir.prune(labels=labels, compensate=False).model(x), stepped.model(x), rtol=0, atol=0)
