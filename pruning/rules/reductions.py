"""Rules for reductions and ops along one dim: sums, means, norms, softmax, cumulative ops."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nodes import arg, normalize_dim, target_name
from ..registry import Rule, register
from .common import first_input

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


@register(nn.Softmax, nn.LogSoftmax, nn.Softmin)
class SoftmaxModule(Rule):
    """Softmax mixes values along its dim: channels there are blocked."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, shape = first_input(ctx, node)
        if m.dim is None:
            ctx.block_value(value)
            return None
        dim = m.dim % len(shape)
        if value[dim] is not None:
            ctx.space.block(value[dim])
        return value[:dim] + (None,) + value[dim + 1:]
