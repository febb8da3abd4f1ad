"""Rules for ops that read sizes or make tensors from them (``x.size(1)``, ``len(x)``, ``x.new_zeros``),
and for guards on sizes that the tracer records."""
from __future__ import annotations

import builtins

import torch

from ..channels.values import SizeOf
from ..nodes import arg
from ..registry import Fixed, Rule, register
from ..tracing.sizes import size_count
from ..tracing.structure import is_none, keys_of


@register(torch._assert, is_none, keys_of)
class SizeGuard(Fixed):
    """``torch._assert(condition, message)``, as the tracer puts after each branch on sizes
    (:mod:`pruning.tracing.sizes`), and ``is_none``/``keys_of`` (:mod:`pruning.tracing.structure`): channels whose counts
    the condition read are kept, so that pruning never changes what the condition computes."""


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
