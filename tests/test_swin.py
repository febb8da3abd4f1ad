"""torchvision's Swin transformers: window attention and patch merging prune through their opaque calls."""
from __future__ import annotations

import pytest
import torch

from pruning import PruningIR
from pruning.pruned_modules import (
    pruned_shifted_window_attention,
    pruned_shifted_window_attention_3d,
)
from pruning.verify import equivalence_error, perturb

swin = pytest.importorskip("torchvision.models.swin_transformer")


@pytest.mark.parametrize("height, width, shift, cosine", [
    (14, 14, [3, 3], False), (13, 10, [3, 3], False), (14, 7, [3, 3], False), (7, 7, [3, 3], True),
    (5, 21, [3, 3], True), (14, 14, [0, 0], False),
])
def test_pruned_window_attention_computes_torchvisions(height, width, shift, cosine):
    torch.manual_seed(0)
    c, heads = 24, 3
    x, qkv_w, qkv_b = torch.randn(2, height, width, c), torch.randn(3 * c, c), torch.randn(3 * c)
    proj_w, proj_b, bias = torch.randn(c, c), torch.randn(c), torch.randn(heads, 49, 49)
    logit_scale = torch.rand(heads, 1, 1) * 3 if cosine else None
    args = (x, qkv_w, proj_w, bias, [7, 7], heads, shift, 0.0, 0.0, qkv_b, proj_b, logit_scale, False)
    expected = swin.shifted_window_attention(*args)
    got = pruned_shifted_window_attention(*args, qk_head_dim=8, v_head_dim=8, scale=8 ** -0.5)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _tiny(v2: bool):
    extra = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2} if v2 else {}
    return swin.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                window_size=[4, 4], num_classes=5, **extra)


@pytest.mark.parametrize("v2", [False, True])
def test_swin_attention_and_stage_widths_prune_exactly(v2):
    torch.manual_seed(0)
    model = perturb(_tiny(v2).eval())
    x = torch.randn(2, 3, 40, 36)  # odd window counts: padding and patch-merging padding
    ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    assert s.opaque_ops == []
    owned = [set(s.slices(group[0])) for group in s.groups]
    for block in ("features.1.1", "features.3.0"):
        assert any({f"{block}.attn.qkv.weight", f"{block}.attn.proj.weight"} <= o and f"{block}.norm1.weight" not in o
                   for o in owned)  # value features
        assert any({f"{block}.norm1.weight", f"{block}.attn.qkv.weight", f"{block}.attn.proj.bias"} <= o
                   for o in owned)  # the stage width
    exact = [label for group in s.groups for label in group[::2] if not s.analysis.normalized[label.index]]
    assert equivalence_error(ir, exact, x, dtype=torch.float64) < 1e-10
    pruned = ir.prune(labels=[label for group in s.groups for label in group[: len(group) // 2]]).model
    assert sum(p.numel() for p in pruned.parameters()) < 0.45 * sum(p.numel() for p in model.parameters())
    pruned.train()(x).square().sum().backward()
    again = PruningIR(pruned.eval(), example_input=x)  # the pruned call is understood as well
    labels = [group[0] for group in again.snapshot().groups]
    assert equivalence_error(again, [label for label in labels if not again.snapshot().analysis.normalized[label.index]],
                             x, dtype=torch.float64) < 1e-10


video_swin = pytest.importorskip("torchvision.models.video.swin_transformer")


@pytest.mark.parametrize("size, window, shift", [
    ((4, 14, 14), [2, 7, 7], [1, 3, 3]), ((3, 10, 13), [2, 7, 7], [1, 3, 3]), ((4, 8, 8), [2, 4, 4], [0, 2, 2]),
    ((4, 8, 8), [2, 4, 4], [0, 0, 0]),
])
def test_pruned_window_attention_computes_torchvisions_3d(size, window, shift):
    torch.manual_seed(0)
    c, heads, tokens = 12, 3, window[0] * window[1] * window[2]
    x, qkv_w, qkv_b = torch.randn(2, *size, c), torch.randn(3 * c, c), torch.randn(3 * c)
    proj_w, proj_b, bias = torch.randn(c, c), torch.randn(c), torch.randn(1, heads, tokens, tokens)
    args = (x, qkv_w, proj_w, bias, window, heads, shift, 0.0, 0.0, qkv_b, proj_b, False)
    expected = video_swin.shifted_window_attention_3d(*args)
    got = pruned_shifted_window_attention_3d(*args, qk_head_dim=4, v_head_dim=4, scale=4 ** -0.5)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_video_swin_attention_prunes_exactly():
    torch.manual_seed(0)
    model = video_swin.SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                         window_size=[2, 4, 4], num_classes=5)
    model = perturb(model.eval())
    x = torch.randn(1, 3, 4, 36, 40)
    ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    assert s.opaque_ops == []
    exact = [label for group in s.groups for label in group[::2] if not s.analysis.normalized[label.index]]
    assert equivalence_error(ir, exact, x, dtype=torch.float64) < 1e-10
    pruned = ir.prune(labels=[label for group in s.groups for label in group[: len(group) // 2]]).model
    assert sum(p.numel() for p in pruned.parameters()) < 0.45 * sum(p.numel() for p in model.parameters())
    assert pruned(x).shape == model(x).shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pruned_video_swin_runs_on_cuda():
    torch.manual_seed(0)
    model = video_swin.SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                         window_size=[2, 4, 4], num_classes=5)
    model, x = perturb(model.eval()), torch.randn(1, 3, 4, 36, 40)
    ir = PruningIR(model, example_input=x)
    pruned = ir.prune(labels=[label for group in ir.snapshot().groups for label in group[: len(group) // 2]]).model
    with torch.no_grad():
        expected = pruned(x)
        got = pruned.cuda()(x.cuda())
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
