"""PrunedMultiheadAttention reproduces nn.MultiheadAttention, and pruning attention is exact."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pruning import PruningIR
from pruning.pruned_modules import PrunedMultiheadAttention
from pruning.verify import equivalence_error, perturb

from models import TorchAttention


def as_pruned_class(m: nn.MultiheadAttention) -> PrunedMultiheadAttention:
    p = copy.deepcopy(m)
    p.__class__ = PrunedMultiheadAttention
    p.qk_head_dim = p.v_head_dim = m.head_dim
    p.scale = m.head_dim ** -0.5
    return p


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights, average", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("masks", ["none", "bool", "float", "padding", "both"])
def test_same_outputs_as_torch(batch_first, need_weights, average, masks):
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    p = as_pruned_class(m)
    b, l, s = 3, 5, 7
    q = torch.randn(b, l, 16) if batch_first else torch.randn(l, b, 16)
    kv = torch.randn(b, s, 16) if batch_first else torch.randn(s, b, 16)
    kwargs = {"need_weights": need_weights, "average_attn_weights": average}
    if masks in ("bool", "both"):
        kwargs["attn_mask"] = torch.rand(l, s) > 0.7
    if masks == "float":
        kwargs["attn_mask"] = torch.randn(b * 4, l, s)
    if masks in ("padding", "both"):
        kwargs["key_padding_mask"] = torch.tensor([[False] * (s - 1) + [True]] * b)
    expected, expected_w = m(q, kv, kv, **kwargs)
    got, got_w = p(q, kv, kv, **kwargs)
    assert torch.allclose(expected, got, atol=1e-5)
    if need_weights:
        assert torch.allclose(expected_w, got_w, atol=1e-5)
    else:
        assert got_w is None


def test_unbatched_input():
    torch.manual_seed(0)
    m = nn.MultiheadAttention(16, 2).eval()
    x = torch.randn(5, 16)
    assert torch.allclose(m(x, x, x)[0], as_pruned_class(m)(x, x, x)[0], atol=1e-5)


def test_attention_widths_prune_independently_and_exactly():
    torch.manual_seed(0)
    model = perturb(TorchAttention().eval())
    x = torch.randn(2, 5, 12)
    ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    rows = next(site for site in s.param_sites if site.name == "attn.in_proj_weight" and site.dim == 0)
    inner = sorted(set(rows.label_index.tolist()))
    assert len(inner) == 2 * 8  # 8 query/key features per head, 8 value features per head
    labels = [s.label(i) for i in inner[::2]]
    assert equivalence_error(ir, labels, x) < 1e-4
    pruned = ir.prune(labels=labels).model
    attn = pruned.get_submodule("attn")
    assert isinstance(attn, PrunedMultiheadAttention)
    assert attn.in_proj_weight.shape == (4 * 4 * 3, 32) and attn.out_proj.in_features == 16
    stream = [label for group in s.groups for label in group if s.analysis.normalized[label.index]]
    assert not stream  # this block has no LayerNorm: the width is an exact label too
    width = next(site for site in s.param_sites if site.name == "attn.in_proj_weight" and site.dim == 1)
    labels = [s.label(i) for i in sorted(set(width.label_index.tolist()))[:8]]
    assert equivalence_error(ir, labels, x) < 1e-4
    assert ir.prune(labels=labels).model.get_submodule("attn").embed_dim == 24
