"""The snapshot's GraphModule is built on first use; pruning a never-built snapshot builds the pruned
GraphModule directly. Both paths must give the same ids, models and saved files."""
from __future__ import annotations

import io

import dill
import torch
from torch import nn

from pruning import PruningIR
from pruning.ir import fingerprint
from pruning.verify import perturb

from models import Residual


def half(snapshot):
    return [label for group in snapshot.groups for label in group[: len(group) // 2]]


class Constants(nn.Module):
    """Reads tensors with get_attr: a non-persistent buffer at the top, and a parameter of a module
    it also calls (so the get_attr target lies inside a called module)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)
        self.register_buffer("offset", torch.linspace(0, 1, 12), persistent=False)

    def forward(self, x):
        y = torch.relu(self.conv(x)) + self.conv.bias.view(1, -1, 1, 1)
        return self.head(y) + self.offset


def test_unbuilt_snapshot_prunes_like_a_built_one():
    torch.manual_seed(0)
    model, x = perturb(Residual()), torch.randn(2, 3, 12, 12)
    lazy = PruningIR(model, example_input=x)
    built = PruningIR(model, example_input=x)
    built.model  # noqa: B018 - builds the GraphModule first
    assert lazy.snapshot()._model is None and built.snapshot()._model is not None
    assert lazy.uid == built.uid == fingerprint(built.model)
    a = lazy.prune(labels=half(lazy.snapshot()))
    b = built.prune(labels=half(built.snapshot()))
    assert lazy.snapshot()._model is None  # pruning did not build the unpruned model
    assert a.uid == b.uid and a.model.code == b.model.code
    assert torch.equal(a.model(x), b.model(x))
    assert a.model.state_dict().keys() == b.model.state_dict().keys()
    assert a.model.training == model.training


def test_direct_copy_keeps_nested_targets_and_buffer_persistence():
    torch.manual_seed(0)
    model, x = perturb(Constants()).eval(), torch.randn(1, 3, 12, 12)
    ir = PruningIR(model, example_input=x)
    labels = ir.snapshot().labels
    pruned = ir.prune(labels=labels[:3]).model
    assert "offset" not in pruned.state_dict()  # still non-persistent
    assert pruned.conv.weight.shape == (5, 3, 3, 3) and pruned.conv.bias.shape == (5,)
    assert pruned.conv.bias is dict(pruned.named_parameters())["conv.bias"]
    reference = Constants().eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.conv.weight[[label.index for label in labels[:3]]] = 0
        reference.conv.bias[[label.index for label in labels[:3]]] = 0
    assert torch.allclose(pruned(x), reference(x), atol=1e-5)
    assert pruned.conv.weight.data_ptr() != model.conv.weight.data_ptr()


def _copy_attr_registering_every_buffer_persistent(from_module, to_module, target):
    """torch.fx's ``_copy_attr`` as torch 2.11 has it (seen on a device): a copied buffer always persistent."""
    *prefix, field = target.split(".")
    for item in prefix:
        f, t = getattr(from_module, item), getattr(to_module, item, None)
        if f is t:
            return
        if t is None:
            t = nn.Module()
            setattr(to_module, item, t)
        from_module, to_module = f, t
    value = getattr(from_module, field)
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        to_module.register_buffer(field, value)
    else:
        setattr(to_module, field, value)


def test_buffer_persistence_is_kept_where_fx_drops_it(monkeypatch):
    monkeypatch.setattr(torch.fx.graph_module, "_copy_attr", _copy_attr_registering_every_buffer_persistent)
    model, x = perturb(Constants()).eval(), torch.randn(1, 3, 12, 12)
    for build_first in (True, False):  # the traced model, and a pruned copy built directly
        ir = PruningIR(model, example_input=x)
        if build_first:
            assert "offset" not in ir.model.state_dict()
        pruned = ir.prune(labels=ir.snapshot().labels[:3]).model
        assert "offset" not in pruned.state_dict() and "offset" in dict(pruned.named_buffers())
    assert "offset" not in model.state_dict()  # the user's model untouched


def test_unbuilt_snapshot_saves_with_its_model():
    torch.manual_seed(0)
    model, x = perturb(Residual()), torch.randn(2, 3, 12, 12)
    lazy, built = PruningIR(model, example_input=x), PruningIR(model, example_input=x)
    built.model  # noqa: B018
    files = []
    for ir in (lazy, built):
        buffer = io.BytesIO()
        torch.save(ir, buffer, pickle_module=dill)
        files.append(buffer.getvalue())
    assert files[0] == files[1]
    loaded = torch.load(io.BytesIO(files[0]), pickle_module=dill, weights_only=False)
    assert loaded.uid == lazy.uid and torch.equal(loaded.model(x), model(x))


def test_inplace_on_unbuilt_snapshot_shares_the_users_modules():
    torch.manual_seed(0)
    model, x = perturb(Residual()), torch.randn(2, 3, 12, 12)
    ir = PruningIR(model, example_input=x)
    expected = ir.prune(labels=half(ir.snapshot()))
    pruned = ir.prune(labels=half(ir.snapshot()), inplace=True)
    assert pruned is ir
    assert all(a is b for a, b in zip(pruned.model.parameters(), model.parameters()))
    assert torch.equal(pruned.model(x), expected.model(x))
