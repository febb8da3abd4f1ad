"""torchvision's Swin transformer functions, which its graph calls as single opaque ops: shifted window
attention (2-D, and Video Swin's 3-D) and patch merging's padding (registered only when torchvision is
installed)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..nodes import arg
from ..pruned_modules import (
    pruned_shifted_window_attention,
    pruned_shifted_window_attention_3d,
)
from ..registry import CONSERVATIVE, Fixed, Rule, register_rule
from .common import contract, packed_heads


class ShiftedWindowAttention(Rule):
    """torchvision's ``shifted_window_attention`` (Swin v1/v2 attention, one opaque call in its graph).

    * Input channels are ``qkv_weight``'s columns; ``proj_weight``'s rows are the output channels.
    * Query and key features are contracted together, value features reach ``proj_weight``'s columns;
      within both, feature ``j`` of every head is one label (heads stay whole and equally wide).
    * Swin v2's cosine attention normalises q and k over their features, so those labels enter
      statistics (pruning them is valid, not exact, like a LayerNorm's).
    After pruning, the call becomes :func:`~pruning.pruned_modules.pruned_shifted_window_attention`,
    which takes the head widths and the original scale instead of deriving them from the input width.
    Video Swin's ``shifted_window_attention_3d`` takes a (B, T, H, W, C) input and no ``logit_scale``
    (``cosine=False``: its 12th argument is ``training``) and becomes ``pruned_shifted_window_attention_3d``.
    """


    def __init__(self, pruned: Callable = pruned_shifted_window_attention, cosine: bool = True) -> None:
        self.pruned, self.cosine = pruned, cosine

    def propagate(self, ctx, node):
        x, weight, proj = node.args[0], node.args[1], node.args[2]
        heads = arg(node, 5, "num_heads")
        vx, vw, vp = ctx.value(x), ctx.value(weight), ctx.value(proj)
        if not isinstance(heads, int) or vw is None or vp is None or vw[0] is None or vp[0] is None \
                or vp[1] is None or len(vx) != (4 if self.cosine else 5):
            return CONSERVATIVE.propagate(ctx, node)
        ctx.block_value(vx[:-1])
        contract(ctx, vx[-1], vw[1])
        rows = vw[0]
        ctx.internal(rows)
        qk, vd = _window_widths(node, ctx.shape(x)[-1], heads)
        contract(ctx, packed_heads(ctx, rows, heads, qk, vd), vp[1])
        for bias, ids in ((arg(node, 9, "qkv_bias"), rows), (arg(node, 10, "proj_bias"), vp[0])):
            if bias is not None:
                contract(ctx, ids, ctx.value(bias)[0])
        if self.cosine and arg(node, 11, "logit_scale") is not None:
            ctx.space.normalized(rows[:2 * heads * qk])  # cosine attention normalises q and k
            ctx.block_value(ctx.value(arg(node, 11, "logit_scale")))
        ctx.block_value(ctx.value(node.args[3]))  # relative position bias: per head
        return (None,) * (len(vx) - 1) + (vp[0],)

    def rewrite(self, rw, node):
        heads = arg(node, 5, "num_heads")
        _, vd = _window_widths(node, rw.old_shape(node.args[0])[-1], heads)
        new_vd = rw.new_shape(node.args[2])[1] // heads
        new_qk = (rw.new_shape(node.args[1])[0] - heads * new_vd) // (2 * heads)
        scale = node.kwargs.get("scale", (rw.old_shape(node.args[0])[-1] // heads) ** -0.5)
        node.target = self.pruned
        node.kwargs = {**node.kwargs, "qk_head_dim": new_qk, "v_head_dim": new_vd, "scale": scale}


def _window_widths(node, channels: int, heads: int) -> tuple[int, int]:
    """(query/key, value) features per head of a window-attention call before this pruning."""
    if "qk_head_dim" in node.kwargs:
        return node.kwargs["qk_head_dim"], node.kwargs["v_head_dim"]
    return channels // heads, channels // heads


class PatchMergingPad(Rule):
    """torchvision's ``_patch_merging_pad``: pads H and W to even sizes and concatenates the four 2x2
    phases along the channels, so every input channel appears four times in the output."""

    def propagate(self, ctx, node):
        value = ctx.value(node.args[0])
        ctx.block_value(value[:-1])
        ids = value[-1]
        return (None,) * (len(value) - 1) + (None if ids is None else np.tile(ids, 4),)


register_rule(pruned_shifted_window_attention, ShiftedWindowAttention())
register_rule(pruned_shifted_window_attention_3d,
              ShiftedWindowAttention(pruned_shifted_window_attention_3d, cosine=False))
try:
    from torchvision.models import swin_transformer
except ImportError:  # pragma: no cover - torchvision is installed in development
    pass
else:
    register_rule(swin_transformer.shifted_window_attention, ShiftedWindowAttention())
    register_rule(swin_transformer._patch_merging_pad, PatchMergingPad())
    # The relative position bias is a table per head, and heads are never pruned.
    register_rule(swin_transformer._get_relative_position_bias, Fixed())
try:
    from torchvision.models.video import swin_transformer as video_swin
except ImportError:  # pragma: no cover - torchvision is installed in development
    pass
else:
    register_rule(video_swin.shifted_window_attention_3d,
                  ShiftedWindowAttention(pruned_shifted_window_attention_3d, cosine=False))
    register_rule(video_swin._get_relative_position_bias, Fixed())
