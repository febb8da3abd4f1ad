"""torchvision's MViT functions, which its graph calls as single opaque ops (fx-wrapped): adding and
removing a head dim, the pooling residual and the decomposed relative position terms of MViTv2 (registered by
name, so that torchvision need not be installed or imported)."""
from __future__ import annotations

from ..nodes import arg, is_size
from ..registry import CONSERVATIVE, Rule, register_rule
from .common import broadcast, contract


def _int(value: object) -> int | None:
    """A literal int, or one the shape pass recorded for a node (``x.dim()``)."""
    value = getattr(value, "meta", {}).get("pruning_int", value)
    return value if type(value) is int else None


class Unsqueeze(Rule):
    """``_unsqueeze(x, target_dim, expand_dim) -> (x, x.dim())``: a size-1 dim inserted at ``expand_dim``
    when ``x`` has one dim fewer than ``target_dim``."""

    def propagate(self, ctx, node):
        x, target, expand = node.args[0], _int(arg(node, 1, "target_dim")), _int(arg(node, 2, "expand_dim"))
        value, shape = ctx.value(x), ctx.shape(x)
        if value is None or not is_size(shape) or target is None or expand is None:
            return CONSERVATIVE.propagate(ctx, node)
        if len(shape) == target - 1:
            expand = expand if expand >= 0 else expand + len(shape) + 1
            value = value[:expand] + (None,) + value[expand:]
        return [tuple(value), None]


class Squeeze(Rule):
    """``_squeeze(x, target_dim, expand_dim, tensor_dim)``: :class:`Unsqueeze` undone."""

    def propagate(self, ctx, node):
        x = node.args[0]
        target, expand, before = (_int(arg(node, i, name)) for i, name in
                                  ((1, "target_dim"), (2, "expand_dim"), (3, "tensor_dim")))
        value, shape = ctx.value(x), ctx.shape(x)
        if value is None or not is_size(shape) or None in (target, expand, before):
            return CONSERVATIVE.propagate(ctx, node)
        if before == target - 1:
            expand = expand if expand >= 0 else expand + len(shape)
            ctx.block_value(value[expand])
            value = value[:expand] + value[expand + 1:]
        return tuple(value)


class AddShortcut(Rule):
    """``_add_shortcut(x, shortcut, with_cls)``: ``shortcut`` added to ``x`` in place (all tokens, or all but
    the class token): an elementwise add of equally shaped tensors."""

    def propagate(self, ctx, node):
        x, shortcut = node.args[0], node.args[1]
        shapes = ctx.shape(x), ctx.shape(shortcut)
        if not all(is_size(s) for s in shapes) or shapes[0] != shapes[1]:
            return CONSERVATIVE.propagate(ctx, node)
        return broadcast(ctx, shapes[0], [(ctx.value(x) or (None,) * len(shapes[0]), shapes[0]),
                                          (ctx.value(shortcut) or (None,) * len(shapes[1]), shapes[1])])


class AddRelPos(Rule):
    """``_add_rel_pos(attn, q, q_thw, k_thw, rel_pos_h, rel_pos_w, rel_pos_t)``: adds to the attention logits
    the query's features contracted with each table's rows, so a query feature and the tables' columns
    of that feature are pruned together (like query and key); returns ``attn``."""

    def propagate(self, ctx, node):
        attn, q = node.args[0], node.args[1]
        tables = [arg(node, i, name) for i, name in ((4, "rel_pos_h"), (5, "rel_pos_w"), (6, "rel_pos_t"))]
        vq, values = ctx.value(q), [ctx.value(t) for t in tables]
        if vq is None or len(vq) != 4 or any(v is None or len(v) != 2 for v in values):
            return CONSERVATIVE.propagate(ctx, node)
        ctx.block_value(vq[:3])
        for value in values:
            ctx.block_value(value[0])
            contract(ctx, vq[3], value[1])
        return ctx.value(attn)


register_rule("torchvision.models.video.mvit._unsqueeze", Unsqueeze())
register_rule("torchvision.models.video.mvit._squeeze", Squeeze())
register_rule("torchvision.models.video.mvit._add_shortcut", AddShortcut())
register_rule("torchvision.models.video.mvit._add_rel_pos", AddRelPos())
