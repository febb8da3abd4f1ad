"""Removing dead channels must leave a model's outputs unchanged, for every dependency kind."""
from __future__ import annotations

import pytest
import torch

from pruning import PruningIR
from pruning.verify import equivalence_error, perturb, zero_labels

from models import IMAGE_MODELS, TOKEN_MODELS


def _cases():
    for cls in IMAGE_MODELS:
        yield pytest.param(cls, (2, 3, 12, 12), id=cls.__name__)
    for cls, shape in TOKEN_MODELS.items():
        yield pytest.param(cls, shape, id=cls.__name__)


def exact_half(snapshot):
    """About half of every group, leaving out labels inside LayerNorm statistics."""
    a = snapshot.analysis
    chosen = []
    for group in a.groups:
        usable = [i for i in group if not a.normalized[i]][: len(group) // 2 or 0]
        chosen += [snapshot.label(i) for i in usable]
    return chosen


@pytest.mark.parametrize("cls, shape", list(_cases()))
def test_dead_channels_prune_exactly(cls, shape):
    torch.manual_seed(0)
    model = perturb(cls().eval())
    x = torch.randn(*shape)
    ir = PruningIR(model, example_input=x)
    labels = exact_half(ir.snapshot())
    assert labels, "the model should have exactly removable channels"
    assert equivalence_error(ir, labels, x) < 1e-4


@pytest.mark.parametrize("cls, shape", list(_cases()))
def test_half_pruned_model_is_smaller_runs_and_trains(cls, shape):
    torch.manual_seed(0)
    model = cls()
    x = torch.randn(*shape)
    ir = PruningIR(model, example_input=x)
    snapshot = ir.snapshot()
    labels = [label for group in snapshot.groups for label in group[: len(group) // 2]]
    pruned = ir.prune(labels=labels).model
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in pruned.parameters())
    assert after < before
    out = pruned.train()(x)
    assert out.shape == model(x).shape
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1)
    out.square().mean().backward()
    optimizer.step()
    assert torch.isfinite(pruned(x)).all()


def test_dead_channel_check_is_not_vacuous():
    """Zeroing labels that are then *not* pruned changes nothing; pruning live labels does change
    the output, so the equivalence test can fail."""
    torch.manual_seed(0)
    model = perturb(IMAGE_MODELS[0]().eval())
    x = torch.randn(2, 3, 12, 12)
    ir = PruningIR(model, example_input=x)
    labels = exact_half(ir.snapshot())
    pruned = ir.prune(labels=labels)
    with torch.no_grad():
        assert (model(x) - pruned.model(x)).abs().max() > 1e-3
    zero_labels(ir, labels)
    with torch.no_grad():
        assert torch.allclose(model(x), pruned.model(x), atol=1e-5)
