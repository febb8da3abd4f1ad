"""A representative part of the torchvision zoo: prune half of every group, run, stay exact.

``benchmarks/zoo.py`` runs all 80 classification models; CI runs these.
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from pruning import PruningIR
from pruning.verify import equivalence_error, perturb

SUBSET = ["resnet18", "mobilenet_v2", "shufflenet_v2_x0_5", "densenet121", "efficientnet_b0",
          "vit_b_32", "swin_t", "convnext_tiny", "resnext50_32x4d", "maxvit_t"]
#: Parameters left at most, as a fraction, after half of every group goes (0.8 by default). swin_t and
#: maxvit_t keep ~0.26 only when their attention prunes (window attention and einsum rules); without
#: those rules they kept 0.69 and 0.60.
KEPT_AT_MOST = {"swin_t": 0.3, "maxvit_t": 0.3}


@pytest.mark.parametrize("name", SUBSET)
def test_zoo_model(name):
    torch.manual_seed(0)
    model = perturb(torchvision.models.get_model(name).eval())
    x = torch.randn(1, 3, 224, 224)
    ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    half = [label for group in s.groups for label in group[: len(group) // 2]]
    assert len(half) > 0.3 * len(s.labels)
    pruned = ir.prune(labels=half)
    with torch.no_grad():
        assert pruned.model(x).shape == (1, 1000)
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.model.parameters()) < KEPT_AT_MOST.get(name, 0.8) * before
    exact = [label for label in half if not s.analysis.normalized[label.index]]
    assert equivalence_error(ir, exact, x) < 1e-4


#: timm models that cache derived tensors (attention biases, in a dict keyed by device) in eval mode; about as
#: fast as resnet18 here, so not marked slow.
CACHING_TIMM = ["levit_128s", "efficientformer_l1"]


@pytest.mark.parametrize("name", CACHING_TIMM)
def test_timm_model_that_ran_in_eval_mode_prunes(name):
    # Run once in eval mode first, as a user checking accuracy does: tracing then met its cache filled.
    import timm

    torch.manual_seed(0)
    model = perturb(timm.create_model(name, pretrained=False, num_classes=10).eval())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
    def caches():  # by identity: what each module's cache holds
        return {id(m): {k: id(v) for k, v in m.attention_bias_cache.items()}
                for m in model.modules() if hasattr(m, "attention_bias_cache")}

    cache = caches()
    assert cache and all(cache.values())
    ir = PruningIR(model, example_input=x)
    assert caches() == cache  # tracing left a Proxy in each, which the next trace read
    s = ir.snapshot()
    half = [label for group in s.groups for label in group[: len(group) // 2]]
    pruned = ir.prune(labels=half)
    with torch.no_grad():
        torch.testing.assert_close(ir.model(x), expected)
        assert pruned.model(x).shape == (1, 10)
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.model.parameters()) < 0.8 * before
    exact = [label for label in half if not s.analysis.normalized[label.index]]
    assert exact and equivalence_error(ir, exact, x, dtype=torch.float64) < 1e-6
