"""Regression compensation: removed input channels are replaced by their least-squares prediction from the
kept ones (pruning.compensation, ``compensate="regression"``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pruning import GlobalScoreLabelSelector, LossAwareCriterion, MagnitudeCriterion, PruningIR, compensation
from pruning.registry import rule_for
from pruning.rules.linear import TransposedLinearModule

from models import Grouped


def calibrate(ir: PruningIR, batches: list[torch.Tensor], covariance: bool = True) -> None:
    ir.snapshot().model.eval()
    with LossAwareCriterion(ir, input_covariance=covariance) as collector:
        for x in batches:
            collector(x).float().pow(2).mean().backward()


class MixedUnits(nn.Module):
    """conv1's channels 4-7 and fc1's units 10-15 are affine combinations of the layer's other outputs (no
    activation in between), so the next layer can get them back from the kept ones exactly. ``consumer``:
    conv2 has a bias ('bias'), none ('no_bias'), or none and feeds a BatchNorm ('batchnorm')."""

    def __init__(self, consumer: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)  # 27 inputs per position: the 4 kept channels are not collinear
        self.conv2 = nn.Conv2d(8, 12, 3, padding=0, bias=consumer == "bias")  # no padding: exact everywhere
        self.norm = nn.BatchNorm2d(12) if consumer == "batchnorm" else nn.Identity()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 5)
        with torch.no_grad():
            for layer, kept in ((self.conv1, 4), (self.fc1, 10)):
                mix = torch.randn(layer.out_features if isinstance(layer, nn.Linear) else 8, kept)[kept:]
                layer.weight[kept:] = (mix @ layer.weight[:kept].flatten(1)).view_as(layer.weight[kept:])
                layer.bias[kept:] = mix @ layer.bias[:kept] + torch.linspace(-1, 1, len(mix))
            if consumer == "batchnorm":
                self.norm.running_mean.uniform_(-1, 1)
                self.norm.running_var.uniform_(0.5, 2)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv2(self.conv1(x))))
        return self.fc2(self.fc1(x.mean((2, 3))))


def mixed_labels(ir: PruningIR) -> list:
    snapshot = ir.snapshot()
    first = {"conv1.weight": 4, "fc1.weight": 10}
    return [label for label in snapshot.labels for name, dim_index in snapshot.slices(label).items()
            if name in first for dim, index in dim_index if dim == 0 and index[0] >= first[name]]


@pytest.mark.parametrize("consumer", ["bias", "no_bias", "batchnorm"])
def test_removed_channels_that_mix_kept_ones_come_back_exactly(consumer, monkeypatch):
    torch.manual_seed(0)
    model = MixedUnits(consumer).eval()
    x = torch.randn(4, 3, 8, 8)
    ir = PruningIR(model, example_input=x[:1])
    calibrate(ir, [torch.randn(256, 3, 8, 8)])
    labels = mixed_labels(ir)
    assert len(labels) == 10
    with torch.no_grad():
        want = model(x)
        errors = {how: (ir.prune(labels=labels, compensate=how).model(x) - want).abs().max().item()
                  for how in (False, "mean", "regression")}
        default = ir.prune(labels=labels).model  # calibrated with covariances: the default is regression
        torch.testing.assert_close(default(x), ir.prune(labels=labels, compensate="regression").model(x), rtol=0, atol=0)
    scale = want.abs().max().item()
    assert errors["regression"] < 1e-2 * scale  # exact but for the ridge (1e-3 of the kept variance)
    assert errors["mean"] > 0.1 * scale and errors[False] > 0.1 * scale
    monkeypatch.setattr(compensation, "RIDGE", 1e-9)
    monkeypatch.setattr(compensation, "SHRINK", 1e-9)
    with torch.no_grad():
        assert (ir.prune(labels=labels).model(x) - want).abs().max() < 1e-4 * scale
    assert default.conv2.weight.shape[1] == 4 and default.fc2.weight.shape[1] == 10
    assert (default.conv2.bias is None) == (consumer == "batchnorm")  # as mean compensation places the shift


def test_covariances_are_those_of_the_input_channels_over_all_batches():
    torch.manual_seed(0)
    model = MixedUnits("no_bias").eval()
    batches = [torch.randn(4, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    ir = PruningIR(model)  # not analysed yet: the first collector call analyses, its batch is counted
    calibrate(ir, batches)
    with torch.no_grad():
        conv2_in = torch.cat([model.conv1(b) for b in batches]).double()
        fc2_in = torch.cat([model.fc1(torch.relu(model.conv2(model.conv1(b))).mean((2, 3))) for b in batches]).double()
    covariances = ir.snapshot().input_covariances
    assert set(covariances) == {"conv1", "conv2", "fc1", "fc2"}
    rows = conv2_in.movedim(1, -1).reshape(-1, 8)
    torch.testing.assert_close(covariances["conv2"], torch.cov(rows.T, correction=0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(covariances["fc2"], torch.cov(fc2_in.T, correction=0), rtol=1e-5, atol=1e-6)
    calibrate(ir, batches, covariance=False)  # a recalibration without them drops the old ones
    assert ir.snapshot().input_covariances is None and ir.snapshot().input_means


def test_layers_that_cannot_mix_their_inputs_or_share_their_weight_get_the_mean():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 8, 8)
    ir = PruningIR(Grouped().eval(), example_input=x[:1])
    calibrate(ir, [x])
    covariances, means = ir.snapshot().input_covariances, ir.snapshot().input_means
    assert {"grouped.0", "depthwise"} <= set(means) and not {"grouped.0", "depthwise"} & set(covariances)
    assert {"stem.0", "head"} <= set(covariances)

    class Tied(nn.Module):  # a head whose weight is the embedding's
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 16)
            self.body = nn.Linear(16, 16)
            self.head = nn.Linear(16, 10, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, tokens):
            return self.head(torch.relu(self.body(self.embed(tokens))))

    tokens = torch.randint(0, 10, (4, 7))
    ir = PruningIR(Tied(), example_input=tokens)
    with LossAwareCriterion(ir, input_covariance=True) as collector:
        collector(tokens).pow(2).mean().backward()
    assert "head" in ir.snapshot().input_means and "body" in ir.snapshot().input_covariances
    assert "head" not in ir.snapshot().input_covariances


@pytest.mark.parametrize("module, shape", [
    (nn.Conv2d(5, 4, 3), (2, 5, 7, 7)),
    (nn.Conv1d(4, 6, 3, stride=2, dilation=2), (2, 4, 11)),
    (nn.ConvTranspose2d(4, 3, 3, stride=2), (2, 4, 5, 5)),
    (nn.Linear(6, 3), (2, 5, 6)),
])
def test_mixed_weight_computes_on_mixed_inputs(module, shape):
    torch.manual_seed(0)
    rule = rule_for(type(module))
    dim = rule.input_channel_dim(module, torch.Size(shape))
    assert rule.mixes_inputs(module)
    mix = torch.randn(shape[dim], shape[dim], dtype=torch.float64)
    x = torch.randn(*shape, dtype=torch.float64)
    module = module.double()
    with torch.no_grad():
        want = module(torch.einsum("ij,...j->...i", mix, x.movedim(dim, -1)).movedim(-1, dim))
        module.weight.copy_(rule.mixed_weight(module, mix))
        torch.testing.assert_close(module(x), want)


def test_transformers_conv1d_mixes_its_inputs():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    rule = TransposedLinearModule()  # registered for Conv1D by name
    torch.manual_seed(0)
    module = Conv1D(3, 6).double()  # nf=3 outputs, nx=6 inputs
    assert rule.mixes_inputs(module)
    mix = torch.randn(6, 6, dtype=torch.float64)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        want = module(x @ mix.T)
        module.weight.copy_(rule.mixed_weight(module, mix))
        torch.testing.assert_close(module(x), want)


def test_compensate_values_and_their_errors():
    torch.manual_seed(0)
    model = MixedUnits("bias").eval()
    x = torch.randn(4, 3, 8, 8)
    ir = PruningIR(model, example_input=x[:1])
    labels = mixed_labels(ir)
    with pytest.raises(ValueError, match="input_covariance=True"):
        ir.prune(labels=labels, compensate="regression")
    with pytest.raises(ValueError, match="'mean' or 'regression', got 'least-squares'"):
        ir.prune(labels=labels, compensate="least-squares")
    with MagnitudeCriterion(ir, input_covariance=True) as collector:  # forward calls record them too
        collector(torch.randn(256, 3, 8, 8))
    assert set(ir.snapshot().input_covariances) == {"conv1", "conv2", "fc1", "fc2"}
    with torch.no_grad():
        want = model(x)
        error = (ir.prune(labels=labels, compensate=True).model(x) - want).abs().max()
        assert error < 1e-2 * want.abs().max()  # True: the best the statistics allow, regression here


def test_regression_brings_a_calibrated_torchvision_model_closer_than_the_mean():
    """On real layers (ReLU between them, so no channel is an exact mix) regression still predicts part of
    what the removed channels carried: the pruned outputs end nearer the original's than with the mean."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(16, 3, 32, 32)
    ir = PruningIR(model, example_input=x[:1])
    calibrate(ir, [x])
    labels = GlobalScoreLabelSelector(0.3).select(ir)
    with torch.no_grad():
        want = model(x)
        error = {how: (ir.prune(labels=labels, compensate=how).model(x) - want).pow(2).mean().item()
                 for how in ("mean", "regression")}
    assert error["regression"] < error["mean"]


def test_inplace_pruning_applies_the_regression():
    torch.manual_seed(0)
    model = MixedUnits("bias").eval()
    x = torch.randn(4, 3, 8, 8)
    ir = PruningIR(model, example_input=x[:1])
    calibrate(ir, [torch.randn(16, 3, 8, 8)])
    labels = mixed_labels(ir)
    with torch.no_grad():
        copied = ir.prune(labels=labels).model(x)
        inplace = ir.prune(labels=labels, inplace=True).model(x)
    torch.testing.assert_close(inplace, copied, rtol=0, atol=0)


def test_covariance_of_a_near_constant_channel_survives_float32_inputs():
    """A channel whose variance is tiny against its mean (1e-8 of its square here) keeps that variance: raw
    float32 products would leave rounding noise of about 1e-7 of the square instead."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)).eval()
    x = 100 + 1e-2 * torch.randn(4, 512, 4)
    ir = PruningIR(model, example_input=x[0])
    with LossAwareCriterion(ir, input_covariance=True) as collector:
        for batch in x:
            collector(batch).pow(2).mean().backward()
    torch.testing.assert_close(ir.snapshot().input_covariances["0"], torch.cov(x.reshape(-1, 4).double().T, correction=0),
                               rtol=1e-3, atol=1e-9)


def test_few_positions_shrink_the_regression_towards_the_mean():
    torch.manual_seed(0)
    rows = torch.randn(1000, 12, dtype=torch.float64) @ torch.randn(12, 12, dtype=torch.float64)
    covariance = torch.cov(rows.T, correction=0)
    kept, removed = np.arange(8), np.arange(8, 12)
    kk = covariance[:8, :8]
    ridge = compensation.RIDGE * kk.diagonal().mean() * torch.eye(8, dtype=torch.float64)
    exact = torch.linalg.solve(kk + ridge, covariance[:8, 8:]).T  # the ridge alone
    many, few = (compensation.regression(covariance, kept, removed, n) for n in (10**12, 8))
    torch.testing.assert_close(many, exact, rtol=1e-6, atol=1e-8)
    assert few.norm() < 0.9 * many.norm()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_regression_on_the_models_device(device):
    """Statistics are recorded where the model runs and the new weights are made on its device."""
    torch.manual_seed(0)
    model = MixedUnits("batchnorm").eval().to(device)
    x = torch.randn(4, 3, 8, 8, device=device)
    ir = PruningIR(model, example_input=x[:1])
    calibrate(ir, [torch.randn(256, 3, 8, 8, device=device)])
    with torch.no_grad():
        want = model(x)
        pruned = ir.prune(labels=mixed_labels(ir), compensate="regression").model
        assert pruned.conv2.weight.device == want.device
        assert (pruned(x) - want).abs().max() < 1e-2 * want.abs().max()
