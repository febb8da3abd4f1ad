"""Rules for pooling and resampling: pools, interpolation, padding, roll, grid sampling, im2col
(``unfold``/``fold``), max-unpooling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nodes import arg, normalize_dim
from ..registry import CONSERVATIVE, Rule, register
from .common import contract, first_input, im2col, spatial, window_size

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
            pad = arg(node, 1, "pad")
            trailing = len(pad) // 2
            # a dim padded by a literal (0, 0) is left as it is: its channels pass (a channels-last tensor
            # padded in its spatial dims, as windowed attention does)
            untouched = frozenset(len(shape) - 1 - i for i in range(trailing)
                                  if not isinstance(pad[2 * i], fx.Node) and not isinstance(pad[2 * i + 1], fx.Node)
                                  and pad[2 * i] == 0 and pad[2 * i + 1] == 0)
            return spatial(ctx, ctx.value(x), shape, ctx.shape(node), trailing, untouched)
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


_SPATIAL_MODULES = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
    nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1,
    nn.LPPool2d: 2, nn.ZeroPad1d: 1, nn.ZeroPad2d: 2, nn.ZeroPad3d: 3, nn.ConstantPad1d: 1,
    nn.ConstantPad2d: 2, nn.ConstantPad3d: 3, nn.ReflectionPad1d: 1, nn.ReflectionPad2d: 2,
    nn.ReflectionPad3d: 3, nn.ReplicationPad1d: 1, nn.ReplicationPad2d: 2, nn.ReplicationPad3d: 3,
    nn.CircularPad1d: 1, nn.CircularPad2d: 2, nn.CircularPad3d: 3,
}


_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                   nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


@register(*_SPATIAL_MODULES, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
class SpatialModule(Rule):
    """Pooling, padding and upsampling act on trailing spatial dims only."""

    def propagate(self, ctx, node):
        value, shape = first_input(ctx, node)
        trailing = _SPATIAL_MODULES.get(type(ctx.module(node)), len(shape) - 2)
        return spatial(ctx, value, shape, ctx.shape(node), trailing)

    def output_shape(self, m, shape):
        if not isinstance(m, _ADAPTIVE_POOLS) or getattr(m, "return_indices", False) \
                or len(shape) <= _SPATIAL_MODULES[type(m)]:
            return None
        k = _SPATIAL_MODULES[type(m)]
        size = (m.output_size,) * k if isinstance(m.output_size, int) else tuple(m.output_size)
        return (*shape[:-k], *(old if new is None else new for old, new in zip(shape[-k:], size)))


@register(nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d)
class MaxUnpoolModule(Rule):
    """Max-unpooling: the values and the pooling indices share channels, which pass on; an
    ``output_size`` given in the call may hold the channel count, so then they are blocked."""

    def propagate(self, ctx, node):
        value, shape = first_input(ctx, node)
        indices = ctx.value(node.args[1]) if len(node.args) > 1 else ctx.value(node.kwargs.get("indices"))
        if len(node.args) > 2 or node.kwargs.get("output_size") is not None or indices is None:
            return CONSERVATIVE.propagate(ctx, node)
        for a, b in zip(value, indices):
            contract(ctx, a, b)
        k = {nn.MaxUnpool1d: 1, nn.MaxUnpool2d: 2, nn.MaxUnpool3d: 3}[type(ctx.module(node))]
        return spatial(ctx, value, shape, ctx.shape(node), k)


@register(F.unfold, F.fold)
class Im2ColFn(Rule):
    """``F.unfold`` (im2col) / ``F.fold`` (col2im); see ``common.im2col``."""

    def propagate(self, ctx, node):
        inverse = node.target is F.fold
        window = window_size(arg(node, 2, "kernel_size") if inverse else arg(node, 1, "kernel_size"))
        if window is None:
            return CONSERVATIVE.propagate(ctx, node)
        return im2col(ctx, ctx.value(node.args[0]), window, inverse)


@register(nn.Unfold, nn.Fold)
class Im2ColModule(Rule):
    """nn.Unfold (im2col) / nn.Fold (col2im); see ``common.im2col``."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        window = window_size(m.kernel_size)
        if window is None:
            return CONSERVATIVE.propagate(ctx, node)
        return im2col(ctx, first_input(ctx, node)[0], window, inverse=isinstance(m, nn.Fold))
