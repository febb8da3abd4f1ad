"""``nn.MultiheadAttention``: model width, query/key and value features pruned independently."""
from __future__ import annotations

from torch import nn

from ..pruned_modules import PrunedMultiheadAttention
from ..registry import CONSERVATIVE, Rule, register
from ..nodes import arg
from .common import packed_heads
from .tensor_ops import _contract


@register(nn.MultiheadAttention, PrunedMultiheadAttention)
class MultiheadAttentionRule(Rule):
    """Channels of ``nn.MultiheadAttention`` (packed q/k/v projection, ``kdim == vdim == embed_dim``).

    * The inputs' feature dims share the projection's columns (pruned together).
    * Query and key features are contracted together; value features reach ``out_proj``'s columns.
      Within both, feature ``j`` of every head is one label, so all heads keep the same width.
    * ``out_proj``'s rows are the output's features.
    Token and batch dims must carry no channels. After pruning, the module becomes a
    :class:`~pruning.pruned_modules.PrunedMultiheadAttention`, which allows the three widths to
    differ. Other configurations (separate projections, ``add_bias_kv``) are treated as opaque.
    """

    def propagate(self, ctx, node):
        m = ctx.module(node)
        if not m._qkv_same_embed_dim or m.bias_k is not None:
            return CONSERVATIVE.propagate(ctx, node)
        name = node.target
        inputs = [arg(node, 0, "query"), arg(node, 1, "key"), arg(node, 2, "value")]
        columns = ctx.param_axis(f"{name}.in_proj_weight", 1)
        for x in inputs:
            value = ctx.value(x)
            _contract(ctx, value[-1], columns)
            ctx.block_value(value[:-1])
        rows = ctx.param_axis(f"{name}.in_proj_weight", 0)
        ctx.internal(rows)
        if m.in_proj_bias is not None:
            ctx.space.merge(rows, ctx.param_axis(f"{name}.in_proj_bias", 0))
        v = packed_heads(ctx, rows, m.num_heads, *_widths(m))
        _contract(ctx, v, ctx.param_axis(f"{name}.out_proj.weight", 1))
        out = ctx.param_axis(f"{name}.out_proj.weight", 0)
        if m.out_proj.bias is not None:
            ctx.space.merge(out, ctx.param_axis(f"{name}.out_proj.bias", 0))
        query = ctx.value(inputs[0])
        result = tuple(query[:-1]) + (out,)
        return [result, None]

    def update_module(self, m):
        heads = m.num_heads
        qk, vd = _widths(m)
        if not isinstance(m, PrunedMultiheadAttention):
            m.scale = qk ** -0.5
            m.__class__ = PrunedMultiheadAttention
        m.v_head_dim = m.out_proj.weight.shape[1] // heads
        m.qk_head_dim = (m.in_proj_weight.shape[0] - heads * m.v_head_dim) // (2 * heads)
        m.embed_dim = m.kdim = m.vdim = m.in_proj_weight.shape[1]
        m.head_dim = m.qk_head_dim
        m.out_proj.in_features = m.out_proj.weight.shape[1]
        m.out_proj.out_features = m.out_proj.weight.shape[0]


def _widths(m: nn.MultiheadAttention) -> tuple[int, int]:
    """(query/key, value) features per head before this pruning."""
    if isinstance(m, PrunedMultiheadAttention):
        return m.qk_head_dim, m.v_head_dim
    return m.head_dim, m.head_dim

