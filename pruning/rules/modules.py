"""Rules for leaf modules (``call_module`` nodes), keyed by exact module type."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..registry import CONSERVATIVE, Rule, register, register_rule
from .common import group_norm_channels, im2col, pixel_shuffle, reshape, spatial, statistics_over, window_size
from .tensor_ops import _contract, conv_channels


def _input(ctx, node):
    x = node.args[0]
    return ctx.value(x), ctx.shape(x)


def _tie(ctx, ids, name: str, dim: int) -> None:
    """Parameter dim pruned with tensor dim ``ids``; fixed (never pruned) if the tensor dim is."""
    if ids is None:
        ctx.space.block(ctx.param_axis(name, dim))
    else:
        ctx.param_axis(name, dim, ids)


def _conv_output(ctx, value: tuple, channel_dim: int, out_ids) -> tuple:
    """A convolution's output value: batch dims pass (each item is convolved alone), then its own
    channels; channels that reached the input's spatial dims (a tensor laid out with channels as
    "length") are mixed by the kernel: blocked."""
    ctx.block_value(value[channel_dim + 1:])
    return tuple(value[:channel_dim]) + (out_ids,) + (None,) * (len(value) - channel_dim - 1)


class _ShapePreserving(Rule):
    """A module whose output has its input's shape (norms, activations): the shape pass skips it."""

    def output_shape(self, module: nn.Module, shape: torch.Size) -> torch.Size:
        return shape


@register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvModule(Rule):
    """Convolution: output channels are the weight's rows; see ``conv_channels`` for groups."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, shape = _input(ctx, node)
        name = node.target
        out_ids = ctx.param_axis(f"{name}.weight", 0)
        in_ids = value[1] if len(shape) == m.weight.dim() else value[0]  # batched or not
        if m.groups == 1:
            _tie(ctx, in_ids, f"{name}.weight", 1)
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
        value, shape = _input(ctx, node)
        channel_dim = len(shape) - m.weight.dim() + 1
        if m.groups != 1:
            ctx.block_value(value)
            return None
        _tie(ctx, value[channel_dim], f"{node.target}.weight", 0)
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


@register(nn.Linear)
class LinearModule(Rule):
    """Linear layer on the last dim; its weight is (out, in)."""

    out_axis = 0

    def propagate(self, ctx, node):
        value, _ = _input(ctx, node)
        _tie(ctx, value[-1], f"{node.target}.weight", 1 - self.out_axis)
        out_ids = ctx.param_axis(f"{node.target}.weight", self.out_axis)
        if ctx.module(node).bias is not None:
            ctx.param_axis(f"{node.target}.bias", 0, out_ids)
        return value[:-1] + (out_ids,)

    def output_shape(self, m, shape):
        if len(shape) == 0 or shape[-1] != m.weight.shape[1 - self.out_axis]:
            return None
        return (*shape[:-1], m.weight.shape[self.out_axis])

    def input_channel_dim(self, m, shape):
        return len(shape) - 1

    def output_shift(self, m, shift):
        return m.weight.detach().movedim(self.out_axis, 0) @ shift.to(m.weight)

    def mixes_inputs(self, m):
        return True

    def mixed_weight(self, m, mix):
        return (m.weight.detach().double().movedim(self.out_axis, 0) @ mix).movedim(0, self.out_axis)

    def update_module(self, m):
        m.out_features, m.in_features = m.weight.shape


class TransposedLinearModule(LinearModule):
    """``transformers``' ``Conv1D`` (GPT-2 and its kin): a linear layer on the last dim whose weight is
    (in, out), computed with ``addmm``; registered by name, so transformers need not be installed."""

    out_axis = 1

    def update_module(self, m):
        m.nx, m.nf = m.weight.shape


register_rule("transformers.pytorch_utils.Conv1D", TransposedLinearModule())


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


@register(*_NORMS)
class BatchNormModule(_ShapePreserving):
    """Per-channel normalisation: weight, bias and running statistics follow the channel dim."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, shape = _input(ctx, node)
        dim = 1 if len(shape) > 1 and not (isinstance(m, nn.InstanceNorm1d) and len(shape) == 2) else 0
        if isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            unbatched = {nn.InstanceNorm1d: 2, nn.InstanceNorm2d: 3, nn.InstanceNorm3d: 4}[type(m)]
            dim = 0 if len(shape) == unbatched else 1
        ids = value[dim]
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, name, None) is not None:
                _tie(ctx, ids, f"{node.target}.{name}", 0)
        statistics_over(ctx, value, dim)
        return value

    def update_module(self, m):
        for name in ("weight", "running_mean"):
            if getattr(m, name, None) is not None:
                m.num_features = getattr(m, name).shape[0]


@register(nn.LayerNorm, nn.RMSNorm)
class LayerNormModule(_ShapePreserving):
    """LayerNorm / RMSNorm over trailing dims; without affine weights those dims cannot be resized."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, _ = _input(ctx, node)
        k = len(m.normalized_shape)
        for j, ids in enumerate(value[-k:]):
            if ids is not None:
                ctx.space.normalized(ids)
            if m.weight is None:
                if ids is not None:
                    ctx.space.block(ids)
                continue
            _tie(ctx, ids, f"{node.target}.weight", j)
            if getattr(m, "bias", None) is not None:
                ctx.space.merge(ctx.param_axis(f"{node.target}.weight", j),
                                ctx.param_axis(f"{node.target}.bias", j))
        return value

    def update_module(self, m):
        if m.weight is not None:  # without one its normalized dims were kept (blocked above)
            m.normalized_shape = tuple(m.weight.shape)


@register(nn.GroupNorm)
class GroupNormModule(_ShapePreserving):
    """GroupNorm: pruned by whole groups, so ``num_groups`` shrinks and stays valid."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, _ = _input(ctx, node)
        affine = [ctx.param_axis(f"{node.target}.{name}", 0) for name in ("weight", "bias")] if m.affine else []
        group_norm_channels(ctx, value[1], m.num_groups, affine)
        return value

    def update_module(self, m):
        if m.affine:
            per_group = m.num_channels // m.num_groups
            m.num_channels = m.weight.shape[0]
            m.num_groups = m.num_channels // per_group


_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.LogSigmoid,
    nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity, nn.Hardshrink, nn.Softshrink, nn.RReLU,
)
try:
    from torchvision.ops import StochasticDepth

    _ELEMENTWISE_MODULES += (StochasticDepth,)
except ImportError:  # pragma: no cover
    pass


@register(*_ELEMENTWISE_MODULES)
class ElementwiseModule(_ShapePreserving):
    """Activation, dropout, identity: channels pass through unchanged."""

    def propagate(self, ctx, node):
        return ctx.value(node.args[0]) if node.args else None


@register(nn.PReLU)
class PReLUModule(_ShapePreserving):
    """PReLU: a per-channel slope follows the channel dim (a single shared slope needs nothing)."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, shape = _input(ctx, node)
        if m.num_parameters > 1:
            dim = 1 if len(shape) > 1 else 0
            _tie(ctx, value[dim], f"{node.target}.weight", 0)
        return value

    def update_module(self, m):
        m.num_parameters = m.weight.shape[0]


@register(nn.Softmax, nn.LogSoftmax, nn.Softmin)
class SoftmaxModule(Rule):
    """Softmax mixes values along its dim: channels there are blocked."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, shape = _input(ctx, node)
        if m.dim is None:
            ctx.block_value(value)
            return None
        dim = m.dim % len(shape)
        if value[dim] is not None:
            ctx.space.block(value[dim])
        return value[:dim] + (None,) + value[dim + 1:]


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
        value, shape = _input(ctx, node)
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
        value, shape = _input(ctx, node)
        indices = ctx.value(node.args[1]) if len(node.args) > 1 else ctx.value(node.kwargs.get("indices"))
        if len(node.args) > 2 or node.kwargs.get("output_size") is not None or indices is None:
            return CONSERVATIVE.propagate(ctx, node)
        for a, b in zip(value, indices):
            _contract(ctx, a, b)
        k = {nn.MaxUnpool1d: 1, nn.MaxUnpool2d: 2, nn.MaxUnpool3d: 3}[type(ctx.module(node))]
        return spatial(ctx, value, shape, ctx.shape(node), k)


@register(nn.PixelShuffle, nn.PixelUnshuffle)
class PixelShuffleModule(Rule):
    """PixelShuffle / PixelUnshuffle modules; see ``common.pixel_shuffle``."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        inverse = isinstance(m, nn.PixelUnshuffle)
        return pixel_shuffle(ctx, _input(ctx, node)[0], m.downscale_factor if inverse else m.upscale_factor, inverse)


@register(nn.Unfold, nn.Fold)
class Im2ColModule(Rule):
    """nn.Unfold (im2col) / nn.Fold (col2im); see ``common.im2col``."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        window = window_size(m.kernel_size)
        if window is None:
            return CONSERVATIVE.propagate(ctx, node)
        return im2col(ctx, _input(ctx, node)[0], window, inverse=isinstance(m, nn.Fold))


@register(nn.Softmax2d, nn.LocalResponseNorm, nn.CrossMapLRN2d)
class AcrossChannels(Rule):
    """Softmax over channels, local response normalisation: each output mixes its neighbouring (or
    all) channels, so removing one changes the others: the channel dim (-3) is blocked."""

    def propagate(self, ctx, node):
        value, shape = _input(ctx, node)
        dim = len(shape) - 3 if isinstance(ctx.module(node), nn.Softmax2d) else 1
        if value[dim] is not None:
            ctx.space.block(value[dim])
        return value[:dim] + (None,) + value[dim + 1:]


@register(nn.Bilinear)
class BilinearModule(Rule):
    """``y_k = x1 W_k x2 + b_k``: x1's features are the weight's dim 1, x2's dim 2, outputs dim 0."""

    def propagate(self, ctx, node):
        name = node.target
        x1, x2 = ctx.value(node.args[0]), ctx.value(node.args[1])
        _tie(ctx, x1[-1], f"{name}.weight", 1)
        _tie(ctx, x2[-1], f"{name}.weight", 2)
        ctx.block_value(x1[:-1])
        ctx.block_value(x2[:-1])
        out_ids = ctx.param_axis(f"{name}.weight", 0)
        if ctx.module(node).bias is not None:
            ctx.param_axis(f"{name}.bias", 0, out_ids)
        return (None,) * (len(x1) - 1) + (out_ids,)

    def update_module(self, m):
        m.out_features, m.in1_features, m.in2_features = m.weight.shape


@register(nn.Flatten, nn.Unflatten)
class ReshapeModule(Rule):
    """Flatten/Unflatten modules; Unflatten's literal sizes are rewritten after pruning."""


    def propagate(self, ctx, node):
        value, shape = _input(ctx, node)
        return reshape(ctx, value, shape, ctx.shape(node))

    def rewrite(self, rw, node):
        m = rw.module(node)
        if isinstance(m, nn.Unflatten):
            new, count = rw.new_shape(node), len(m.unflattened_size)
            dim = m.dim % (len(new) - count + 1)  # m.dim counts the input's dims
            m.unflattened_size = tuple(new[dim:dim + count])


@register(nn.ChannelShuffle)
class ChannelShuffleModule(Rule):
    """Channel shuffle: (g, C/g) transposed; channel j of every group is pruned together."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, _ = _input(ctx, node)
        ids = value[1]
        if ids is None:
            return value
        grid = ids.reshape(m.groups, -1)
        ctx.space.merge(grid, grid[:1])
        return value[:1] + (np.ascontiguousarray(grid.T).ravel(),) + value[2:]


@register(nn.Embedding)
class EmbeddingModule(Rule):
    """Embedding: output features are the table's columns; indices carry no channels."""

    def propagate(self, ctx, node):
        value, _ = _input(ctx, node)
        ctx.block_value(value)
        return tuple(value) + (ctx.param_axis(f"{node.target}.weight", 1),)

    def update_module(self, m):
        m.embedding_dim = m.weight.shape[1]
