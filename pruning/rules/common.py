"""Building blocks shared by rules: broadcasting, spatial ops, reshapes, grouped channels, dims summed over
together, parameters tied to tensor dims."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..nodes import is_size
from ..registry import Rule


def broadcast(ctx, out_shape: Sequence[int], inputs: list[tuple[Any, Sequence[int]]]) -> tuple:
    """Elementwise op with numpy broadcasting: aligned channel dims must be pruned together.

    A dimension where some input is tracked and another (full-size) input is not cannot be pruned:
    the untracked tensor could not follow. A tracked size-1 dimension that broadcasts is blocked.
    """
    nd = len(out_shape)
    out: list[Any] = [None] * nd
    for d in range(nd):
        carriers, untracked = [], False
        for value, shape in inputs:
            k = d - (nd - len(shape))
            if k < 0:
                continue
            ids = value[k]
            if shape[k] != out_shape[d]:  # broadcast size-1 dim
                if ids is not None:
                    ctx.space.block(ids)
                continue
            if ids is None:
                untracked = True
            else:
                carriers.append(ids)
        if not carriers:
            continue
        if untracked:
            for ids in carriers:
                ctx.space.block(ids)
            continue
        for ids in carriers[1:]:
            ctx.space.merge(carriers[0], ids)
        out[d] = carriers[0]
    return tuple(out)


def spatial(ctx, value: tuple, in_shape: Sequence[int], out_shape: Any, trailing: int,
            untouched: frozenset[int] = frozenset()) -> Any:
    """An op that works on the last ``trailing`` dims (pooling, resize, pad) and keeps the others.

    Channels in the trailing dims, or in a dim whose size changes, are blocked, except in the trailing
    dims ``untouched`` (non-negative indices) that the op leaves as they are (padded by zero on both sides).
    Ops returning (values, indices) give both the same channels.
    """
    nd = len(in_shape)
    first = out_shape[0] if isinstance(out_shape, list) else out_shape
    same_rank = is_size(first) and len(first) == nd
    kept = []
    for d, ids in enumerate(value):
        if ids is not None and ((d >= nd - trailing and d not in untouched) or not same_rank
                                or first[d] != in_shape[d]):
            ctx.space.block(ids)
            ids = None
        kept.append(ids)
    if not same_rank:
        return ctx.untracked(out_shape)
    return [tuple(kept)] * len(out_shape) if isinstance(out_shape, list) else tuple(kept)


def group_dims(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair up minimal runs of input and output dims with equal products (a reshape's structure)."""
    groups, i, j = [], 0, 0
    while i < len(in_shape) or j < len(out_shape):
        gi, gj, pi, pj = [], [], 1, 1
        if i < len(in_shape):
            gi.append(i); pi *= in_shape[i]; i += 1
        if j < len(out_shape):
            gj.append(j); pj *= out_shape[j]; j += 1
        while pi != pj:
            if pi < pj and i < len(in_shape):
                gi.append(i); pi *= in_shape[i]; i += 1
            elif pj < pi and j < len(out_shape):
                gj.append(j); pj *= out_shape[j]; j += 1
            else:
                return None
        groups.append((gi, gj))
    return groups


def reshape(ctx, value: tuple, in_shape: Sequence[int], out_shape: Sequence[int]) -> tuple:
    """Channels through a reshape (view, flatten, unflatten, squeeze...).

    Within each run of merged/split dims holding one tracked dim, the element ids are laid out on the
    output dims. One output dim carries them: one along which they vary while constant along the rest
    of the run if there is one (a flatten, or undoing one), otherwise the largest dim, after merging
    ids across the others (a channel split into heads or shuffle groups is then pruned uniformly, so
    the literal sizes stay consistent). Two tracked dims in one run cannot be represented: blocked.
    """
    out: list[Any] = [None] * len(out_shape)
    groups = group_dims(in_shape, out_shape)
    # An empty tensor (no region proposed) reshapes unambiguously only where each empty dim maps to one.
    if groups is None or any(0 in [in_shape[d] for d in gi] and (len(gi), len(gj)) != (1, 1) for gi, gj in groups):
        ctx.block_value(value)
        return tuple(out)
    for gi, gj in groups:
        tracked = [d for d in gi if value[d] is not None]
        if not tracked:
            continue
        if len(tracked) > 1 or not gj:
            for d in tracked:
                ctx.space.block(value[d])
            continue
        if len(gi) == 1 and len(gj) == 1:
            out[gj[0]] = value[gi[0]]
            continue
        t = tracked[0]
        in_sizes = [in_shape[d] for d in gi]
        view = [1] * len(gi)
        view[gi.index(t)] = in_shape[t]
        grid = np.broadcast_to(value[t].reshape(view), in_sizes).reshape([out_shape[d] for d in gj])
        carrier = None
        for k in sorted(range(len(gj)), key=lambda k: -out_shape[gj[k]]):
            if out_shape[gj[k]] > 1 and np.all(grid == _first_along_others(grid, k)):
                carrier = k
                break
        if carrier is None:
            carrier = max(range(len(gj)), key=lambda k: out_shape[gj[k]])
            ctx.space.merge(grid, _first_along_others(grid, carrier))
        out[gj[carrier]] = np.ascontiguousarray(_first_along_others(grid, carrier)).ravel()
    return tuple(out)


def _first_along_others(grid: np.ndarray, keep: int) -> np.ndarray:
    """``grid`` reduced to index 0 along every axis but ``keep`` (kept as size-1 axes)."""
    index = tuple(slice(None) if a == keep else slice(0, 1) for a in range(grid.ndim))
    return grid[index]


def merge_in_groups(ctx, ids: np.ndarray, groups: int, rep: np.ndarray) -> None:
    """Merge every element of ``ids`` (split into ``groups`` equal runs) with its run's ``rep``."""
    ctx.space.merge(ids, np.repeat(rep, len(ids) // groups))


def group_norm_channels(ctx, ids: np.ndarray | None, groups: int, affine: list[np.ndarray]) -> None:
    """GroupNorm: whole groups are pruned (statistics of the other groups stay exact, ``num_groups``
    shrinks and stays valid); the affine parameters follow the channels. Without channel ids on the
    input, the affine parameters cannot be sliced."""
    if ids is None:
        for param_ids in affine:
            ctx.space.block(param_ids)
        return
    merge_in_groups(ctx, ids, groups, ids[:: len(ids) // groups])
    for param_ids in affine:
        ctx.space.merge(ids, param_ids)


def spread(ids: np.ndarray | None, run: int) -> np.ndarray | None:
    """Each channel becomes ``run`` consecutive channels that carry its id (space-to-depth, im2col)."""
    return None if ids is None else np.repeat(ids, run)


def pack(ctx, ids: np.ndarray | None, run: int) -> np.ndarray | None:
    """Each run of ``run`` consecutive channels becomes one channel (depth-to-space, col2im): the run is one
    label, whose id the output channel carries."""
    if ids is None:
        return None
    runs = ids.reshape(-1, run)
    ctx.space.merge(runs, np.repeat(runs[:, :1], run, axis=1))
    return np.ascontiguousarray(runs[:, 0])


def pixel_shuffle(ctx, value: tuple, factor: int, inverse: bool) -> tuple:
    """``pixel_shuffle`` (``inverse``: ``pixel_unshuffle``) by ``factor`` on (..., C, H, W): shuffling
    packs each run of ``factor**2`` channels into one output channel, unshuffling spreads each channel
    over ``factor**2`` consecutive ones. Channels in H or W are blocked (their size changes)."""
    *lead, ids, h, w = value
    for spatial_ids in (h, w):
        if spatial_ids is not None:
            ctx.space.block(spatial_ids)
    ids = spread(ids, factor * factor) if inverse else pack(ctx, ids, factor * factor)
    return (*lead, ids, None, None)


def window_size(kernel_size: Any) -> int | None:
    """Kernel positions of an ``unfold``/``fold`` kernel size (an int or a pair), None if not a literal."""
    sizes = [kernel_size] * 2 if isinstance(kernel_size, int) else kernel_size
    if isinstance(sizes, (tuple, list)) and len(sizes) == 2 and all(isinstance(k, int) and not isinstance(k, bool) for k in sizes):
        return sizes[0] * sizes[1]
    return None


def im2col(ctx, value: tuple, window: int, inverse: bool) -> tuple:
    """``unfold`` (im2col; ``inverse``: ``fold``, col2im) with ``window`` kernel positions: unfolding
    (..., C, H, W) spreads each channel over ``window`` consecutive rows of (..., C*window, L); folding sums
    each run of ``window`` rows of (..., C*window, L) into one channel of (..., C, H, W). Channels in the
    spatial dims or in L are blocked (those dims are rearranged)."""
    *lead, ids = value[:-1] if inverse else value[:-2]
    for other in value[-1:] if inverse else value[-2:]:
        if other is not None:
            ctx.space.block(other)
    if inverse:
        return (*lead, pack(ctx, ids, window), None, None)
    return (*lead, spread(ids, window), None)


def packed_heads(ctx, rows: np.ndarray, heads: int, qk: int, vd: int) -> np.ndarray:
    """Channels of a packed q/k/v projection's rows (``heads * qk`` query, as many key, ``heads * vd``
    value features): queries and keys are contracted together, and feature ``j`` of every head is
    one label, so that all heads keep one width. Returns the value features' ids."""
    q, k, v = np.split(rows, [heads * qk, 2 * heads * qk])
    ctx.space.merge(q, k)
    for part, width in ((q, qk), (v, vd)):
        grid = part.reshape(heads, width)
        ctx.space.merge(grid, grid[:1])
    return v


def statistics_over(ctx, value: tuple, channel_dim: int) -> None:
    """A norm that computes statistics over every dim but the channel dim (batch norm in training,
    instance norm): channels found in those dims enter the statistics, so removing one is valid but
    not exact (as for a LayerNorm's)."""
    for d, ids in enumerate(value):
        if d != channel_dim and ids is not None:
            ctx.space.normalized(ids)


def contract(ctx, x: np.ndarray | None, y: np.ndarray | None) -> None:
    """Two dims summed over together: prune them together, or not at all if one is fixed."""
    if x is not None and y is not None:
        ctx.space.merge(x, y)
    elif x is not None or y is not None:
        ctx.space.block(x if x is not None else y)


def first_input(ctx, node):
    x = node.args[0]
    return ctx.value(x), ctx.shape(x)


def tie(ctx, ids, name: str, dim: int) -> None:
    """Parameter dim pruned with tensor dim ``ids``; fixed (never pruned) if the tensor dim is."""
    if ids is None:
        ctx.space.block(ctx.param_axis(name, dim))
    else:
        ctx.param_axis(name, dim, ids)


class ShapePreserving(Rule):
    """A module whose output has its input's shape (norms, activations): the shape pass skips it."""

    def output_shape(self, module: nn.Module, shape: torch.Size) -> torch.Size:
        return shape
