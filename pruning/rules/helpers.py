"""Soft tracing's opaque method calls (:func:`pruning.tracing.recorded.helper_call`): ``holder.method(...)``,
where ``holder`` is a submodule or a helper object a module holds.

Like any op without a rule, the call keeps the channels that enter it. It may also read tensors that are
not its arguments: the holder's own parameters, or submodules it calls. Those are found by name: every
attribute name the method's code reads, and the code of the holder's methods it names, in turn; a
submodule, parameter or buffer so named keeps all its channels, so pruning never changes what the method
computes. An attribute reached by a computed name (``getattr(self, name)``) is not seen: such a method
that reads submodules must be traceable, or the holder a leaf module.
"""
from __future__ import annotations

import inspect
import types

from torch import nn

from .base import Fixed, Rule, keep_modules_in, register_rule

FIXED = Fixed()


def names_read(cls: type, method: str) -> set[str]:
    """Attribute names read by ``cls.method`` and by the methods and properties of ``cls`` it names,
    transitively."""
    names: set[str] = set()
    seen: set[str] = set()
    todo = [method]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        function = _function(inspect.getattr_static(cls, name, None))
        codes = [getattr(inspect.unwrap(function), "__code__", None)] if callable(function) else []
        while codes:
            code = codes.pop()
            if code is None:
                continue
            names.update(code.co_names)
            codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]  # comprehensions, closures
        todo += [n for n in names if n not in seen and callable(_function(inspect.getattr_static(cls, n, None)))]
    return names


def _function(attribute: object) -> object:
    """The function of a class attribute: a property's getter, a staticmethod's or classmethod's own, else the
    attribute."""
    if isinstance(attribute, property):
        return attribute.fget
    return getattr(attribute, "__func__", attribute)


class HelperCall(Rule):
    """``helper_call(holder, method, *args)``: opaque; keeps its arguments' channels and those of the modules
    and tensors its method reads by name (see the module docstring)."""

    def propagate(self, ctx, node):
        holder_node, method = node.args[0], node.args[1]
        holder = ctx.attribute(holder_node) if getattr(holder_node, "op", None) == "get_attr" else None
        if holder is not None:
            for name in names_read(type(holder), method):
                if isinstance(holder, nn.Module):
                    value = holder._modules.get(name, holder._parameters.get(name, holder._buffers.get(name)))
                else:
                    value = vars(holder).get(name)
                if isinstance(value, nn.Module):
                    ctx.keep_tensors_of(value)
                elif value is not None and isinstance(holder, nn.Module):
                    ctx.keep_tensors_of(holder, name)  # its own parameter or buffer
        ctx.report_opaque(node)
        keep_modules_in(ctx, (node.args[2:], node.kwargs))
        return FIXED.propagate(ctx, node)


register_rule("pruning.tracing.recorded.helper_call", HelperCall())
