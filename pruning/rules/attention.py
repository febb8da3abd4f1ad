"""``nn.MultiheadAttention``: model width, query/key and value features pruned independently."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..nodes import arg
from ..pruned_modules import PrunedMultiheadAttention
from ..registry import CONSERVATIVE, Rule, register
from .common import broadcast, contract, packed_heads


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
            contract(ctx, value[-1], columns)
            ctx.block_value(value[:-1])
        rows = ctx.param_axis(f"{name}.in_proj_weight", 0)
        ctx.internal(rows)
        if m.in_proj_bias is not None:
            ctx.space.merge(rows, ctx.param_axis(f"{name}.in_proj_bias", 0))
        v = packed_heads(ctx, rows, m.num_heads, *_widths(m))
        contract(ctx, v, ctx.param_axis(f"{name}.out_proj.weight", 1))
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



@register(F.scaled_dot_product_attention)
class ScaledDotProductAttention(Rule):
    """``softmax(q k^T) v``: q and k features are pruned together, v's features reach the output.

    The default scale is ``1/sqrt(q.size(-1))``; after pruning the original scale is passed
    explicitly, so removing dead features leaves the attention unchanged.
    """


    def propagate(self, ctx, node):
        q, k, v = (ctx.value(a) for a in node.args[:3])
        sq, sk, sv = (ctx.shape(a) for a in node.args[:3])
        contract(ctx, q[-1], k[-1])
        for ids in (k[-2], v[-2]):  # keys/values enter a softmax over tokens
            if ids is not None:
                ctx.space.block(ids)
        ctx.block_value(ctx.value(arg(node, 3, "attn_mask")))
        batch = broadcast(ctx, ctx.shape(node)[:-2], [(q[:-2], sq[:-2]), (k[:-2], sk[:-2]),
                                                      (v[:-2], sv[:-2])])
        return batch + (q[-2], v[-1])

    def rewrite(self, rw, node):
        if node.kwargs.get("scale") is None:
            node.kwargs = {**node.kwargs, "scale": rw.old_shape(node.args[0])[-1] ** -0.5}
