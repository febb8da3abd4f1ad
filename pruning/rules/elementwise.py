"""Rules for elementwise ops: arithmetic with broadcasting, comparisons, unary math, activations."""
from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..channels.values import SizeOf
from ..nodes import arg, is_size, target_name
from ..registry import Rule, register
from ..tracing.sizes import negated
from .common import ShapePreserving, broadcast, contract, first_input, tie

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
class ElementwiseModule(ShapePreserving):
    """Activation, dropout, identity: channels pass through unchanged."""

    def propagate(self, ctx, node):
        return ctx.value(node.args[0]) if node.args else None


@register(nn.PReLU)
class PReLUModule(ShapePreserving):
    """PReLU: a per-channel slope follows the channel dim (a single shared slope needs nothing)."""

    def propagate(self, ctx, node):
        m = ctx.module(node)
        value, shape = first_input(ctx, node)
        if m.num_parameters > 1:
            dim = 1 if len(shape) > 1 else 0
            tie(ctx, value[dim], f"{node.target}.weight", 0)
        return value

    def update_module(self, m):
        m.num_parameters = m.weight.shape[0]


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
        contract(ctx, vx[dim], vw[0] if vw else None)
        return vx
