"""Model factory, checkpoints, and the weights-only rebuild path."""

import pytest
import torch
from torch import nn

from stages.artifacts import save_pickled
from stages.bundle import load_bundle, save_bundle
from stages.errors import StageError
from pruning import PruningIR
from pruning.replay import pruning_record
from stages.models import DigitsResNet, build_model, describe_architecture, load_checkpoint

SPEC = {"name": "digits_resnet", "kwargs": {"width": 8}, "in_channels": 1, "num_classes": 10}


def test_factories():
    assert isinstance(build_model("digits_resnet", {"width": 8}, 1, 10), DigitsResNet)
    custom = build_model("stages.models:DigitsResNet", {"in_channels": 3, "num_classes": 4, "width": 4}, 3, 4)
    assert custom(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
    vision = build_model("squeezenet1_1", {}, 3, 5)
    assert vision(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize(
    "name, channels, message",
    [
        ("no_such_model", 3, "is not 'digits_resnet', a torchvision model name"),
        ("no_such_pkg.mod:factory", 3, "cannot be imported"),
        ("resnet18", 1, "needs 3-channel images, the data has 1"),
        ("stages.models:BUILTIN", 3, "is not callable"),
    ],
)
def test_factory_errors(name, channels, message):
    with pytest.raises(StageError, match=message):
        build_model(name, {}, channels, 10)


def test_checkpoint(tmp_path):
    source = DigitsResNet(width=8)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "ckpt.pt")
    target = DigitsResNet(width=8)
    load_checkpoint(target, str(tmp_path / "ckpt.pt"))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    with pytest.raises(StageError, match="does not fit 'model.name'"):
        load_checkpoint(DigitsResNet(width=4), str(tmp_path / "ckpt.pt"))
    save_pickled(source, tmp_path / "pickled.pt")
    with pytest.raises(StageError, match="is not a weights-only state_dict"):
        load_checkpoint(target, str(tmp_path / "pickled.pt"))


def _pruned_model(x: torch.Tensor) -> tuple[nn.Module, dict]:
    """A DigitsResNet with half of every channel group pruned, and its architecture description."""
    torch.manual_seed(0)
    ir = PruningIR(DigitsResNet(width=8).eval(), example_input=x)
    labels = [label for group in ir.snapshot().groups for label in group[: len(group) // 2]]
    return ir.prune(labels=labels).model.eval(), describe_architecture(SPEC, pruning_record(ir, labels))


def test_bundle_rebuilds_without_unpickling(tmp_path):
    x = torch.randn(4, 1, 8, 8)
    model, architecture = _pruned_model(x)
    assert save_bundle(model, architecture, tmp_path, x)
    rebuilt = load_bundle(tmp_path, safe=True).eval()
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    assert torch.equal(rebuilt(x), model(x))
    assert torch.equal(load_bundle(tmp_path)(x), model(x))


def test_bundle_refuses_weights_of_another_model(tmp_path):
    x = torch.randn(2, 1, 8, 8)
    model, architecture = _pruned_model(x)
    architecture["model"] = {**SPEC, "kwargs": {"width": 4}}  # a record made for another architecture
    assert not save_bundle(model, architecture, tmp_path, x)
    with pytest.raises(StageError, match="did not rebuild this model"):
        load_bundle(tmp_path, safe=True)
