"""The workflow of ENOT's `pruning_v2` documentation, verbatim, on a small model."""
from __future__ import annotations

import torch

from models import Residual


def test_seed_workflow_runs_as_documented():
    from pruning import LossAwareCriterion, PruningIR, UniformLabelSelector

    torch.manual_seed(0)
    model = Residual()
    loader = [(torch.randn(4, 3, 12, 12), torch.randint(0, 10, (4,))) for _ in range(3)]
    loss_function = torch.nn.CrossEntropyLoss()
    ir = PruningIR(model)
    with LossAwareCriterion(ir) as score_collector:
        for images, targets in loader:
            model_output = score_collector(images)
            loss = loss_function(model_output, targets)
            loss.backward()
    label_selector = UniformLabelSelector(pruning_ratio=0.5)
    labels_for_pruning = label_selector.select(ir)
    ir = ir.prune(labels=labels_for_pruning)
    pruned_model = ir.model
    assert pruned_model(loader[0][0]).shape == (4, 10)
    assert sum(p.numel() for p in pruned_model.parameters()) < sum(p.numel() for p in model.parameters())
