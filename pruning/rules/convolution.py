"""Rules for convolutions: ``nn.Conv*d``, ``nn.ConvTranspose*d`` and ``F.conv*d``."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nodes import arg
from ..registry import Rule, register
from .common import contract, first_input, merge_in_groups, tie


def _conv_output(ctx, value: tuple, channel_dim: int, out_ids) -> tuple:
    """A convolution's output value: batch dims pass (each item is convolved alone), then its own
    channels; channels that reached the input's spatial dims (a tensor laid out with channels as
    "length") are mixed by the kernel: blocked."""
    ctx.block_value(value[channel_dim + 1:])
    return tuple(value[:channel_dim]) + (out_ids,) + (None,) * (len(value) - channel_dim - 1)


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvModule(Rule):
    """Convolution: output channels are the weight's rows; see ``conv_channels`` for groups."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, shape = first_input(ctx, node)
        name = node.target
        out_ids = ctx.param_axis(f"{name}.weight", 0)
        in_ids = value[1] if len(shape) == m.weight.dim() else value[0]  # batched or not
        if m.groups == 1:
            tie(ctx, in_ids, f"{name}.weight", 1)
        else:
            conv_channels(ctx, in_ids, out_ids, None, m.groups)
        if m.bias is not None:
            ctx.param_axis(f"{name}.bias", 0, out_ids)
        channel_dim = len(shape) - m.weight.dim() + 1
        return _conv_output(ctx, value, channel_dim, out_ids)

    def output_shape(self, m, shape):
        k = m.weight.dim() - 2
        if len(shape) not in (k + 1, k + 2) or shape[-k - 1] != m.weight.shape[1] * m.groups:
            return None
        if m.padding == "same":
            return (*shape[:-k - 1], m.weight.shape[0], *shape[-k:])
        padding = (0,) * k if m.padding == "valid" else m.padding
        sizes = [(size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1 for size, pad, dilation, kernel, stride
                 in zip(shape[-k:], padding, m.dilation, m.weight.shape[2:], m.stride)]
        if min(sizes) < 1:
            return None
        return (*shape[:-k - 1], m.weight.shape[0], *sizes)

    def input_channel_dim(self, m, shape):
        return len(shape) - m.weight.dim() + 1

    def output_shift(self, m, shift):
        kernel = m.weight.detach().flatten(2).sum(-1)  # (out, in / groups): a constant input sees the kernel's sum
        out, per_group = kernel.shape
        shift = shift.to(kernel).view(m.groups, 1, per_group)
        return (kernel.view(m.groups, out // m.groups, per_group) * shift).sum(-1).reshape(out)

    def mixes_inputs(self, m):
        return m.groups == 1

    def mixed_weight(self, m, mix):
        return torch.einsum("oi...,ij->oj...", m.weight.detach().double(), mix)  # weight (out, in, k...)

    def update_module(self, m):
        if m.groups > 1:
            m.groups = m.weight.shape[0] // (m.out_channels // m.groups)
        m.out_channels = m.weight.shape[0]
        m.in_channels = m.weight.shape[1] * m.groups


@register(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposeModule(Rule):
    """Transposed convolution (``groups == 1``): the weight is (in, out, k...)."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, shape = first_input(ctx, node)
        channel_dim = len(shape) - m.weight.dim() + 1
        if m.groups != 1:
            ctx.block_value(value)
            return None
        tie(ctx, value[channel_dim], f"{node.target}.weight", 0)
        out_ids = ctx.param_axis(f"{node.target}.weight", 1)
        if m.bias is not None:
            ctx.space.merge(out_ids, ctx.param_axis(f"{node.target}.bias", 0))
        return _conv_output(ctx, value, channel_dim, out_ids)

    def input_channel_dim(self, m, shape):
        return len(shape) - m.weight.dim() + 1 if m.groups == 1 else None

    def output_shift(self, m, shift):
        return shift.to(m.weight) @ m.weight.detach().flatten(2).sum(-1)  # weight (in, out, k...)

    def mixes_inputs(self, m):
        return m.groups == 1

    def mixed_weight(self, m, mix):
        return torch.einsum("io...,ij->jo...", m.weight.detach().double(), mix)

    def update_module(self, m):
        m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1]


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
            contract(ctx, out_ids, vb[0])
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
        contract(ctx, in_ids, weight_in_ids)  # either side untracked: neither may be pruned
        return
    rep = out_ids[:: len(out_ids) // groups]
    merge_in_groups(ctx, out_ids, groups, rep)
    if in_ids is None:
        ctx.space.block(out_ids)
    else:
        merge_in_groups(ctx, in_ids, groups, rep)
