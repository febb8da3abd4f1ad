"""Mean compensation: removed input channels count with their calibration means (pruning.compensation)."""
from __future__ import annotations

import json

import dill
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pruning import GlobalScoreLabelSelector, LossAwareCriterion, PruningIR
from pruning.replay import pruning_record, replay
from pruning.registry import rule_for

from models import Grouped, Residual
from test_regression_compensation import MixedUnits, mixed_labels


def calibrate(ir: PruningIR, batches: list[torch.Tensor], train: bool = False) -> None:
    ir.snapshot().model.train(train)
    with LossAwareCriterion(ir) as collector:
        for x in batches:
            out = collector(x)
            out.float().pow(2).mean().backward()
    ir.snapshot().model.eval()


class ConstantUnits(nn.Module):
    """Hidden units 0-3 of each layer have zero incoming weights and a positive bias: after the ReLU they
    are constants that the next layer still adds in. ``consumer``: conv2 has a bias ('bias'), none
    ('no_bias'), or none and feeds a BatchNorm ('batchnorm')."""

    def __init__(self, consumer: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=0, bias=consumer == "bias")  # no padding: exact everywhere
        self.norm = nn.BatchNorm2d(6) if consumer == "batchnorm" else nn.Identity()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 5)
        with torch.no_grad():
            for layer in (self.conv1, self.fc1):
                layer.weight[:4] = 0
                layer.bias[:4] = torch.linspace(0.5, 2.0, 4)
            if consumer == "batchnorm":
                self.norm.running_mean.uniform_(-1, 1)
                self.norm.running_var.uniform_(0.5, 2)

    def forward(self, x):
        x = self.norm(self.conv2(F.relu(self.conv1(x))))
        return self.fc2(F.relu(self.fc1(x.mean((2, 3)))))


def constant_labels(ir: PruningIR) -> list:
    snapshot = ir.snapshot()
    owned = {label: snapshot.slices(label) for label in snapshot.labels}
    return [label for label, slices in owned.items()
            for name, dim_index in slices.items() if name in ("conv1.weight", "fc1.weight")
            for dim, index in dim_index if dim == 0 and index[0] < 4]


@pytest.mark.parametrize("consumer", ["bias", "no_bias", "batchnorm"])
def test_removing_constant_channels_leaves_outputs_unchanged(consumer):
    torch.manual_seed(0)
    model = ConstantUnits(consumer).eval()
    x = torch.randn(4, 3, 6, 6)
    ir = PruningIR(model, example_input=x[:1])
    calibrate(ir, [torch.randn(8, 3, 6, 6)])
    labels = constant_labels(ir)
    assert len(labels) == 8
    with torch.no_grad():
        want = model(x)
        compensated = ir.prune(labels=labels).model  # the default: the IR is calibrated
        plain = ir.prune(labels=labels, compensate=False).model
        torch.testing.assert_close(compensated(x), want, rtol=0, atol=1e-5)
        assert (plain(x) - want).abs().max() > 0.1  # without it the constants go missing
    assert compensated.conv2.weight.shape[1] == 4 and compensated.fc2.weight.shape[1] == 12
    # a layer without a bias gets one, unless a BatchNorm's running mean takes the shift
    assert (compensated.conv2.bias is None) == (consumer == "batchnorm")
    assert (plain.conv2.bias is None) == (consumer != "bias")
    if consumer == "batchnorm":
        assert not torch.equal(compensated.norm.running_mean, plain.norm.running_mean)


def test_means_are_the_input_channel_means_over_all_batches():
    torch.manual_seed(0)
    model = ConstantUnits("no_bias")
    batches = [torch.randn(4, 3, 6, 6), torch.randn(2, 3, 6, 6)]
    ir = PruningIR(model)  # not analysed yet: the first collector call analyses, its batch is counted
    calibrate(ir, batches)
    with torch.no_grad():
        conv2_in = torch.cat([F.relu(model.conv1(b)) for b in batches])
        fc2_in = F.relu(model.fc1(model.conv2(conv2_in).mean((2, 3))))
    means = ir.snapshot().input_means
    assert set(means) == {"conv1", "conv2", "fc1", "fc2"}
    torch.testing.assert_close(means["conv2"], conv2_in.double().mean((0, 2, 3)), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(means["fc2"], fc2_in.double().mean(0), rtol=1e-6, atol=1e-7)
    assert not any(m._forward_pre_hooks for m in model.modules())  # hooks removed


@pytest.mark.parametrize("module, shape", [
    (nn.Conv2d(6, 4, 3, groups=2), (2, 6, 7, 7)),
    (nn.Conv1d(4, 5, 3, stride=2, dilation=2), (2, 4, 11)),
    (nn.ConvTranspose2d(4, 3, 2, stride=2), (2, 4, 3, 3)),
    (nn.Linear(6, 3), (2, 5, 6)),
])
def test_output_shift_is_what_a_constant_input_shift_does(module, shape):
    """Interior outputs (no padding here) change by output_shift when inputs shift by a constant per channel."""
    torch.manual_seed(0)
    rule = rule_for(type(module))
    dim = rule.input_channel_dim(module, torch.Size(shape))
    shift = torch.randn(shape[dim])
    x = torch.randn(*shape)
    view = [1] * len(shape)
    view[dim] = -1
    with torch.no_grad():
        change = module(x + shift.view(view)) - module(x)
    expected = rule.output_shift(module, shift.double()).float()
    out_view = [1] * change.dim()
    out_view[dim] = -1
    if isinstance(module, nn.ConvTranspose2d):  # stride 2, kernel 2: every output sees one kernel tap
        change = change.mean((2, 3), keepdim=True)
        expected = expected / 4
    torch.testing.assert_close(change, expected.view(out_view).expand_as(change), rtol=1e-4, atol=1e-5)


def test_compensate_true_needs_calibration_and_none_prunes_plainly():
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.randn(2, 3, 8, 8)
    ir = PruningIR(model, example_input=x)
    labels = [group[0] for group in ir.snapshot().groups]
    with pytest.raises(ValueError, match="LossAwareCriterion"):
        ir.prune(labels=labels, compensate=True)
    with torch.no_grad():
        torch.testing.assert_close(ir.prune(labels=labels).model(x), ir.prune(labels=labels, compensate=False).model(x),
                                   rtol=0, atol=0)


def test_calibrated_grouped_and_torchvision_models_prune_closer_to_the_original():
    """On a trained-looking model mean compensation keeps the pruned outputs nearer the original's."""
    cases = ((Grouped().eval(), (8, 3, 8, 8)), (torchvision.models.mobilenet_v3_small().eval(), (2, 3, 64, 64)))
    for model, shape in cases:
        torch.manual_seed(0)
        x = torch.randn(*shape)
        ir = PruningIR(model, example_input=x[:1])
        calibrate(ir, [x])
        labels = GlobalScoreLabelSelector(0.3).select(ir)
        with torch.no_grad():
            want = model(x)
            near = (ir.prune(labels=labels).model(x) - want).pow(2).mean()
            far = (ir.prune(labels=labels, compensate=False).model(x) - want).pow(2).mean()
        assert near < far, type(model).__name__


@pytest.mark.parametrize("consumer, how", [("no_bias", "mean"), ("batchnorm", "mean"), ("no_bias", "regression")])
def test_replay_and_dill_keep_the_compensation(consumer, how, tmp_path):
    """Mean compensation (ConstantUnits) and regression (MixedUnits: new kept weights too) survive a dill round
    trip of the IR and a weights-only replay of the pruning."""
    torch.manual_seed(0)
    model, labels_of = (ConstantUnits, constant_labels) if how == "mean" else (MixedUnits, mixed_labels)
    x = torch.randn(2, 3, 8, 8)
    ir = PruningIR(model(consumer).eval(), example_input=x[:1])
    ir.snapshot().model.eval()
    with LossAwareCriterion(ir, input_covariance=how == "regression") as collector:
        collector(torch.randn(16, 3, 8, 8)).pow(2).mean().backward()
    torch.save(ir, tmp_path / "ir.pt", pickle_module=dill)
    loaded = torch.load(tmp_path / "ir.pt", pickle_module=dill, weights_only=False)
    for statistics in ("input_means", "input_covariances"):
        saved = getattr(ir.snapshot(), statistics) or {}
        assert (getattr(loaded.snapshot(), statistics) or {}).keys() == saved.keys()
        for name, value in saved.items():
            assert torch.equal(getattr(loaded.snapshot(), statistics)[name], value)
    labels = labels_of(loaded)
    pruned = loaded.prune(labels=labels).model
    record = json.loads(json.dumps(pruning_record(loaded, labels)))
    assert record["biases_added"] == (["conv2"] if consumer == "no_bias" else [])
    assert pruning_record(loaded, labels, compensate=False)["biases_added"] == []
    rebuilt = replay(model(consumer).eval(), record, pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x))
