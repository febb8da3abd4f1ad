"""torchvision's video transformers: MViT (v1 and v2) through its fx-wrapped helpers, on tiny configurations."""
from __future__ import annotations

import pytest
import torch

from pruning import PruningIR
from pruning.verify import equivalence_error, perturb

mvit = pytest.importorskip("torchvision.models.video.mvit")


def _tiny_mvit(v2: bool) -> torch.nn.Module:
    blocks = [mvit.MSBlockConfig(num_heads=1, input_channels=16, output_channels=32, kernel_q=[3, 3, 3],
                                 kernel_kv=[3, 3, 3], stride_q=[1, 1, 1], stride_kv=[1, 2, 2]),
              mvit.MSBlockConfig(num_heads=2, input_channels=32, output_channels=32, kernel_q=[3, 3, 3],
                                 kernel_kv=[3, 3, 3], stride_q=[1, 2, 2], stride_kv=[1, 1, 1])]
    return mvit.MViT(spatial_size=(32, 32), temporal_size=4, block_setting=blocks, residual_pool=v2,
                     residual_with_cls_embed=False, rel_pos_embed=v2, proj_after_attn=v2, num_classes=5,
                     patch_embed_kernel=(3, 7, 7), patch_embed_stride=(2, 4, 4), patch_embed_padding=(1, 3, 3))


@pytest.mark.parametrize("v2", [False, True])
def test_mvit_heads_pooling_and_relative_positions_prune_exactly(v2):
    torch.manual_seed(0)
    model = perturb(_tiny_mvit(v2).eval())
    x = torch.randn(1, 3, 4, 32, 32)
    ir = PruningIR(model, example_input=x)
    s = ir.snapshot()
    assert s.opaque_ops == []
    owned = [set(s.slices(group[0])) for group in s.groups]
    if v2:  # a query/key feature and the relative position tables' column of it go together
        assert any({"blocks.1.attn.rel_pos_h", "blocks.1.attn.rel_pos_t"} <= o for o in owned)
    exact = [label for group in s.groups for label in group[: len(group) // 2]
             if not s.analysis.normalized[label.index]]
    assert equivalence_error(ir, exact, x, dtype=torch.float64) < 1e-10
    pruned = ir.prune(labels=[label for group in s.groups for label in group[: len(group) // 2]]).model
    assert sum(p.numel() for p in pruned.parameters()) < 0.45 * sum(p.numel() for p in model.parameters())
    assert pruned(x).shape == (1, 5)
