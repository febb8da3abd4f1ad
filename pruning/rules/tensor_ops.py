"""Rules for functions and tensor methods (``call_function`` / ``call_method`` nodes)."""
from __future__ import annotations

import builtins
import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from ..registry import CONSERVATIVE, Fixed, Rule, register
from ..nodes import arg, flatten_args, is_size, normalize_dim, target_name
from ..channels.values import SizeOf
from ..tracing.sizes import negated, size_count
from ..tracing.structure import is_none, keys_of
from .common import (broadcast, group_norm_channels, im2col, merge_in_groups, pixel_shuffle, reshape, spatial,
                     statistics_over, window_size)

# --------------------------------------------------------------------------------------------
# Elementwise


_ELEMENTWISE_FUNCTIONS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.mod,
    torch.add, torch.sub, torch.mul, torch.div, torch.where, torch.maximum, torch.minimum,
    torch.masked_fill, torch.pow, torch.true_divide, torch.subtract, torch.multiply,
    torch.addcmul, torch.addcdiv, torch.lerp,
    # on sizes only (fx records the math module's functions: ``math.sqrt(head_dim)``)
    math.sqrt, math.ceil, math.floor, math.log, math.log2, math.exp, math.pow, math.trunc,
]
_ELEMENTWISE_METHODS = [
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "masked_fill", "masked_fill_",
    "pow", "maximum", "minimum", "where", "__add__", "__mul__", "__sub__", "__truediv__",
    "addcmul", "addcmul_", "addcdiv", "addcdiv_", "lerp", "lerp_",
]


@register(*_ELEMENTWISE_FUNCTIONS, *_ELEMENTWISE_METHODS)
class Elementwise(Rule):
    """Broadcasting elementwise op: aligned channel dims of all tensor inputs are pruned together.

    On plain numbers (sizes), the result remembers which channels the sizes were read from.
    """

    reads_sizes = True

    def shaped_by_values(self, node):
        return target_name(node) == "where" and len(node.args) + len(node.kwargs) == 1  # torch.where(mask)

    def propagate(self, ctx, node):
        out_shape = ctx.shape(node)
        if not is_size(out_shape):
            sources = [v for v in ctx.input_values(node) if isinstance(v, SizeOf)]
            for v in ctx.input_values(node):
                if not isinstance(v, SizeOf):
                    ctx.block_value(v)
            ids = tuple(i for v in sources for i in v.ids if i is not None)
            return SizeOf(ids, True) if sources else None
        for v in ctx.input_values(node):
            if isinstance(v, SizeOf):
                ctx.block_value(v)
        return broadcast(ctx, out_shape, ctx.tensor_inputs(node))

    def call_shape(self, target, args, kwargs):
        # Floating tensors of one dtype and plain numbers keep the dtype under arithmetic; the output
        # is the broadcast of the tensors' shapes. In-place variants must not broadcast their target.
        name = target if isinstance(target, str) else getattr(target, "__name__", "")
        if kwargs or name in ("where", "masked_fill", "masked_fill_"):
            return None
        tensors = [a for a in args if isinstance(getattr(a, "dtype", None), torch.dtype)]
        if not tensors or not tensors[0].dtype.is_floating_point or \
                any(type(a) not in (int, float) for a in args if not isinstance(getattr(a, "dtype", None), torch.dtype)):
            return None
        try:
            shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        except RuntimeError:
            return None
        in_place = name.endswith("_") and not name.endswith("__") or name.startswith("__i") or \
            target in (operator.iadd, operator.isub, operator.imul, operator.itruediv)
        if in_place and tuple(shape) != tuple(args[0].shape):
            return None
        return tuple(shape)


_COMPARISONS = [
    operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_,
    operator.xor, torch.eq, torch.ne, torch.lt, torch.le, torch.gt, torch.ge, torch.logical_and, torch.logical_or,
    torch.logical_xor, "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor",
]


@register(*_COMPARISONS)
class Comparison(Elementwise):
    """Comparisons and logical ops: on tensors, elementwise (channels pass as for arithmetic; the bool
    output's dtype differs from the inputs', so no shape is computed ahead); on sizes, a condition that
    remembers the channels whose counts it read."""

    def call_shape(self, target, args, kwargs):
        return None


@register(torch._assert, is_none, keys_of)
class SizeGuard(Fixed):
    """``torch._assert(condition, message)``, as the tracer puts after each branch on sizes
    (:mod:`pruning.tracing.sizes`), and ``is_none``/``keys_of`` (:mod:`pruning.tracing.structure`): channels whose counts
    the condition read are kept, so that pruning never changes what the condition computes."""


_UNARY_FUNCTIONS = [
    operator.neg, operator.not_, negated, abs, torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp, torch.log,
    torch.abs, torch.neg, torch.sqrt, torch.rsqrt, torch.clamp, torch.clip, torch.erf, torch.sin,
    torch.cos, torch.square, torch.reciprocal, torch.sign, torch.zeros_like, torch.ones_like,
    torch.empty_like, torch.full_like, torch.rand_like, torch.randn_like, torch.detach,
    torch.nan_to_num,
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.elu, F.selu,
    F.celu, F.leaky_relu, F.mish, F.softplus, F.hardtanh, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, F.alpha_dropout, F.relu_, F.logsigmoid, F.softsign,
    F.tanhshrink, F.threshold, F.hardshrink, F.softshrink, F.rrelu,
]
_UNARY_METHODS = [
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "exp_", "log", "abs", "neg",
    "sqrt", "rsqrt", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "erf", "sin", "cos",
    "square", "reciprocal", "sign", "type_as", "float", "half", "double", "bfloat16", "to", "type",
    "contiguous", "clone", "detach", "cpu", "cuda", "requires_grad_", "zero_", "fill_", "softplus",
    "nan_to_num", "hardswish", "gelu", "silu",
]


@register(*_UNARY_FUNCTIONS, *_UNARY_METHODS)
class Unary(Rule):
    """The output has the first input's shape and channels; other arguments set dtype, bounds..."""

    def propagate(self, ctx, node):
        return ctx.value(node.args[0]) if node.args else None


@register("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "dim", "element_size",
          "is_floating_point", "is_complex", torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
          torch.randn, torch.rand, torch.tensor, torch.as_tensor, torch.randint, torch.finfo, torch.iinfo)
class Independent(Rule):
    """The output's shape does not follow the channels of any tensor input (new tensors, and a dtype's
    limits: ``torch.finfo(x.dtype).min``)."""

    def propagate(self, ctx, node):
        return None


@register("size", "numel", "nelement", builtins.getattr)
class ReadSize(Rule):
    """``x.shape``, ``x.size(d)``, ``x.numel()``: sizes that remember the channels they count; ``.values`` and
    ``.indices`` of a (values, indices) result (``x.max(dim).values``) carry its channels; ``x.T``/``x.mT``
    (and their conjugates ``.H``/``.mH``) carry them on the transposed dims. Other attributes but dtype,
    device and rank block the tensor's channels."""

    def propagate(self, ctx, node):
        value = ctx.value(node.args[0])
        if node.target is builtins.getattr and isinstance(value, list):  # a result tuple: max(dim).values
            fields = ("values", "indices")
            if len(value) == 2 and node.args[1] in fields:
                return value[fields.index(node.args[1])]
            ctx.block_value(value)
            return None
        if not isinstance(value, tuple):
            return None
        if node.target is builtins.getattr:
            attribute = node.args[1]
            if attribute == "shape":
                return SizeOf(value, False)
            if attribute in ("T", "H"):  # all dims reversed (a matrix transposed: ``x @ self.weight.T``)
                return value[::-1]
            if attribute in ("mT", "mH"):  # the last two dims swapped
                return value[:-2] + (value[-1], value[-2])
            if attribute not in ("dtype", "device", "ndim", "is_cuda", "requires_grad"):
                ctx.block_value(value)
            return None
        if node.target == "size":
            dim = arg(node, 1, "dim")
            return SizeOf(value, False) if dim is None else SizeOf((value[dim],), True)
        return SizeOf(value, True)  # numel


@register(operator.setitem)
class Assign(Fixed):
    """``x[index] = value`` on a traced tensor (:mod:`pruning.tracing.recorded`): the channels of ``x``, of
    the value and of index tensors stay, since where the write lands on ``x``'s channels is not followed."""


@register(builtins.len, size_count)
class Length(Rule):
    """``len(x)``: a tensor's first size (which remembers its channels); of a shape, its number of dims,
    which no pruning changes."""

    reads_sizes = True

    def propagate(self, ctx, node):
        value = ctx.value(node.args[0])
        if isinstance(value, tuple):
            return SizeOf(value[:1], True)
        return None


# --------------------------------------------------------------------------------------------
# Shapes: reshape, permute, expand, cat, split, getitem


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


@register("reshape_as", "view_as")
class ReshapeAs(Rule):
    """``x.reshape_as(other)``: a reshape to ``other``'s shape, so each output dim's channels are also
    ``other``'s channels in that dim (both prune together, or neither)."""

    def propagate(self, ctx, node):
        x, other = node.args[0], node.args[1]
        out = reshape(ctx, ctx.value(x), ctx.shape(x), ctx.shape(node))
        result = []
        for a, b in zip(out, ctx.value(other) or (None,) * len(out)):
            _contract(ctx, a, b)
            result.append(a if a is not None and b is not None else None)
        return tuple(result)


@register(operator.getitem)
class GetItem(Rule):
    """Indexing: a container item, or basic tensor indexing (ints, slices, None, Ellipsis).

    A slice of a channel dim takes that part of the ids and its literal bounds are rewritten after
    pruning; an integer index into a channel dim, strided slices and advanced (tensor) indexing
    block the channels involved.
    """

    reads_sizes = True

    def shaped_by_values(self, node):
        return any(isinstance(i, fx.Node) for i in flatten_args((node.args[1],)))  # x[mask]

    def propagate(self, ctx, node):
        src, index = node.args
        value, shape = ctx.value(src), ctx.shape(src)
        if isinstance(value, SizeOf) and not value.scalar and isinstance(index, (int, slice)):
            return SizeOf((value.ids[index],), True) if isinstance(index, int) else SizeOf(value.ids[index], False)
        if isinstance(value, SizeOf):
            ctx.block_value(value)
            return None
        if not is_size(shape):  # container or non-tensor
            if isinstance(value, list) and isinstance(index, (int, slice)):
                return value[index]
            return None
        items = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, fx.Node) and not is_size(i.meta.get("pruning_shape")) and "pruning_int" not in i.meta
               for i in items):  # computed slices or index tuples (Funnel's pooling): what they take is unknown
            ctx.block_value(value)
            return ctx.untracked(ctx.shape(node))
        out: list[Any] = []
        for kind, d, item in _index_items(index, len(shape), ctx):
            ids = value[d] if d is not None else None
            if kind == "new":
                out.append(None)
            elif kind == "keep":
                out.append(ids)
            elif kind == "slice":
                if ids is None:
                    out.append(None)
                elif _simple_slice(item):
                    out.append(ids[item])
                else:
                    ctx.space.block(ids)
                    out.append(None)
            elif kind == "int":
                if ids is not None:
                    ctx.space.block(ids)
            else:  # advanced indexing: give up on the whole tensor, and on the index tensors' dims
                ctx.block_value(value)
                for a in (index if isinstance(index, (tuple, list)) else (index,)):
                    if isinstance(a, fx.Node):
                        ctx.block_value(ctx.value(a))
                return None
        return tuple(out)

    def rewrite(self, rw, node):
        src, index = node.args
        if not is_size(rw.old_shape(src)):
            return
        value = rw.ids(src)
        items = list(index) if isinstance(index, tuple) else [index]
        changed = False
        for pos, (kind, d, item) in zip(_item_positions(index, len(rw.old_shape(src))),
                                        _index_items(index, len(rw.old_shape(src)), None)):
            if kind == "slice" and value[d] is not None and _simple_slice(item):
                kept = rw.kept(value[d])
                start, stop, _ = item.indices(len(kept))
                items[pos] = slice(int(kept[:start].sum()), int(kept[:stop].sum()), item.step)
                changed = True
        if changed:
            node.args = (src, tuple(items) if isinstance(index, tuple) else items[0])


def _simple_slice(item: slice) -> bool:
    return all(isinstance(v, (int, type(None))) for v in (item.start, item.stop, item.step)) \
        and item.step in (None, 1)


def _index_items(index, ndim: int, ctx):
    """Yield (kind, input dim, item) for a basic index; kinds: new, keep, slice, int, advanced."""
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    d = 0
    for item in items:
        if item is None:
            yield "new", None, item
        elif item is Ellipsis:
            for _ in range(ndim - consumed):
                yield "keep", d, item
                d += 1
        elif isinstance(item, slice):
            full = item.start is None and item.stop is None and item.step in (None, 1)
            yield ("keep" if full else "slice"), d, item
            d += 1
        elif isinstance(item, int) or (isinstance(item, fx.Node) and "pruning_int" in item.meta):
            yield "int", d, item
            d += 1
        else:
            yield "advanced", d, item
            d += 1
    while d < ndim:
        yield "keep", d, None
        d += 1


def _item_positions(index, ndim: int):
    """Position in the index tuple of each item yielded by ``_index_items``."""
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    for pos, item in enumerate(items):
        repeat = ndim - consumed if item is Ellipsis else 1
        for _ in range(repeat):
            yield pos
    yield from (len(items) for _ in range(ndim))


# --------------------------------------------------------------------------------------------
# Reductions and normalisations over a dim


_REDUCTIONS = ["mean", "sum", "amax", "amin", "max", "min", "std", "var", "prod", "logsumexp",
               "argmax", "argmin", "all", "any", "median", torch.mean, torch.sum, torch.amax,
               torch.amin, torch.max, torch.min, torch.std, torch.var, torch.prod, torch.logsumexp,
               torch.argmax, torch.argmin, torch.median]


_SUMS = ("sum",)  # a dead channel adds nothing: removing it is exact
_STATISTICS = ("mean", "std", "var", "norm", "linalg_vector_norm", "logsumexp", "amax", "amin")  # valid, not exact


@register(*_REDUCTIONS, "norm", torch.norm, torch.linalg.vector_norm)
class Reduce(Rule):
    """Reducing over a channel dim: a sum keeps its channels prunable (a dead channel adds nothing); a
    statistic (mean, variance, norm, max value...; hand-written LayerNorm/RMSNorm) keeps them prunable but
    marks them normalized, as a LayerNorm's (removing one is valid, not exact); ops whose result depends on
    positions or on every element (argmax, max/min with their indices, median, prod, all/any) block them.
    Norms take their dims after the order ``p``."""

    def propagate(self, ctx, node):
        x = node.args[0]
        value, nd = ctx.value(x), len(ctx.shape(x))
        name = target_name(node)
        at = 2 if name in ("norm", "linalg_vector_norm") else 1
        dims = arg(node, at, "dim", None)
        out_shape = ctx.shape(node)
        if dims is None or isinstance(dims, fx.Node):
            ctx.block_value(value)
            return ctx.untracked(out_shape)
        dims = {normalize_dim(d, nd) for d in ([dims] if isinstance(dims, int) else dims)}
        keepdim = arg(node, at + 1, "keepdim", False)
        out = []
        for d in range(nd):
            if d in dims:
                if value[d] is not None and name not in _SUMS:
                    (ctx.space.normalized if name in _STATISTICS else ctx.space.block)(value[d])
                if keepdim:
                    out.append(None)
            else:
                out.append(value[d])
        result = tuple(out)
        return [result] * len(out_shape) if isinstance(out_shape, list) else result


@register("softmax", "log_softmax", "cumsum", "cumprod", torch.softmax, torch.log_softmax,
          torch.cumsum, F.softmax, F.log_softmax, F.normalize, F.softmin)
class AlongDim(Rule):
    """Shape-preserving op that mixes values along one dim: that dim's channels are blocked."""

    def propagate(self, ctx, node):
        x = node.args[0]
        value = ctx.value(x)
        nd = len(ctx.shape(x))
        default = 1 if node.target is F.normalize else None
        dim = arg(node, 2 if node.target is F.normalize else 1, "dim", default)
        if dim is None or not isinstance(dim, int):
            ctx.block_value(value)
            return None
        dim = normalize_dim(dim, nd)
        if value[dim] is not None:
            ctx.space.block(value[dim])
        return value[:dim] + (None,) + value[dim + 1:]


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


@register(F.pixel_shuffle, F.pixel_unshuffle, "pixel_shuffle", "pixel_unshuffle")
class PixelShuffleFn(Rule):
    """``F.pixel_shuffle`` / ``F.pixel_unshuffle``; see ``common.pixel_shuffle``."""

    def propagate(self, ctx, node):
        name = target_name(node)
        factor = arg(node, 1, "upscale_factor" if name == "pixel_shuffle" else "downscale_factor")
        if not isinstance(factor, int):
            return CONSERVATIVE.propagate(ctx, node)
        return pixel_shuffle(ctx, ctx.value(node.args[0]), factor, inverse=name == "pixel_unshuffle")


@register(F.unfold, F.fold)
class Im2ColFn(Rule):
    """``F.unfold`` (im2col) / ``F.fold`` (col2im); see ``common.im2col``."""

    def propagate(self, ctx, node):
        inverse = node.target is F.fold
        window = window_size(arg(node, 2, "kernel_size") if inverse else arg(node, 1, "kernel_size"))
        if window is None:
            return CONSERVATIVE.propagate(ctx, node)
        return im2col(ctx, ctx.value(node.args[0]), window, inverse)


# --------------------------------------------------------------------------------------------
# Spatial ops


_SPATIAL = {
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
    F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3, F.max_pool1d: 1, F.max_pool2d: 2,
    F.max_pool3d: 3, torch.max_pool2d: 2, torch.avg_pool1d: 1, torch.adaptive_avg_pool1d: 1,
}


@register(*_SPATIAL, F.interpolate, F.pad, torch.roll, "roll")
class Spatial(Rule):
    """Pooling, resizing, padding and rolling act on trailing dims, which must not hold channels."""

    def propagate(self, ctx, node):
        x = node.args[0]
        shape = ctx.shape(x)
        if node.target is F.interpolate:
            trailing = len(shape) - 2
        elif node.target is F.pad:
            trailing = len(arg(node, 1, "pad")) // 2
        elif node.target in (torch.roll, "roll"):
            dims = arg(node, 2, "dims", None)
            value = ctx.value(x)
            rolled = range(len(shape)) if dims is None else (
                [dims] if isinstance(dims, int) else dims)
            for d in rolled:
                if value[normalize_dim(d, len(shape))] is not None:
                    ctx.space.block(value[normalize_dim(d, len(shape))])
            return tuple(None if (dims is None or normalize_dim(d, len(shape)) in
                                  {normalize_dim(r, len(shape)) for r in rolled}) else v
                         for d, v in enumerate(value))
        else:
            trailing = _SPATIAL[node.target]
        return spatial(ctx, ctx.value(x), shape, ctx.shape(node), trailing)


@register(F.grid_sample)
class GridSample(Rule):
    """``F.grid_sample(x, grid)``: ``x``'s trailing dims are sampled at the grid's points (RAFT's correlation
    lookup and warping), so its channels pass through; the grid's channels stay (its last dim holds
    coordinates)."""

    def propagate(self, ctx, node):
        x = node.args[0]
        ctx.block_value(ctx.value(arg(node, 1, "grid")))
        shape = ctx.shape(x)
        return spatial(ctx, ctx.value(x), shape, ctx.shape(node), len(shape) - 2)


# --------------------------------------------------------------------------------------------
# Products and parameterised functions (weights given as get_attr nodes)


@register(torch.matmul, operator.matmul, torch.bmm, torch.mm, "matmul", "bmm", "mm")
class MatMul(Rule):
    """``a @ b``: the contracted dims are pruned together; batch dims broadcast."""

    def propagate(self, ctx, node):
        a, b = node.args[0], node.args[1]
        va, sa, vb, sb = ctx.value(a), ctx.shape(a), ctx.value(b), ctx.shape(b)
        if len(sa) < 2 or len(sb) < 2:
            ctx.block_value(va)
            ctx.block_value(vb)
            return None
        _contract(ctx, va[-1], vb[-2])
        out_shape = ctx.shape(node)
        batch = broadcast(ctx, out_shape[:-2], [(va[:-2], sa[:-2]), (vb[:-2], sb[:-2])])
        return batch + (va[-2], vb[-1])


@register(torch.einsum)
class Einsum(Rule):
    """``torch.einsum(equation, *operands)``, read from its subscripts: every dim that shares a
    letter (across operands and the output) is pruned together, as by a broadcasting elementwise op
    or, for a letter summed over by two or more operands, as by matmul's contracted dim.

    Blocked: a letter repeated within one operand (a diagonal), a letter summed over inside a
    single operand (a reduction would change), any dim an untracked full-size dim shares a letter
    with, and every operand of the sublist form ``einsum(a, [0, 1], b, [1, 2])``.
    """

    def propagate(self, ctx, node):
        operands = _einsum_operands(node)
        letters = None if operands is None else \
            _einsum_letters(node.args[0], [len(ctx.shape(op)) for op in operands])
        if letters is None:
            return CONSERVATIVE.propagate(ctx, node)
        inputs, output = letters
        dims: dict[str, list[tuple[int, Any, int]]] = {}
        for k, (subs, op) in enumerate(zip(inputs, operands)):
            value, shape = ctx.value(op) or (None,) * len(ctx.shape(op)), ctx.shape(op)
            for d, letter in enumerate(subs):
                dims.setdefault(letter, []).append((k, value[d], shape[d]))
        out_shape = ctx.shape(node)
        out = []
        for letter, found in dims.items():
            diagonal = len({k for k, _, _ in found}) < len(found)
            if letter in output:
                size = out_shape[output.index(letter)]
            elif len(found) > 1 and not diagonal:
                size = max(s for _, _, s in found)
            else:
                size = None  # a diagonal or a one-operand sum: nothing may be pruned
            carriers = [ids for _, ids, s in found if s == size and ids is not None]
            untracked = size is None or any(ids is None and s == size for _, ids, s in found)
            for _, ids, s in found:
                if ids is not None and (s != size or untracked or diagonal):
                    ctx.space.block(ids)
            if untracked or diagonal or not carriers:
                continue
            for ids in carriers[1:]:
                ctx.space.merge(carriers[0], ids)
            if letter in output:
                out.append((output.index(letter), carriers[0]))
        result = [None] * len(output)
        for position, ids in out:
            result[position] = ids
        return tuple(result)


def _einsum_operands(node: fx.Node) -> list | None:
    """The tensor operands of an einsum call (given one by one or as one list); None for the sublist
    form."""
    if not isinstance(node.args[0], str):
        return None
    rest = node.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = rest[0]
    return list(rest) if all(isinstance(a, fx.Node) for a in rest) else None


def _einsum_letters(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """Per-operand and output subscripts of operands of ``ranks`` dims, with '...' spelled out as one
    letter per broadcast dim (aligned from the right across operands, as einsum broadcasts them);
    None if they do not match the ranks."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    inputs = lhs.split(",")
    if len(inputs) != len(ranks) or any(len(subs.replace("...", "")) > rank if "..." in subs else
                                        len(subs) != rank for subs, rank in zip(inputs, ranks)):
        return None
    widths = [rank - len(subs.replace("...", "")) for subs, rank in zip(inputs, ranks)]
    ellipsis = max([w for subs, w in zip(inputs, widths) if "..." in subs], default=0)
    spelled = []
    for subs, width in zip(inputs, widths):
        before, dots, after = subs.partition("...")
        spelled.append(before + "".join(chr(0x100 + ellipsis - width + i) for i in range(width if dots else 0)) + after)
    if not arrow:
        counts = {c: lhs.count(c) for c in lhs if c.isalpha()}
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c, n in counts.items() if n == 1))
    before, dots, after = rhs.partition("...")
    output = before + "".join(chr(0x100 + i) for i in range(ellipsis if dots else 0)) + after
    return spelled, output


def _contract(ctx, x: np.ndarray | None, y: np.ndarray | None) -> None:
    """Two dims summed over together: prune them together, or not at all if one is fixed."""
    if x is not None and y is not None:
        ctx.space.merge(x, y)
    elif x is not None or y is not None:
        ctx.space.block(x if x is not None else y)


@register(F.linear)
class Linear(Rule):
    """``F.linear(x, weight, bias)``."""

    def propagate(self, ctx, node):
        x, w, b = node.args[0], arg(node, 1, "weight"), arg(node, 2, "bias")
        vx, vw = ctx.value(x), ctx.value(w)
        if vw is None or len(vw) != 2:
            ctx.block_value(vx)
            ctx.block_value(vw)
            return None
        _contract(ctx, vx[-1], vw[1])
        vb = ctx.value(b)
        if vb is not None:
            _contract(ctx, vw[0], vb[0])
        return vx[:-1] + (vw[0],)


@register(F.conv1d, F.conv2d, F.conv3d)
class Conv(Rule):
    """``F.convNd(x, weight, bias, stride, padding, dilation, groups)``; see ``conv_channels``."""


    def propagate(self, ctx, node):
        x, w, b = node.args[0], arg(node, 1, "weight"), arg(node, 2, "bias")
        vx, vw = ctx.value(x), ctx.value(w)
        groups = arg(node, 6, "groups", 1)
        if vw is None or not isinstance(groups, int):
            ctx.block_value(vx)
            ctx.block_value(vw)
            return None
        for ids in vw[2:]:
            if ids is not None:
                ctx.space.block(ids)
        out_ids = vw[0]
        if out_ids is None:
            ctx.block_value(vx)
            return None
        sw = ctx.shape(w)
        if groups > 1 and vw[1] is not None:
            ctx.space.block(vw[1])
        conv_channels(ctx, vx[1], out_ids, vw[1] if groups == 1 else None, groups)
        vb = ctx.value(b)
        if vb is not None:
            _contract(ctx, out_ids, vb[0])
        ctx.block_value(vx[2:])  # spatial dims are mixed by the kernel
        return vx[:1] + (out_ids,) + (None,) * (len(sw) - 2)

    def rewrite(self, rw, node):
        groups = arg(node, 6, "groups", 1)
        if isinstance(groups, int) and groups > 1:
            old_out = rw.old_shape(node)[1]
            new_groups = rw.new_shape(node)[1] // (old_out // groups)
            args = list(node.args) + [None] * (7 - len(node.args))
            if len(node.args) > 6:
                args[6] = new_groups
                node.args = tuple(args[:len(node.args)])
            else:
                node.kwargs = {**node.kwargs, "groups": new_groups}


def conv_channels(ctx, in_ids: np.ndarray | None, out_ids: np.ndarray,
                  weight_in_ids: np.ndarray | None, groups: int) -> None:
    """Couple a convolution's input and output channels.

    ``groups == 1``: input channels are pruned with the weight's input dim. Grouped (and depthwise)
    convolutions are pruned by whole groups, which keeps ``groups`` valid: the input channels and the
    output channels of one group form one label, and ``groups`` shrinks.
    """
    if groups == 1:
        _contract(ctx, in_ids, weight_in_ids)  # either side untracked: neither may be pruned
        return
    rep = out_ids[:: len(out_ids) // groups]
    merge_in_groups(ctx, out_ids, groups, rep)
    if in_ids is None:
        ctx.space.block(out_ids)
    else:
        merge_in_groups(ctx, in_ids, groups, rep)


@register(F.layer_norm, F.rms_norm)
class LayerNormFn(Rule):
    """``F.layer_norm``: affine params follow the normalised trailing dims; ``normalized_shape`` is
    rewritten after pruning."""


    def propagate(self, ctx, node):
        x = node.args[0]
        vx = ctx.value(x)
        k = len(arg(node, 1, "normalized_shape"))
        for ids in vx[-k:]:
            if ids is not None:
                ctx.space.normalized(ids)
        for p in (arg(node, 2, "weight"), arg(node, 3, "bias")):
            vp = ctx.value(p)
            if vp is not None:
                for a, b in zip(vx[-k:], vp):
                    _contract(ctx, a, b)
        return vx

    def rewrite(self, rw, node):
        k = len(arg(node, 1, "normalized_shape"))
        new = list(rw.new_shape(node.args[0])[-k:])
        if len(node.args) > 1:
            node.args = (node.args[0], new, *node.args[2:])
        else:
            node.kwargs = {**node.kwargs, "normalized_shape": new}


@register(F.batch_norm, F.instance_norm)
class BatchNormFn(Rule):
    """Functional batch/instance norm: every per-channel tensor follows the channel dim. Statistics
    computed from the input (``training=True``; instance norm by default) run over the other dims:
    channels found there (a weight standardised per filter, as in NF-Nets) enter them, so removing
    one is valid but not exact."""

    def propagate(self, ctx, node):
        vx = ctx.value(node.args[0])
        for a in flatten_args((node.args[1:], node.kwargs)):
            vp = ctx.value(a) if isinstance(a, fx.Node) else None
            if vp is not None and len(vp) == 1:
                _contract(ctx, vx[1], vp[0])
        if arg(node, 5, "use_input_stats" if node.target is F.instance_norm else "training",
               node.target is F.instance_norm):
            statistics_over(ctx, vx, 1)
        return vx


@register(F.prelu, torch.prelu, "prelu")
class PReLUFn(Rule):
    """``F.prelu(x, weight)``: a per-channel slope (dim 1 of x, dim 0 for a 1-D x) is pruned with the
    channels; a single shared slope leaves them free."""

    def propagate(self, ctx, node):
        x, w = node.args[0], arg(node, 1, "weight")
        vx, vw, sw = ctx.value(x), ctx.value(w), ctx.shape(w)
        if is_size(sw) and sw.numel() == 1:
            ctx.block_value(vw)
            return vx
        dim = 1 if len(ctx.shape(x)) > 1 else 0
        _contract(ctx, vx[dim], vw[0] if vw else None)
        return vx


@register(F.group_norm)
class GroupNormFn(Rule):
    """``F.group_norm``: pruned by whole groups; ``num_groups`` is rewritten."""


    def propagate(self, ctx, node):
        vx = ctx.value(node.args[0])
        affine = [ctx.value(p) for p in (arg(node, 2, "weight"), arg(node, 3, "bias"))]
        group_norm_channels(ctx, vx[1], arg(node, 1, "num_groups"), [v[0] for v in affine if v is not None])
        return vx

    def rewrite(self, rw, node):
        groups = arg(node, 1, "num_groups")
        per_group = rw.old_shape(node)[1] // groups
        new_groups = rw.new_shape(node)[1] // per_group
        node.args = (node.args[0], new_groups, *node.args[2:])


@register(F.embedding)
class EmbeddingFn(Rule):
    """``F.embedding(indices, weight)``: output features are the weight's columns."""

    def propagate(self, ctx, node):
        vi, vw = ctx.value(node.args[0]), ctx.value(arg(node, 1, "weight"))
        ctx.block_value(vi)
        if vw is None:
            return None
        if vw[0] is not None:
            ctx.space.block(vw[0])
        return tuple(vi) + (vw[1],)


@register(F.scaled_dot_product_attention)
class ScaledDotProductAttention(Rule):
    """``softmax(q k^T) v``: q and k features are pruned together, v's features reach the output.

    The default scale is ``1/sqrt(q.size(-1))``; after pruning the original scale is passed
    explicitly, so removing dead features leaves the attention unchanged.
    """


    def propagate(self, ctx, node):
        q, k, v = (ctx.value(a) for a in node.args[:3])
        sq, sk, sv = (ctx.shape(a) for a in node.args[:3])
        _contract(ctx, q[-1], k[-1])
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
