"""Soft tracing's opaque method calls (:func:`pruning.tracing.recorded.helper_call`): ``holder.method(...)``,
where ``holder`` is a submodule or a helper object a module holds.

Like any op without a rule, the call keeps the channels that enter it. It may also read tensors that are
not its arguments: the holder's own parameters, or submodules it calls. Those are found by name: every
attribute name the method's code reads, and the code of the holder's methods it names, in turn; a
submodule, parameter or buffer so named keeps all its channels, so pruning never changes what the method
computes. The shape pass also records what the call reads on the example (``module.name`` of a parameter,
buffer or submodule), which those keep too. An attribute reached by a computed name (``getattr(self,
name)``) on a branch the example did not take is not seen: such a method must be traceable, or the holder
a leaf module.
"""
from __future__ import annotations

import inspect

from torch import nn

from ..registry import Fixed, Rule, keep_read, names_in_code, register_rule

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
        names |= names_in_code(_function(inspect.getattr_static(cls, name, None)))
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
    and tensors its method reads (see the module docstring)."""

    def propagate(self, ctx, node):
        holder_node, method = node.args[0], node.args[1]
        holder = ctx.attribute(holder_node) if getattr(holder_node, "op", None) == "get_attr" else None
        names = names_read(type(holder), method) if holder is not None else set()
        if holder is not None and not isinstance(holder, nn.Module):  # the modules a helper object holds
            for name in names:
                if isinstance(value := vars(holder).get(name), nn.Module):
                    ctx.keep_tensors_of(value)
        ctx.report_opaque(node)
        keep_read(ctx, node, (node.args, node.kwargs), names)
        return FIXED.propagate(ctx, node)


register_rule("pruning.tracing.recorded.helper_call", HelperCall())
