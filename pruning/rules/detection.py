"""torchvision's region-of-interest pooling, which its detectors' heads read features through: the Python
functions and modules registered by name, so that torchvision need not be installed, and its torch ops
(``torch.ops.torchvision.roi_align``, which a trace records where the Python function traces through, as on
torch 2.11's torchvision) where it is.

Each pooled region keeps the channels of the feature map it is pooled from: the output is
``(regions, channels, height, width)``, with the input's channel dim and nothing else carried over. The
boxes are coordinates, not channels (blocked).
"""
from __future__ import annotations

import torch

from ..nodes import arg, is_size
from ..registry import CONSERVATIVE, Rule, register_rule


def _pooled(ctx, node, feature_ids: object) -> tuple | list:
    """The output value of a pooling whose output carries ``feature_ids`` in dim 1 (None: no channels); for
    an op returning (output, argmax), as ``torch.ops.torchvision.roi_pool`` does, both carry them."""
    shape = ctx.shape(node)
    value = (None, feature_ids, *(None,) * (len(_first(shape)) - 2))
    return [value] * len(shape) if isinstance(shape, list) else value


def _first(shape: object) -> object:
    return shape[0] if isinstance(shape, list) else shape


class RoIPooling(Rule):
    """``roi_align``/``roi_pool`` (function, ``RoIAlign``/``RoIPool`` module or torch op): ``(input, boxes or rois,
    ...)``, input ``(N, C, H, W)``."""

    def propagate(self, ctx, node):
        feature, boxes = arg(node, 0, "input"), node.args[1] if len(node.args) > 1 else node.kwargs.get(
            "boxes", node.kwargs.get("rois"))
        value, shape, out = ctx.value(feature), ctx.shape(feature), _first(ctx.shape(node))
        if not is_size(shape) or len(shape) != 4 or not is_size(out) or out[1] != shape[1]:
            return CONSERVATIVE.propagate(ctx, node)
        ctx.block_value(ctx.value(boxes))
        if value is None:
            return _pooled(ctx, node, None)
        ctx.block_value([value[0], *value[2:]])
        return _pooled(ctx, node, value[1])


class MultiScaleRoIAlign(Rule):
    """``MultiScaleRoIAlign(features, boxes, image_shapes)``: each region is pooled from one of the feature
    maps its ``featmap_names`` select among those given (a feature pyramid's levels, chosen by the region's
    size), so those maps' channels are pruned together and the output carries them. Maps it does not select
    are not read."""

    def propagate(self, ctx, node):
        features, boxes, sizes = arg(node, 0, "x"), arg(node, 1, "boxes"), arg(node, 2, "image_shapes")
        names = getattr(ctx.module(node), "featmap_names", None)
        if not isinstance(features, dict) or not names:
            return CONSERVATIVE.propagate(ctx, node)
        selected = [value for key, value in features.items() if key in names]
        shapes = [ctx.shape(f) for f in selected]
        out = ctx.shape(node)
        if not is_size(out) or any(not is_size(s) or len(s) != 4 or s[1] != out[1] for s in shapes):
            return CONSERVATIVE.propagate(ctx, node)
        ctx.block_value(ctx.value(boxes))
        ctx.block_value(ctx.value(sizes))
        channels = None
        for value in (ctx.value(f) for f in selected):
            if value is None or value[1] is None:  # a map without channel ids: the others are kept too
                return CONSERVATIVE.propagate(ctx, node)
            ctx.block_value([value[0], *value[2:]])
            if channels is None:
                channels = value[1]
            else:
                ctx.space.merge(channels, value[1])
        return _pooled(ctx, node, channels)


for _name in ("torchvision.ops.roi_align.roi_align", "torchvision.ops.roi_pool.roi_pool",
              "torchvision.ops.roi_align.RoIAlign", "torchvision.ops.roi_pool.RoIPool"):
    register_rule(_name, RoIPooling())
register_rule("torchvision.ops.poolers.MultiScaleRoIAlign", MultiScaleRoIAlign())
try:
    import torchvision  # noqa: F401  (registers its ops with torch)
except ImportError:  # pragma: no cover - torchvision is installed in development
    pass
else:
    for _op in (torch.ops.torchvision.roi_align, torch.ops.torchvision.roi_pool):
        register_rule(_op, RoIPooling())
        register_rule(_op.default, RoIPooling())
