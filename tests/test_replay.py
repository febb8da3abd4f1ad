"""A pruned model rebuilt from plain data and a weights-only state_dict equals the original."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision

from pruning import PruningIR
from pruning.replay import pruning_record, replay

from models import Attention, Shuffle


@pytest.mark.parametrize("factory, shape", [(Shuffle, (2, 3, 12, 12)), (Attention, (2, 5, 12)),
                                            (torchvision.models.vit_b_32, (1, 3, 224, 224))])
def test_replay_rebuilds_without_pickles(factory, shape, tmp_path):
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(*shape)
    ir = PruningIR(model, example_input=x)
    labels = [label for group in ir.snapshot().groups for label in group[: len(group) // 2]]
    pruned = ir.prune(labels=labels).model
    (tmp_path / "record.json").write_text(json.dumps(pruning_record(ir, labels)))
    torch.save(pruned.state_dict(), tmp_path / "state_dict.pt")

    record = json.loads((tmp_path / "record.json").read_text())
    weights = torch.load(tmp_path / "state_dict.pt", weights_only=True)
    torch.manual_seed(1)  # a fresh model with other weights: the weights come from the state_dict
    rebuilt = replay(factory().eval(), record, weights).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned.eval()(x))


def test_replay_refuses_another_architecture():
    x = torch.randn(2, 3, 12, 12)
    ir = PruningIR(Shuffle(), example_input=x)
    record = pruning_record(ir, ir.snapshot().labels[:1])
    with pytest.raises(ValueError, match="structure"):
        replay(torchvision.models.resnet18(), {**record, "inputs": [{"shape": [1, 3, 32, 32], "dtype": "float32"}]})
