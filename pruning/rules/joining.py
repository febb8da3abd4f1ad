"""Rules for joining and splitting tensors: cat, stack, split, chunk, unbind, repeat, tile."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import fx

from ..channels.values import SizeOf
from ..nodes import arg, flatten_args, normalize_dim
from ..registry import CONSERVATIVE, Rule, register
from .common import broadcast


def _operands(ctx, tensors: Any) -> tuple[list, list] | None:
    """Values and shapes of the tensors given to cat/stack: a list of them, or one node holding a tuple
    (``torch.cat(torch.split(x, 1))``); None if that node's value is not a sequence of tensors."""
    if isinstance(tensors, fx.Node):
        values, shapes = ctx.value(tensors), ctx.shape(tensors)
        ok = isinstance(values, list) and isinstance(shapes, list) and all(isinstance(v, tuple) for v in values)
        return (values, shapes) if ok else None
    return [ctx.value(t) for t in tensors], [ctx.shape(t) for t in tensors]


@register(torch.cat, torch.concat, torch.concatenate)
class Cat(Rule):
    """Concatenation: ids are concatenated along ``dim``, other dims are pruned together."""

    def propagate(self, ctx, node):
        operands = _operands(ctx, arg(node, 0, "tensors"))
        if operands is None:
            return CONSERVATIVE.propagate(ctx, node)
        values, shapes = operands
        out_shape = ctx.shape(node)
        nd = len(out_shape)
        dim = normalize_dim(arg(node, 1, "dim", 0), nd)
        pieces = [v[dim] for v in values]
        others = broadcast(ctx, out_shape[:dim] + (1,) + out_shape[dim + 1:],
                           [(v[:dim] + (None,) + v[dim + 1:], s[:dim] + (1,) + s[dim + 1:])
                            for v, s in zip(values, shapes)])
        if all(p is not None for p in pieces):
            cat_ids = np.concatenate(pieces)
        else:
            for p in pieces:
                if p is not None:
                    ctx.space.block(p)
            cat_ids = None
        return others[:dim] + (cat_ids,) + others[dim + 1:]


@register(torch.stack)
class Stack(Rule):
    """Stacking adds a new dim with no channels; the inputs' dims are pruned together."""

    def propagate(self, ctx, node):
        operands = _operands(ctx, arg(node, 0, "tensors"))
        if operands is None:
            return CONSERVATIVE.propagate(ctx, node)
        out_shape = ctx.shape(node)
        dim = normalize_dim(arg(node, 1, "dim", 0), len(out_shape))
        merged = broadcast(ctx, out_shape[:dim] + out_shape[dim + 1:], list(zip(*operands)))
        return merged[:dim] + (None,) + merged[dim:]


@register("split", "chunk", "tensor_split", torch.split, torch.chunk, torch.tensor_split)
class Split(Rule):
    """Split/chunk/tensor_split: each piece gets its slice of the ids; after pruning the pieces get explicit
    sizes (a chunk becomes a split), so uneven pruning of the pieces stays valid. Sizes computed at run
    time (a mixture of experts splits tokens by its routing) stay as they are: a split along channels
    by such sizes keeps its channels, and a split along any other dim is not rewritten."""


    def propagate(self, ctx, node):
        x = node.args[0]
        value, shape = ctx.value(x), ctx.shape(x)
        pieces = ctx.shape(node)
        dim = normalize_dim(arg(node, 2, "dim", 0), len(shape))
        ids = value[dim]
        if ids is not None and _computed_sizes(node):
            ctx.space.block(ids)
            ids = None
        out, start = [], 0
        for piece in pieces:
            size = piece[dim]
            out.append(value[:dim] + ((None if ids is None else ids[start:start + size]),) + value[dim + 1:])
            start += size
        return out

    def rewrite(self, rw, node):
        pieces = rw.new_shape(node)
        dim = normalize_dim(arg(node, 2, "dim", 0), len(pieces[0]))
        if rw.ids(node.args[0])[dim] is None:  # not along channels: the sizes stay (literal or computed)
            return
        sizes = [p[dim] for p in pieces]
        if isinstance(node.target, str):
            node.target = "split"
        else:
            node.target = torch.split
        node.args = (node.args[0], sizes, dim)
        node.kwargs = {}


def _computed_sizes(node: fx.Node) -> bool:
    """Whether a split's sizes (or a chunk's count) are traced values rather than literals."""
    sizes = node.args[1] if len(node.args) > 1 else next(
        (node.kwargs[k] for k in ("split_size_or_sections", "split_size", "chunks", "indices_or_sections", "indices",
                                  "sections") if k in node.kwargs), None)
    return isinstance(sizes, fx.Node) or (isinstance(sizes, (tuple, list))
                                          and any(isinstance(a, fx.Node) for a in flatten_args(sizes)))


@register("unbind", torch.unbind)
class Unbind(Rule):
    """``x.unbind(dim)``: one tensor per index of ``dim``, each with the other dims' channels (channels
    in ``dim`` itself would each become a separate tensor: blocked)."""

    def propagate(self, ctx, node):
        x = node.args[0]
        value, shape = ctx.value(x), ctx.shape(x)
        dim = normalize_dim(arg(node, 1, "dim", 0), len(shape))
        if value[dim] is not None:
            ctx.space.block(value[dim])
        return [value[:dim] + value[dim + 1:]] * shape[dim]


def _count(ctx, count: Any, before: int, after: int) -> int | None:
    """A repeat count: a literal, or one computed from sizes (``B // q.shape[0]``), whose value the recorded
    shapes give (``after // before``; the channels of the sizes it read are blocked, as the rule does not
    read sizes). None for anything else (a tensor of counts)."""
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    value = ctx.value(count) if isinstance(count, fx.Node) else None
    if isinstance(value, SizeOf) and value.scalar and before and after % before == 0:
        return after // before
    return None


@register("repeat_interleave", torch.repeat_interleave)
class RepeatInterleave(Rule):
    """``x.repeat_interleave(r, dim)``: each element of ``dim`` repeated ``r`` times in place, so a
    channel's id repeats too (grouped-query attention repeats key/value heads this way); ``r`` may be
    computed from sizes (``_count``). Repeats given as a tensor, or no ``dim`` (a flattened result), block
    the channels."""

    def shaped_by_values(self, node):
        return isinstance(arg(node, 1, "repeats"), fx.Node)  # repeats given as a tensor

    def propagate(self, ctx, node):
        x = node.args[0]
        value, shape = ctx.value(x), ctx.shape(x)
        repeats, dim = arg(node, 1, "repeats"), arg(node, 2, "dim")
        if not isinstance(dim, int):
            return CONSERVATIVE.propagate(ctx, node)
        dim = normalize_dim(dim, len(shape))
        repeats = _count(ctx, repeats, shape[dim], ctx.shape(node)[dim])
        if repeats is None:
            return CONSERVATIVE.propagate(ctx, node)
        ids = value[dim]
        return value[:dim] + (None if ids is None else np.repeat(ids, repeats),) + value[dim + 1:]


@register("repeat", "tile", torch.tile)
class Tile(Rule):
    """``x.repeat(*sizes)`` / ``torch.tile``: the whole dim is copied ``r`` times, so its ids are tiled;
    sizes beyond ``x``'s dims add leading dims; a size may be computed from sizes (``_count``)."""

    def propagate(self, ctx, node):
        x = node.args[0]
        value, shape = ctx.value(x), ctx.shape(x)
        sizes = node.args[1:] if len(node.args) > 2 else arg(node, 1, "dims" if node.target is torch.tile else "repeats")
        sizes = [sizes] if isinstance(sizes, (int, fx.Node)) else sizes
        if not isinstance(sizes, (list, tuple)):
            return CONSERVATIVE.propagate(ctx, node)
        sizes = [1] * (len(shape) - len(sizes)) + list(sizes)  # tile pads short sizes with ones
        lead = len(sizes) - len(shape)
        out = ctx.shape(node)
        sizes = [_count(ctx, r, shape[i - lead] if i >= lead else 1, out[i]) for i, r in enumerate(sizes)]
        if None in sizes:
            return CONSERVATIVE.propagate(ctx, node)
        return (None,) * lead + tuple(None if ids is None else np.tile(ids, r) for ids, r in zip(value, sizes[lead:]))
