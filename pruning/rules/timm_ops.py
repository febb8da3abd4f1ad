"""timm's TF-style "same" padding, which its graphs call as opaque functions (it reads the input size):
registered by name, so that timm need not be installed or imported."""
from __future__ import annotations

from ..nodes import arg
from ..registry import Rule, register_rule
from .common import spatial
from .convolution import Conv


class PadSame(Rule):
    """``pad_same(x, kernel_size, stride, dilation)``: pads the trailing ``len(kernel_size)`` dims."""

    def propagate(self, ctx, node):
        x = node.args[0]
        kernel = arg(node, 1, "kernel_size")
        trailing = len(kernel) if isinstance(kernel, (list, tuple)) else 2
        return spatial(ctx, ctx.value(x), ctx.shape(x), ctx.shape(node), trailing)


register_rule("timm.layers.padding.pad_same", PadSame())
# conv2d_same(x, weight, bias, stride, padding, dilation, groups): same padding, then F.conv2d's arguments
register_rule("timm.layers.conv2d_same.conv2d_same", Conv())
