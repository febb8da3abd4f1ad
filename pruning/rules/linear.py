"""Rules for linear maps and matrix products: ``nn.Linear``, transformers' ``Conv1D``, ``F.linear``,
matmul and einsum, ``nn.Bilinear``, embeddings."""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nodes import arg
from ..registry import CONSERVATIVE, Rule, register, register_rule
from .common import broadcast, contract, first_input, tie


@register(nn.Linear)
class LinearModule(Rule):
    """Linear layer on the last dim; its weight is (out, in)."""

    out_axis = 0

    def propagate(self, ctx, node):
        value, _ = first_input(ctx, node)
        tie(ctx, value[-1], f"{node.target}.weight", 1 - self.out_axis)
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


@register(F.linear)
class Linear(Rule):
    """``F.linear(x, weight, bias)``."""

    def propagate(self, ctx, node):
        x, w, b = node.args[0], arg(node, 1, "weight"), arg(node, 2, "bias")
        vx, vw = ctx.value(x), ctx.value(w)
        if vw is None or len(vw) != 2:
            ctx.block_value(vx)
            ctx.block_value(vw)
            return None
        contract(ctx, vx[-1], vw[1])
        vb = ctx.value(b)
        if vb is not None:
            contract(ctx, vw[0], vb[0])
        return vx[:-1] + (vw[0],)


@register(torch.matmul, operator.matmul, torch.bmm, torch.mm, "matmul", "bmm", "mm")
class MatMul(Rule):
    """``a @ b``: the contracted dims are pruned together; batch dims broadcast."""

    def propagate(self, ctx, node):
        a, b = node.args[0], node.args[1]
        va, sa, vb, sb = ctx.value(a), ctx.shape(a), ctx.value(b), ctx.shape(b)
        if len(sa) < 2 or len(sb) < 2:
            ctx.block_value(va)
            ctx.block_value(vb)
            return None
        contract(ctx, va[-1], vb[-2])
        out_shape = ctx.shape(node)
        batch = broadcast(ctx, out_shape[:-2], [(va[:-2], sa[:-2]), (vb[:-2], sb[:-2])])
        return batch + (va[-2], vb[-1])


@register(torch.einsum)
class Einsum(Rule):
    """``torch.einsum(equation, *operands)``, read from its subscripts: every dim that shares a
    letter (across operands and the output) is pruned together, as by a broadcasting elementwise op
    or, for a letter summed over by two or more operands, as by matmul's contracted dim.

    Blocked: a letter repeated within one operand (a diagonal), a letter summed over inside a
    single operand (a reduction would change), any dim an untracked full-size dim shares a letter
    with, and every operand of the sublist form ``einsum(a, [0, 1], b, [1, 2])``.
    """

    def propagate(self, ctx, node):
        operands = _einsum_operands(node)
        letters = None if operands is None else \
            _einsum_letters(node.args[0], [len(ctx.shape(op)) for op in operands])
        if letters is None:
            return CONSERVATIVE.propagate(ctx, node)
        inputs, output = letters
        dims: dict[str, list[tuple[int, Any, int]]] = {}
        for k, (subs, op) in enumerate(zip(inputs, operands)):
            value, shape = ctx.value(op) or (None,) * len(ctx.shape(op)), ctx.shape(op)
            for d, letter in enumerate(subs):
                dims.setdefault(letter, []).append((k, value[d], shape[d]))
        out_shape = ctx.shape(node)
        out = []
        for letter, found in dims.items():
            diagonal = len({k for k, _, _ in found}) < len(found)
            if letter in output:
                size = out_shape[output.index(letter)]
            elif len(found) > 1 and not diagonal:
                size = max(s for _, _, s in found)
            else:
                size = None  # a diagonal or a one-operand sum: nothing may be pruned
            carriers = [ids for _, ids, s in found if s == size and ids is not None]
            untracked = size is None or any(ids is None and s == size for _, ids, s in found)
            for _, ids, s in found:
                if ids is not None and (s != size or untracked or diagonal):
                    ctx.space.block(ids)
            if untracked or diagonal or not carriers:
                continue
            for ids in carriers[1:]:
                ctx.space.merge(carriers[0], ids)
            if letter in output:
                out.append((output.index(letter), carriers[0]))
        result = [None] * len(output)
        for position, ids in out:
            result[position] = ids
        return tuple(result)


def _einsum_operands(node: fx.Node) -> list | None:
    """The tensor operands of an einsum call (given one by one or as one list); None for the sublist
    form."""
    if not isinstance(node.args[0], str):
        return None
    rest = node.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = rest[0]
    return list(rest) if all(isinstance(a, fx.Node) for a in rest) else None


def _einsum_letters(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """Per-operand and output subscripts of operands of ``ranks`` dims, with '...' spelled out as one
    letter per broadcast dim (aligned from the right across operands, as einsum broadcasts them);
    None if they do not match the ranks."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    inputs = lhs.split(",")
    if len(inputs) != len(ranks) or any(len(subs.replace("...", "")) > rank if "..." in subs else
                                        len(subs) != rank for subs, rank in zip(inputs, ranks)):
        return None
    widths = [rank - len(subs.replace("...", "")) for subs, rank in zip(inputs, ranks)]
    ellipsis = max([w for subs, w in zip(inputs, widths) if "..." in subs], default=0)
    spelled = []
    for subs, width in zip(inputs, widths):
        before, dots, after = subs.partition("...")
        spelled.append(before + "".join(chr(0x100 + ellipsis - width + i) for i in range(width if dots else 0)) + after)
    if not arrow:
        counts = {c: lhs.count(c) for c in lhs if c.isalpha()}
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c, n in counts.items() if n == 1))
    before, dots, after = rhs.partition("...")
    output = before + "".join(chr(0x100 + i) for i in range(ellipsis if dots else 0)) + after
    return spelled, output


@register(nn.Bilinear)
class BilinearModule(Rule):
    """``y_k = x1 W_k x2 + b_k``: x1's features are the weight's dim 1, x2's dim 2, outputs dim 0."""

    def propagate(self, ctx, node):
        name = node.target
        x1, x2 = ctx.value(node.args[0]), ctx.value(node.args[1])
        tie(ctx, x1[-1], f"{name}.weight", 1)
        tie(ctx, x2[-1], f"{name}.weight", 2)
        ctx.block_value(x1[:-1])
        ctx.block_value(x2[:-1])
        out_ids = ctx.param_axis(f"{name}.weight", 0)
        if ctx.module(node).bias is not None:
            ctx.param_axis(f"{name}.bias", 0, out_ids)
        return (None,) * (len(x1) - 1) + (out_ids,)

    def update_module(self, m):
        m.out_features, m.in1_features, m.in2_features = m.weight.shape


@register(nn.Embedding)
class EmbeddingModule(Rule):
    """Embedding: output features are the table's columns; indices carry no channels."""

    def propagate(self, ctx, node):
        value, _ = first_input(ctx, node)
        ctx.block_value(value)
        return tuple(value) + (ctx.param_axis(f"{node.target}.weight", 1),)

    def update_module(self, m):
        m.embedding_dim = m.weight.shape[1]


@register(F.embedding)
class EmbeddingFn(Rule):
    """``F.embedding(indices, weight)``: output features are the weight's columns."""

    def propagate(self, ctx, node):
        vi, vw = ctx.value(node.args[0]), ctx.value(arg(node, 1, "weight"))
        ctx.block_value(vi)
        if vw is None:
            return None
        if vw[0] is not None:
            ctx.space.block(vw[0])
        return tuple(vi) + (vw[1],)
