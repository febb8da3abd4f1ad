"""Training is byte-for-byte reproducible; BatchNorm re-estimation replaces stale statistics."""

import hashlib
import io

import pytest
import torch
from torch.utils.data import TensorDataset

from stages.data import make_loader
from stages.errors import StageError
from stages.models import DigitsResNet
from stages.params import Params
from stages.training import recalibrate_batchnorm, setup, train_epochs

PARAMS = Params({
    "seed": 0, "device": "cpu", "threads": 1,
    "train": {"optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 0.0, "momentum": 0.9}, "schedule": "cosine"},
})


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(96, 1, 8, 8, generator=generator), torch.randint(0, 10, (96,), generator=generator))


def _trained_digest() -> str:
    seed, device = setup(PARAMS)
    model = DigitsResNet(width=8)
    train_epochs(model, make_loader(_data(), 32, shuffle=True, seed=seed), PARAMS, 2, device, desc="test")
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def test_same_seed_same_weights():
    assert _trained_digest() == _trained_digest()


def test_recalibrate_batchnorm_replaces_statistics():
    setup(PARAMS)
    model = DigitsResNet(width=8)
    model.stem[1].running_mean.fill_(100.0)
    assert recalibrate_batchnorm(model, make_loader(_data(), 32, shuffle=False, seed=0), torch.device("cpu"), 2) == 8
    assert model.stem[1].running_mean.abs().max() < 10.0
    assert model.stem[1].momentum == 0.1


def test_bad_device_and_optimizer():
    with pytest.raises(StageError, match="'device' = 'tpu' is not a torch device"):
        setup(Params({"seed": 0, "threads": 1, "device": "tpu"}))
    bad = Params({"train": {"optimizer": {"name": "lion"}}})
    with pytest.raises(StageError, match="'train.optimizer.name' must be one of 'sgd'"):
        train_epochs(DigitsResNet(width=4), make_loader(_data(), 32, shuffle=False, seed=0), bad, 1, torch.device("cpu"), "x")
