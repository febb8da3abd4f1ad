"""Rules for ops that move elements without computing on them: view/reshape, permute, expand, flip,
channel and pixel shuffles, sliding windows."""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..channels.values import SizeOf
from ..nodes import arg, flatten_args, is_size, normalize_dim, target_name
from ..registry import CONSERVATIVE, Rule, register
from .common import broadcast, contract, first_input, pixel_shuffle, reshape


@register("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", torch.reshape,
          torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten, "squeeze_", "unsqueeze_")
class Reshape(Rule):
    """Any reshape: channels are laid out on the new dims (see ``common.reshape``).

    Literal sizes in ``view``/``reshape``/``unflatten`` arguments are rewritten after pruning.
    """

    reads_sizes = True

    def propagate(self, ctx, node):
        x = node.args[0]
        out = reshape(ctx, ctx.value(x), ctx.shape(x), ctx.shape(node))
        shape = _computed_shape(node) if target_name(node) in ("view", "reshape") else None
        if shape is not None:
            # ``x.view(x.size()[:-1] + (heads, head_dim))``: the sizes sit inside the node that built the
            # shape, out of this rewrite's reach, so a channel dim may change size only where that size is -1.
            items = _shape_items(ctx, shape, len(out))
            for position, ids in enumerate(out):
                if ids is not None and (items is None or items[position] != -1):
                    ctx.space.block(ids)
            return out
        _check_sizes(ctx, node, out)
        return out

    def rewrite(self, rw, node):
        new, ids = rw.new_shape(node), rw.ids(node)
        name = target_name(node)
        if name in ("view", "reshape"):
            sizes = node.args[1:]
            if not sizes:
                node.kwargs = {**node.kwargs, "shape": _fixed_sizes(node.kwargs["shape"], new, ids)}
                return
            packed = len(sizes) == 1 and isinstance(sizes[0], (tuple, list))
            fixed = _fixed_sizes(sizes[0] if packed else sizes, new, ids)
            node.args = (node.args[0], fixed) if packed else (node.args[0], *fixed)
        elif name == "unflatten":
            sizes = arg(node, 2, "sizes")
            dim = normalize_dim(arg(node, 1, "dim"), len(new) - len(sizes) + 1)
            fixed = _fixed_sizes(sizes, new[dim:dim + len(sizes)], ids[dim:dim + len(sizes)])
            node.args = (node.args[0], dim, fixed)
            node.kwargs = {}


def _computed_shape(node: fx.Node) -> fx.Node | None:
    """The one traced value a view/reshape takes as its whole shape (a tuple built at run time), or None where
    it takes a list of sizes."""
    items = _size_items(node)
    if len(items) == 1 and isinstance(items[0], fx.Node) and not is_size(items[0].meta.get("pruning_shape")):
        return items[0]
    return None


def _shape_items(ctx, shape: fx.Node, ndim: int) -> list | None:
    """The items of a shape built as ``sizes + (literal, ...)`` (None for a size read from a tensor), or None
    for a shape built otherwise."""
    if shape.op != "call_function" or shape.target is not operator.add or len(shape.args) != 2:
        return None
    items: list = []
    for part in shape.args:
        value = ctx.value(part) if isinstance(part, fx.Node) else None
        if isinstance(value, SizeOf) and not value.scalar:
            items += [None] * len(value.ids)
        elif isinstance(part, (tuple, list)) and all(isinstance(v, int) for v in part):
            items += list(part)
        else:
            return None
    return items if len(items) == ndim else None


def _size_items(node: fx.Node) -> list:
    """The size arguments of a view/reshape/expand call, one per output dim."""
    sizes = node.args[1:] or [node.kwargs.get("shape", node.kwargs.get("size", ()))]
    return list(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else list(sizes)


def _check_sizes(ctx, node: fx.Node, out: tuple) -> None:
    """Sizes read from tensors may only set output dims that hold channels (those are rewritten
    after pruning); elsewhere the channels they were read from must not be pruned."""
    name = target_name(node)
    items = _size_items(node) if name in ("view", "reshape", "expand", "broadcast_to") else \
        flatten_args(node.args[1:]) + flatten_args(node.kwargs.values())
    for position, item in enumerate(items):
        value = ctx.value(item) if isinstance(item, fx.Node) else None
        if isinstance(value, SizeOf) and not (name in ("view", "reshape", "expand", "broadcast_to")
                                              and position < len(out) and out[position] is not None):
            ctx.block_value(value)


def _fixed_sizes(items, new_shape, ids) -> list:
    """A size list for the pruned model.

    Literal sizes become the pruned sizes. A size computed at run time (``x.size(1)``) is replaced
    too where the dim holds channels: it may come from a tensor that was pruned differently. -1
    stays -1.
    """
    return [new_shape[i] if (isinstance(v, int) and v != -1) or (ids[i] is not None and v != -1)
            else v for i, v in enumerate(items)]


@register("permute", "transpose", "swapaxes", "swapdims", "t", "movedim", torch.permute,
          torch.transpose, torch.swapaxes, torch.t, torch.movedim)
class Permute(Rule):
    """Dims are reordered; channels move with them."""

    def propagate(self, ctx, node):
        x = node.args[0]
        value, nd = ctx.value(x), len(ctx.shape(x))
        name = target_name(node)
        order = list(range(nd))
        if name == "permute":
            dims = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (tuple, list)) \
                else node.args[1]
            if not dims:
                dims = node.kwargs["dims"]
            order = [normalize_dim(d, nd) for d in dims]
        elif name in ("transpose", "swapaxes", "swapdims", "t"):
            a, b = (0, 1) if name == "t" else (normalize_dim(node.args[1], nd), normalize_dim(node.args[2], nd))
            if nd >= 2:
                order[a], order[b] = order[b], order[a]
        else:  # movedim
            src, dst = node.args[1], node.args[2]
            src = [src] if isinstance(src, int) else list(src)
            dst = [dst] if isinstance(dst, int) else list(dst)
            order = np.moveaxis(np.arange(nd), [normalize_dim(s, nd) for s in src],
                                [normalize_dim(d, nd) for d in dst]).tolist()
        return tuple(value[d] for d in order)


@register("expand", "expand_as", "broadcast_to", torch.broadcast_to)
class Expand(Rule):
    """Size-1 dims grow: the grown dims carry no channels of the input (nor of ``other``'s)."""

    reads_sizes = True

    def propagate(self, ctx, node):
        x = node.args[0]
        value, shape, out_shape = ctx.value(x), ctx.shape(x), ctx.shape(node)
        inputs = [(value, shape)]
        if node.target == "expand_as":
            inputs.append((ctx.value(node.args[1]), ctx.shape(node.args[1])))
        out = broadcast(ctx, out_shape, inputs)
        _check_sizes(ctx, node, out)
        return out

    def rewrite(self, rw, node):
        if node.target in ("expand", "broadcast_to") or node.target is torch.broadcast_to:
            new = rw.new_shape(node)
            sizes = node.args[1:]
            packed = len(sizes) == 1 and isinstance(sizes[0], (tuple, list))
            fixed = _fixed_sizes(sizes[0] if packed else sizes, new, rw.ids(node))
            node.args = (node.args[0], fixed) if packed else (node.args[0], *fixed)


@register("reshape_as", "view_as")
class ReshapeAs(Rule):
    """``x.reshape_as(other)``: a reshape to ``other``'s shape, so each output dim's channels are also
    ``other``'s channels in that dim (both prune together, or neither)."""

    def propagate(self, ctx, node):
        x, other = node.args[0], node.args[1]
        out = reshape(ctx, ctx.value(x), ctx.shape(x), ctx.shape(node))
        result = []
        for a, b in zip(out, ctx.value(other) or (None,) * len(out)):
            contract(ctx, a, b)
            result.append(a if a is not None and b is not None else None)
        return tuple(result)


@register(nn.Flatten, nn.Unflatten)
class ReshapeModule(Rule):
    """Flatten/Unflatten modules; Unflatten's literal sizes are rewritten after pruning."""


    def propagate(self, ctx, node):
        value, shape = first_input(ctx, node)
        return reshape(ctx, value, shape, ctx.shape(node))

    def rewrite(self, rw, node):
        m = rw.module(node)
        if isinstance(m, nn.Unflatten):
            new, count = rw.new_shape(node), len(m.unflattened_size)
            dim = m.dim % (len(new) - count + 1)  # m.dim counts the input's dims
            m.unflattened_size = tuple(new[dim:dim + count])


@register("unfold")
class Unfold(Rule):
    """``x.unfold(dim, size, step)``: sliding windows along ``dim`` (channels there are blocked) in a
    new last dim; the other dims keep their channels."""

    def propagate(self, ctx, node):
        x = node.args[0]
        value, shape = ctx.value(x), ctx.shape(x)
        dim = arg(node, 1, "dimension")
        if not isinstance(dim, int):
            return CONSERVATIVE.propagate(ctx, node)
        dim = normalize_dim(dim, len(shape))
        if value[dim] is not None:
            ctx.space.block(value[dim])
        return value[:dim] + (None,) + value[dim + 1:] + (None,)


@register(torch.flip, "flip", torch.fliplr, "fliplr", torch.flipud, "flipud")
class Flip(Rule):
    """Reversing a dim reverses its channel ids: channels stay prunable, the order follows."""

    def propagate(self, ctx, node):
        value, nd = ctx.value(node.args[0]), len(ctx.shape(node.args[0]))
        name = target_name(node)
        if name in ("fliplr", "flipud"):
            dims = [1 if name == "fliplr" else 0]
        else:
            dims = arg(node, 1, "dims")
            dims = list(node.args[1:]) if len(node.args) > 2 else ([dims] if isinstance(dims, int) else dims)
        if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
            return CONSERVATIVE.propagate(ctx, node)
        flipped = {normalize_dim(d, nd) for d in dims}
        return tuple(ids[::-1].copy() if d in flipped and ids is not None else ids for d, ids in enumerate(value))


@register(nn.ChannelShuffle)
class ChannelShuffleModule(Rule):
    """Channel shuffle: (g, C/g) transposed; channel j of every group is pruned together."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, _ = first_input(ctx, node)
        ids = value[1]
        if ids is None:
            return value
        grid = ids.reshape(m.groups, -1)
        ctx.space.merge(grid, grid[:1])
        return value[:1] + (np.ascontiguousarray(grid.T).ravel(),) + value[2:]


@register(F.pixel_shuffle, F.pixel_unshuffle, "pixel_shuffle", "pixel_unshuffle")
class PixelShuffleFn(Rule):
    """``F.pixel_shuffle`` / ``F.pixel_unshuffle``; see ``common.pixel_shuffle``."""

    def propagate(self, ctx, node):
        name = target_name(node)
        factor = arg(node, 1, "upscale_factor" if name == "pixel_shuffle" else "downscale_factor")
        if not isinstance(factor, int):
            return CONSERVATIVE.propagate(ctx, node)
        return pixel_shuffle(ctx, ctx.value(node.args[0]), factor, inverse=name == "pixel_unshuffle")


@register(nn.PixelShuffle, nn.PixelUnshuffle)
class PixelShuffleModule(Rule):
    """PixelShuffle / PixelUnshuffle modules; see ``common.pixel_shuffle``."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        inverse = isinstance(m, nn.PixelUnshuffle)
        return pixel_shuffle(ctx, first_input(ctx, node)[0], m.downscale_factor if inverse else m.upscale_factor, inverse)
