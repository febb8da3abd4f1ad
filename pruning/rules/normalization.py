"""Rules for normalization layers and their functions: batch, layer, RMS, group and instance norms,
and the norms across channels (``Softmax2d``, local response norm)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import fx, nn

from ..nodes import arg, flatten_args
from ..registry import Rule, register
from .common import (
    ShapePreserving,
    contract,
    first_input,
    group_norm_channels,
    statistics_over,
    tie,
)

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@register(*_NORMS)
class BatchNormModule(ShapePreserving):
    """Per-channel normalisation: weight, bias and running statistics follow the channel dim."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, shape = first_input(ctx, node)
        dim = 1 if len(shape) > 1 and not (isinstance(m, nn.InstanceNorm1d) and len(shape) == 2) else 0
        if isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            unbatched = {nn.InstanceNorm1d: 2, nn.InstanceNorm2d: 3, nn.InstanceNorm3d: 4}[type(m)]
            dim = 0 if len(shape) == unbatched else 1
        ids = value[dim]
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, name, None) is not None:
                tie(ctx, ids, f"{node.target}.{name}", 0)
        statistics_over(ctx, value, dim)
        return value

    def update_module(self, m):
        for name in ("weight", "running_mean"):
            if getattr(m, name, None) is not None:
                m.num_features = getattr(m, name).shape[0]


@register(nn.LayerNorm, nn.RMSNorm)
class LayerNormModule(ShapePreserving):
    """LayerNorm / RMSNorm over trailing dims; without affine weights those dims cannot be resized."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, _ = first_input(ctx, node)
        k = len(m.normalized_shape)
        for j, ids in enumerate(value[-k:]):
            if ids is not None:
                ctx.space.normalized(ids)
            if m.weight is None:
                if ids is not None:
                    ctx.space.block(ids)
                continue
            tie(ctx, ids, f"{node.target}.weight", j)
            if getattr(m, "bias", None) is not None:
                ctx.space.merge(ctx.param_axis(f"{node.target}.weight", j),
                                ctx.param_axis(f"{node.target}.bias", j))
        return value

    def update_module(self, m):
        if m.weight is not None:  # without one its normalized dims were kept (blocked above)
            m.normalized_shape = tuple(m.weight.shape)


@register(nn.GroupNorm)
class GroupNormModule(ShapePreserving):
    """GroupNorm: pruned by whole groups, so ``num_groups`` shrinks and stays valid."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, _ = first_input(ctx, node)
        affine = [ctx.param_axis(f"{node.target}.{name}", 0) for name in ("weight", "bias")] if m.affine else []
        group_norm_channels(ctx, value[1], m.num_groups, affine)
        return value

    def update_module(self, m):
        if m.affine:
            per_group = m.num_channels // m.num_groups
            m.num_channels = m.weight.shape[0]
            m.num_groups = m.num_channels // per_group


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
                    contract(ctx, a, b)
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
                contract(ctx, vx[1], vp[0])
        if arg(node, 5, "use_input_stats" if node.target is F.instance_norm else "training",
               node.target is F.instance_norm):
            statistics_over(ctx, vx, 1)
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


@register(nn.Softmax2d, nn.LocalResponseNorm, nn.CrossMapLRN2d)
class AcrossChannels(Rule):
    """Softmax over channels, local response normalisation: each output mixes its neighbouring (or
    all) channels, so removing one changes the others: the channel dim (-3) is blocked."""

    def propagate(self, ctx, node):
        value, shape = first_input(ctx, node)
        dim = len(shape) - 3 if isinstance(ctx.module(node), nn.Softmax2d) else 1
        if value[dim] is not None:
            ctx.space.block(value[dim])
        return value[:dim] + (None,) + value[dim + 1:]
