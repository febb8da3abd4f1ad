"""Rules for indexing: ``x[...]`` reads (``operator.getitem``) and writes (``operator.setitem``)."""
from __future__ import annotations

import operator
from typing import Any

from torch import fx

from ..channels.values import SizeOf
from ..nodes import flatten_args, is_size
from ..registry import Fixed, Rule, register


@register(operator.getitem)
class GetItem(Rule):
    """Indexing: a container item, or basic tensor indexing (ints, slices, None, Ellipsis).

    A slice of a channel dim takes that part of the ids and its literal bounds are rewritten after
    pruning; an integer index into a channel dim, strided slices and advanced (tensor) indexing
    block the channels involved.
    """

    reads_sizes = True

    def shaped_by_values(self, node):
        return any(isinstance(i, fx.Node) for i in flatten_args((node.args[1],)))  # x[mask]

    def propagate(self, ctx, node):
        src, index = node.args
        value, shape = ctx.value(src), ctx.shape(src)
        if isinstance(value, SizeOf) and not value.scalar and isinstance(index, (int, slice)):
            return SizeOf((value.ids[index],), True) if isinstance(index, int) else SizeOf(value.ids[index], False)
        if isinstance(value, SizeOf):
            ctx.block_value(value)
            return None
        if not is_size(shape):  # container or non-tensor
            if isinstance(value, list) and isinstance(index, (int, slice)):
                return value[index]
            return None
        items = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, fx.Node) and not is_size(i.meta.get("pruning_shape")) and "pruning_int" not in i.meta
               for i in items):  # computed slices or index tuples (Funnel's pooling): what they take is unknown
            ctx.block_value(value)
            return ctx.untracked(ctx.shape(node))
        out: list[Any] = []
        for kind, d, item in _index_items(index, len(shape), ctx):
            ids = value[d] if d is not None else None
            if kind == "new":
                out.append(None)
            elif kind == "keep":
                out.append(ids)
            elif kind == "slice":
                if ids is None:
                    out.append(None)
                elif _simple_slice(item):
                    out.append(ids[item])
                else:
                    ctx.space.block(ids)
                    out.append(None)
            elif kind == "int":
                if ids is not None:
                    ctx.space.block(ids)
            else:  # advanced indexing: give up on the whole tensor, and on the index tensors' dims
                ctx.block_value(value)
                for a in (index if isinstance(index, (tuple, list)) else (index,)):
                    if isinstance(a, fx.Node):
                        ctx.block_value(ctx.value(a))
                return None
        return tuple(out)

    def rewrite(self, rw, node):
        src, index = node.args
        if not is_size(rw.old_shape(src)):
            return
        value = rw.ids(src)
        items = list(index) if isinstance(index, tuple) else [index]
        changed = False
        for pos, (kind, d, item) in zip(_item_positions(index, len(rw.old_shape(src))),
                                        _index_items(index, len(rw.old_shape(src)), None)):
            if kind == "slice" and value[d] is not None and _simple_slice(item):
                kept = rw.kept(value[d])
                start, stop, _ = item.indices(len(kept))
                items[pos] = slice(int(kept[:start].sum()), int(kept[:stop].sum()), item.step)
                changed = True
        if changed:
            node.args = (src, tuple(items) if isinstance(index, tuple) else items[0])


def _simple_slice(item: slice) -> bool:
    return all(isinstance(v, (int, type(None))) for v in (item.start, item.stop, item.step)) \
        and item.step in (None, 1)


def _index_items(index, ndim: int, ctx):
    """Yield (kind, input dim, item) for a basic index; kinds: new, keep, slice, int, advanced."""
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    d = 0
    for item in items:
        if item is None:
            yield "new", None, item
        elif item is Ellipsis:
            for _ in range(ndim - consumed):
                yield "keep", d, item
                d += 1
        elif isinstance(item, slice):
            full = item.start is None and item.stop is None and item.step in (None, 1)
            yield ("keep" if full else "slice"), d, item
            d += 1
        elif isinstance(item, int) or (isinstance(item, fx.Node) and "pruning_int" in item.meta):
            yield "int", d, item
            d += 1
        else:
            yield "advanced", d, item
            d += 1
    while d < ndim:
        yield "keep", d, None
        d += 1


def _item_positions(index, ndim: int):
    """Position in the index tuple of each item yielded by ``_index_items``."""
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    for pos, item in enumerate(items):
        repeat = ndim - consumed if item is Ellipsis else 1
        for _ in range(repeat):
            yield pos
    yield from (len(items) for _ in range(ndim))


@register(operator.setitem)
class Assign(Fixed):
    """``x[index] = value`` on a traced tensor (:mod:`pruning.tracing.recorded`): the channels of ``x``, of
    the value and of index tensors stay, since where the write lands on ``x``'s channels is not followed."""
