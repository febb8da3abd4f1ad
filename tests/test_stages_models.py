"""Model factory, checkpoints, and the weights-only rebuild path."""

import pytest
import torch
from torch import nn

from stages.artifacts import save_pickled
from stages.bundle import load_bundle, save_bundle
from stages.errors import StageError
from stages.models import DigitsResNet, build_model, load_checkpoint

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


def _shrunk_model() -> nn.Module:
    """A DigitsResNet whose layer1 inner width is cut from 8 to 3, as pruning that channel group would."""
    model = DigitsResNet(width=8)
    model.layer1.conv1 = nn.Conv2d(8, 3, 3, 1, 1, bias=False)
    model.layer1.bn1 = nn.BatchNorm2d(3)
    model.layer1.conv2 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
    return model.eval()


def test_bundle_rebuilds_without_unpickling(tmp_path):
    model = _shrunk_model()
    x = torch.randn(4, 1, 8, 8)
    assert save_bundle(model, SPEC, tmp_path, x)
    rebuilt = load_bundle(tmp_path, safe=True).eval()
    assert rebuilt.layer1.conv1.out_channels == 3
    assert torch.equal(rebuilt(x), model(x))
    assert torch.equal(load_bundle(tmp_path)(x), model(x))


def test_bundle_records_an_unrebuildable_model(tmp_path):
    class Scaled(DigitsResNet):
        def forward(self, x):
            return super().forward(x) * self.layer1.conv1.out_channels  # depends on a channel count

    model = _shrunk_model()
    model.__class__ = Scaled
    assert not save_bundle(model, SPEC, tmp_path, torch.randn(2, 1, 8, 8))
    with pytest.raises(StageError, match="cannot be rebuilt from architecture.json"):
        load_bundle(tmp_path, safe=True)
