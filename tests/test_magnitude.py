"""MagnitudeCriterion: relative weight norms, zero channels removed exactly, data-free use, means, errors."""
import pytest
import torch
import torch.nn.functional as F
import torchvision

from pruning import LossAwareCriterion, MagnitudeCriterion, PruningIR, UniformLabelSelector

from test_criterion import batches, label_of, make_ir


def score(ir: PruningIR, inputs=()) -> torch.Tensor:
    with MagnitudeCriterion(ir) as collector:
        for x in inputs:
            collector(x)
    return ir.snapshot().scores


def test_scores_are_owned_squared_norms_over_the_group_mean():
    ir = make_ir()
    scores = score(ir)
    snapshot = ir.snapshot()
    p = dict(snapshot.model.named_parameters())
    assert scores.dtype == torch.float64 and scores.shape == (snapshot.num_labels,)
    # conv1's output channels: conv1's filter and bias, bn1's weight and bias, conv2's input slice
    norms = (p["conv1.weight"].square().sum((1, 2, 3)) + p["conv1.bias"].square() + p["bn1.weight"].square()
             + p["bn1.bias"].square() + p["conv2.weight"].square().sum((0, 2, 3))).double()
    labels = [label_of(snapshot, "conv1.weight", 0, c) for c in range(8)]
    torch.testing.assert_close(scores[labels], norms / norms.mean(), rtol=1e-6, atol=0)
    # conv2's output channels end in the classifier's input columns
    norms2 = (p["conv2.weight"].square().sum((1, 2, 3)) + p["conv2.bias"].square() + p["bn2.weight"].square()
              + p["bn2.bias"].square() + p["fc.weight"].square().sum(0)).double()
    labels2 = [label_of(snapshot, "conv2.weight", 0, c) for c in range(12)]
    torch.testing.assert_close(scores[labels2], norms2 / norms2.mean(), rtol=1e-6, atol=0)
    for group in snapshot.groups:
        assert float(scores[[label.index for label in group]].mean()) == pytest.approx(1.0)


def test_zero_weight_channels_score_zero_and_are_removed_exactly():
    ir = make_ir()
    model = ir.snapshot().model.eval()
    with torch.no_grad():
        for c in (1, 5):  # channels of conv1 with every weight they own zero (their consumer's slice too)
            for name in ("conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias"):
                model.get_parameter(name)[c] = 0
            model.get_parameter("conv2.weight")[:, c] = 0
    scores = score(ir)
    snapshot = ir.snapshot()
    dead = {label_of(snapshot, "conv1.weight", 0, c) for c in (1, 5)}
    assert all(float(scores[i]) == 0 for i in dead) and all(float(scores[i]) > 0 for i in
                                                              range(snapshot.num_labels) if i not in dead)
    chosen = UniformLabelSelector(0.25).select(ir)  # a quarter of each group: conv1's two zero channels
    assert dead <= {label.index for label in chosen}
    only_dead = [label for label in chosen if label.index in dead]
    x = torch.randn(4, 3, 8, 8)
    pruned = ir.prune(labels=only_dead).model.eval()
    assert pruned.get_submodule("conv1").out_channels == 6
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-6)


def test_without_data_it_records_no_means_and_prunes_plainly():
    ir = make_ir()
    score(ir)
    snapshot = ir.snapshot()
    assert snapshot.input_means is None
    labels = UniformLabelSelector(0.5).select(ir)
    plain = ir.prune(labels=labels, compensate=False).model.eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ir.prune(labels=labels).model.eval()(x), plain(x))
    with pytest.raises(ValueError, match="MagnitudeCriterion"):
        ir.prune(labels=labels, compensate=True)


def test_forward_calls_record_the_same_means_as_loss_aware_calibration():
    data = batches(3)
    magnitude, loss_aware = make_ir(), make_ir()
    with MagnitudeCriterion(magnitude) as collector:
        for x, _ in data:
            out = collector(x)
            assert not out.requires_grad  # no autograd: no loss or backward needed
    with LossAwareCriterion(loss_aware) as collector:
        for x, y in data:
            F.cross_entropy(collector(x), y).backward()
    means, expected = magnitude.snapshot().input_means, loss_aware.snapshot().input_means
    assert means.keys() == expected.keys() and len(means) == 3
    for target in means:
        torch.testing.assert_close(means[target], expected[target])


def test_unanalysed_ir_scores_on_first_call_and_errors_without_one():
    ir = make_ir(analyse=False)
    with pytest.raises(RuntimeError, match="example_input"):
        with MagnitudeCriterion(ir):
            pass
    assert not any(m._forward_pre_hooks for m in ir.snapshot().model.modules())
    scores = score(ir, [torch.randn(2, 3, 8, 8)])
    assert scores.shape == (ir.snapshot().num_labels,) and ir.snapshot().input_means is not None
    assert not any(m._forward_pre_hooks for m in ir.snapshot().model.modules())


def test_torchvision_model_prunes_and_runs_on_magnitude_scores():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    ir = PruningIR(model, example_input=x)
    score(ir, [x])
    before = sum(p.numel() for p in ir.model.parameters())
    pruned = ir.prune(labels=UniformLabelSelector(0.5).select(ir)).model.eval()
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * before
    assert pruned(x).shape == (2, 10)

